"""The operator LLM's counters in words: the search's console report and report.md say the same."""

from __future__ import annotations


def proposals_summary(stats: dict) -> str:
    """What the LLM proposed of its own, from the operator's counters: valid replies that repeat an
    earlier one or copy an example shape are dropped, and of the distinct ones some may be the
    prompt's own example answer (kept, but not a choice of the model's)."""
    echoes = stats.get("example_answers") or {}
    return (f"{stats.get('distinct', 0)} distinct proposals (of them the prompt's own example answer: "
            f"{echoes.get('mutate', 0)} moves, {echoes.get('crossover', 0)} crossovers; kept), "
            f"{stats.get('repeats', 0)} repeats of an earlier reply and {stats.get('copies', 0)} copies of an "
            "example shape (dropped)" + _identical_batches(stats))


def server_faults_summary(stats: dict) -> str:
    """The operator LLM server's faults in one sentence, from the operator's counters ("" without any)."""
    faults = stats.get("server_faults") or {}
    if not faults:
        return ""
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(faults.items()))
    failed = stats.get("failed_calls", 0)
    return (f"server faults: {kinds}; {stats.get('server_retries', 0)} requests asked again, "
            f"{failed} call{'' if failed == 1 else 's'} written by the classical operator instead")


def _identical_batches(stats: dict) -> str:
    batches = stats.get("identical_batches", 0)
    if not batches:
        return ""
    calls = stats.get("calls", 0)
    said = f"; in {batches} of {calls} calls all replies were the same text, though sampled independently"
    if str(stats.get("backend", "")).startswith("openai:"):
        return said + (": the server may not be sampling (`transformers serve` decodes greedily unless the "
                       "model's generation_config.json sets do_sample: true), or the model gives one answer")
    return said + ": the model gives one answer to those prompts"
