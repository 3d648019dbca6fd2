"""report.md: what was pruned, how it compares with the dense model, what the search did and
spent, and the protocol behind every number."""

from __future__ import annotations

from selfprune.report import tables as t
from selfprune.report.llm_stats import proposals_summary, server_faults_summary
from selfprune.results import RunResults


def render(results: RunResults, histories: dict[str, list[dict]], plots: dict[str, str]) -> str:
    prune = results.prune
    out = [
        f"# selfprune run: `{results.model}` at ratio {results.ratio:g}",
        "",
        f"Removed **{t.pct(prune['achieved_ratio_prunable'])}%** of the attention and MLP parameters "
        f"(target {t.pct(results.ratio)}%), **{t.pct(prune['achieved_ratio_total'])}%** of the whole model, "
        f"at per-layer rates found by the `{results.best.operator}` search. Preset `{results.preset}`, "
        f"seed {results.seed}.",
        "",
    ]
    out += [f"> warning: {w}\n" for w in results.warnings]
    out += ["## Dense vs pruned", "",
            t.markdown_table(t.comparison_header(results), t.comparison_rows(results)), ""]
    out += ["## Budget spent", "", t.markdown_table(["", ""], t.budget_rows(results)), ""]
    out += _search_section(results, histories, plots)
    out += _rates_section(results, plots)
    out += _protocol_section(results)
    return "\n".join(out).rstrip() + "\n"


def _search_section(results: RunResults, histories: dict[str, list[dict]], plots: dict[str, str]) -> list[str]:
    search = results.search
    uniform = search.uniform.fitness
    out = ["## Search", "", f"![Search convergence]({plots['convergence']})", ""]
    out.append("Solid: the best genome of each generation; dashed: the population's median; dotted: the "
               "uniform rates at the same target. Survivors compete with their offspring, so the best "
               "never gets worse.")
    out.append("")
    rows = []
    for name, op in search.operators.items():
        hist = histories.get(name) or []
        first = hist[0]["best"] if hist else None
        rows.append((name, str(op.report.generations), f"{op.report.budget.total_evals:,}", t.fitness(first),
                     t.fitness(op.best.fitness), t.fitness(uniform), _relative(op.best.fitness, uniform)))
    out.append(t.markdown_table(["operator", "generations", "evaluations", "best at start", "best at end",
                                 "uniform", "vs uniform"], rows))
    out.append("")
    llm = [op.report.operator_stats for op in search.operators.values() if op.report.operator_stats.replies]
    for stats in llm:
        counters = stats.to_json()
        faults = server_faults_summary(counters)
        out.append(f"Operator LLM ({stats.backend}): {stats.replies} replies, "
                   f"{t.pct(stats.valid_rate) if stats.valid_rate is not None else 'n/a'}% usable; "
                   f"{proposals_summary(counters)}; {stats.fallbacks} fallbacks to the classical operator"
                   + (f"; {stats.seconds_per_reply:.2f} s per reply" if stats.seconds_per_reply else "")
                   + (f"; {faults}." if faults else "."))
        out.append("")
    return out


def _relative(value: float, uniform: float) -> str:
    try:
        return f"{(value - uniform) / uniform:+.1%}"
    except (TypeError, ZeroDivisionError):
        return ""


def _rates_section(results: RunResults, plots: dict[str, str]) -> list[str]:
    best, layers = results.best, results.prune["layers"]
    out = ["## Per-layer rates", "", f"![Per-layer rates]({plots['rates']})", "",
           "Bars: the share of each layer's attention and MLP parameters the best genome removes; "
           "dashed: uniform rates at the same target.", "",
           "<details><summary>Per-layer table</summary>", ""]
    rows = [(str(i), t.pct(a), t.pct(m), str(layer["heads"]), str(layer["kv_heads"]), str(layer["mlp"]))
            for i, (a, m, layer) in enumerate(zip(best.attn, best.mlp, layers))]
    out += [t.markdown_table(["layer", "attention pruned (%)", "MLP pruned (%)", "heads kept", "KV heads kept",
                              "MLP width kept"], rows), "", "</details>", ""]
    return out


def _protocol_section(results: RunResults) -> list[str]:
    problem, models = results.problem, results.models
    out = ["## Protocol", ""]
    out.append(f"- Importance: `{problem.metric}` on {problem.calib_samples} x {problem.calib_seqlen} tokens "
               f"of `{problem.calib}` (first half of the text).")
    tokens = f"{problem.fitness_tokens:,}" if problem.fitness_tokens is not None else "held-out"
    out.append(f"- Fitness: `{problem.fitness}` on {tokens} tokens from the second half of "
               f"`{problem.calib}` (stages of {problem.fitness_samples} blocks of {problem.fitness_seqlen} "
               "tokens), disjoint from calibration and evaluation text.")
    ppl = (models["pruned"].get("perplexity") or models["dense"].get("perplexity"))
    if ppl:
        p = ppl["protocol"]
        out.append(f"- Perplexity: {p['source']}; windows of {p['seqlen']} tokens, stride {p['stride']}, "
                   f"{p['windows']} windows ({p['tokens_scored']:,} tokens scored), {p['dtype']} on {p['device']}.")
    zs = (models["pruned"].get("zeroshot") or models["dense"].get("zeroshot"))
    if zs:
        p = zs["protocol"]
        limit = f"first {p['limit']} documents per task (not comparable with full-set numbers)" if p["limit"] else "all documents"
        out.append(f"- Zero-shot: lm-evaluation-harness {p['lm_eval']}, {p['source']} tasks ({p['data']}), "
                   f"{limit}, {p['num_fewshot']}-shot.")
    speed = results.speed
    if speed:
        p = speed["protocol"]
        out.append(f"- Speed: {p['device']}, {p['dtype']}, {p['threads']} threads; {p['statistic']}; "
                   f"{p['warmup']} warm-up and {p['repeats']} timed runs; decode {p['decode']}.")
    out.append("- Reproduce: `selfprune run --config config.yaml` (the resolved config; library versions in "
               "`environment.json`).")
    return out
