"""The one-screen summary a run prints at its end."""

from __future__ import annotations

from pathlib import Path

from selfprune.report import tables as t
from selfprune.results import OperatorStats, RunResults


def summary_text(results: RunResults | dict, run_dir: str | Path) -> str:
    """What a run prints at its end, from its results (``results.json`` as written, or typed)."""
    results = results if isinstance(results, RunResults) else RunResults.model_validate(results)
    run_dir = Path(run_dir)
    best, prune = results.best, results.prune
    lines = [
        "",
        f"selfprune run: {results.model} at ratio {results.ratio:g} -> removed "
        f"{t.pct(prune['achieved_ratio_prunable'])}% of attention+MLP ({t.pct(prune['achieved_ratio_total'])}% of "
        f"the model), rates from the '{best.operator}' search{_no_llm_note(_winner_stats(results))} "
        f"(fitness {t.fitness(best.fitness)} vs uniform {t.fitness(results.search.uniform.fitness)})",
        "",
        t.text_table(t.comparison_header(results), t.comparison_rows(results)),
        "",
        "budget: " + ", ".join(f"{k} {v}" for k, v in t.budget_rows(results)),
    ]
    lines += [f"warning: {w}" for w in results.warnings]
    model, gguf = results.files.model, results.files.gguf
    lines += [
        "",
        f"report:  {run_dir / 'report.md'}",
        *([f"model:   {run_dir / model}"] if model else []),
        *([f"gguf:    {run_dir / gguf}  (llama.cpp / Ollama: see docs/export.md)"] if gguf else []),
        *(_serve_lines(run_dir, model, gguf) if model else []),
        f"results: {run_dir / 'results.json'}",
    ]
    return "\n".join(lines)


def _winner_stats(results: RunResults) -> OperatorStats | None:
    winner = results.search.operators.get(results.best.operator)
    return winner.report.operator_stats if winner else None


def _no_llm_note(stats: OperatorStats | None) -> str:
    """An LLM search whose every reply was unusable ran on the classical operator alone: say so."""
    if stats is None or stats.backend is None or stats.valid:
        return ""
    return " (no LLM reply was usable: the classical operator wrote every proposal)"


def _serve_lines(run_dir: Path, model: str, gguf: str | None) -> list[str]:
    """Where the pruned model runs: vLLM through selfprune's plugin, llama.cpp through a GGUF file."""
    gguf_path = run_dir / gguf if gguf else run_dir / "model.gguf"
    llama = f"llama-server -m {gguf_path}"
    if not gguf:
        llama = f"selfprune export {run_dir / model} --gguf {gguf_path} && {llama}"
    return [f"serve:   vllm serve {run_dir / model}  (needs pip install 'selfprune[vllm]'; docs/serve.md)",
            f"         {llama}"]
