"""`selfprune run default --ratio 0.3` end to end on a tiny budget: the real default model, real
search, real lm-eval, real files; then the report is checked against results.json and rebuilt."""

import contextlib
import io
import json
import re

import pytest
import torch
import yaml

from selfprune.cli import main

TINY = [
    "--population", "2", "--generations", "1", "--crossover", "0", "--mutation", "1",
    "--calib-samples", "2", "--calib-seqlen", "128", "--fitness-samples", "1", "--fitness-seqlen", "128",
    "--seqlen", "128", "--max-windows", "2", "--tasks", "piqa", "--limit", "2", "--batch-size", "4",
    "--shapes", "1x16", "--decode-batches", "1", "--decode-tokens", "2", "--warmup", "0", "--repeats", "1",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, wikitext_test_path, default_model_dir):
    out = tmp_path_factory.mktemp("runs") / "smollm2-30"
    argv = ["run", "default", "--ratio", "0.3", *TINY, "--ppl", str(wikitext_test_path), "--out", str(out), "--quiet",
            "--export", "gguf", "--recover", "--recover-tokens", "256", "--recover-seqlen", "64", "--recover-batch", "2"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    (out.parent / "stdout.txt").write_text(printed.getvalue())
    return out


def _table(report: str, heading: str) -> dict[str, list[str]]:
    """The markdown table under ``## heading`` as {first cell: other cells}."""
    section = report.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[2:]}


def test_run_writes_a_reloadable_model_a_report_and_its_plots(run_dir):
    files = {p.name for p in run_dir.iterdir()}
    assert {"model", "results.json", "report.md", "config.yaml", "environment.json", "run.log", "search",
            "convergence.png", "rates.png", "overview.png"} <= files
    for png in ("convergence.png", "rates.png", "overview.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.parent.glob(".*tmp*")), "the temporary run folder must be gone"
    assert (run_dir / "model.gguf").read_bytes()[:4] == b"GGUF"  # --export gguf (checked in llama.cpp elsewhere)

    results = json.loads((run_dir / "results.json").read_text())
    assert results["export"]["arch"] == "deci" and results["files"]["gguf"] == "model.gguf"
    # --recover: a distilled copy beside the training-free result, same shapes, its own evaluation
    recovered = results["models"]["recovered"]
    assert recovered["params"] == results["models"]["pruned"]["params"] and recovered["perplexity"]["ppl"] > 0
    assert recovered["recovery"]["training"]["tokens_trained"] >= 256 and recovered["recovery"]["data"]["source"]
    assert "| dense | pruned | change | recovered | change (recovered) |" in (run_dir / "report.md").read_text()
    from selfprune.api import load_pruned as load

    model, _ = load(str(run_dir / "recovered"))
    assert model.config.selfprune["recovery"] and sum(p.numel() for p in model.parameters()) == recovered["params"]
    from selfprune.api import load_pruned

    model, tokenizer = load_pruned(str(run_dir / "model"))
    assert sum(p.numel() for p in model.parameters()) == results["models"]["pruned"]["params"]
    assert results["models"]["pruned"]["params"] < results["models"]["dense"]["params"]
    with torch.no_grad():
        logits = model(**tokenizer("The capital of France is", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    # The pruned layers are the best genome's rates.
    layers = json.loads((run_dir / "model" / "config.json").read_text())["selfprune"]["layers"]
    assert len(layers) == len(results["best"]["attn"]) == 30

    # Reproducibility: the resolved config, the seed and the library versions are kept.
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["ratio"] == 0.3 and cfg["search"]["population"] == 2 and cfg["seed"] == results["seed"] == 0
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["seed"] == 0 and env["versions"]["torch"] == torch.__version__
    assert "stage search" in (run_dir / "run.log").read_text()


def test_report_numbers_match_results_json(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    report = (run_dir / "report.md").read_text()
    dense, pruned = results["models"]["dense"], results["models"]["pruned"]
    table = _table(report, "Dense vs pruned")

    assert table["parameters"][:2] == [f"{dense['params']:,}", f"{pruned['params']:,}"]
    ppl_row = next(v for k, v in table.items() if k.startswith("perplexity"))
    assert ppl_row[:2] == [f"{dense['perplexity']['ppl']:.2f}", f"{pruned['perplexity']['ppl']:.2f}"]
    assert ppl_row[3] == f"{results['models']['recovered']['perplexity']['ppl']:.2f}"  # the recovered column
    piqa = pruned["zeroshot"]["tasks"]["piqa"]
    metric = piqa["metric_for_average"]
    assert table[f"piqa {metric} (%)"][:2] == [f"{100 * dense['zeroshot']['tasks']['piqa'][metric]:.1f}",
                                                f"{100 * piqa[metric]:.1f}"]
    comparison = results["speed"]["comparison"]["pruned"]
    assert table["prefill 1x16 latency"][2] == f"{comparison['prefill_speedup']['1x16']:.2f}x faster"
    assert table["decode batch 1 throughput"][2] == f"{comparison['decode_speedup']['1']:.2f}x faster"
    assert table["ideal speed-up (parameter ratio)"][2] == f"{comparison['ideal']:.2f}x"

    budget = _table(report, "Budget spent")
    assert budget["fitness evaluations"][0] == f"{results['budget']['fitness_evals']:,}"
    assert budget["fitness tokens"][0] == f"{results['budget']['fitness_tokens']:,}"
    # The search spent what its own report says, and found a genome no worse than uniform.
    ga = results["search"]["operators"]["llm"]  # the default operator: the LLM, the model itself
    assert results["budget"]["fitness_evals"] == ga["report"]["budget"]["total_evals"] > 0
    assert results["best"]["fitness"] <= results["search"]["uniform"]["fitness"]
    history = json.loads((run_dir / ga["files"]["history.json"]).read_text())
    assert [h["generation"] for h in history] == [0, 1]
    assert all(h["median"] >= h["best"] for h in history)
    search = _table(report, "Search")
    assert search["llm"][3] == f"{ga['best']['fitness']:.4g}"
    # Achieved ratio in the headline is the pruner's own count.
    assert f"**{100 * results['prune']['achieved_ratio_prunable']:.1f}%**" in report


def test_report_command_rebuilds_the_report(run_dir, capsys):
    before = (run_dir / "report.md").read_text()
    for name in ("report.md", "convergence.png", "rates.png"):
        (run_dir / name).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == before
    assert (run_dir / "convergence.png").exists() and (run_dir / "rates.png").exists()
    assert main(["report", str(run_dir / "model")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_quiet_run_prints_only_a_one_screen_summary(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    text = (run_dir.parent / "stdout.txt").read_text()
    assert "Running loglikelihood" not in text and "stage search" not in text  # progress went to the log
    assert len(text.splitlines()) < 40  # one screen
    assert re.search(r"parameters\s+134,515,008\s+" + f"{results['models']['pruned']['params']:,}", text)
    assert str(run_dir / "report.md") in text
    # It ends where the user serves the model: vLLM (with the plugin) and llama.cpp, on this run's files.
    assert f"vllm serve {run_dir / 'model'}" in text and f"llama-server -m {run_dir / 'model.gguf'}" in text
