"""The report from a run directory: several operators in one convergence plot, a run without
perplexity or speed, and errors for folders that are not runs. The pieces are real: searches
on the synthetic fitness, a tiny model pruned and measured."""

import json

import matplotlib.pyplot as plt
import pytest
import torch

from selfprune.cli import main
from selfprune.errors import SelfpruneError
from selfprune.report import build_report, load_run
from selfprune.report.plots import convergence


@pytest.fixture
def run_dir(tmp_path, tiny_model):
    """A run directory with three searches (GA, EvoPress, the LLM operator with the null backend), a tiny
    pruned model and its speed."""
    from selfprune.eval.speed import count_params, speed
    from selfprune.options import PruneOptions
    from selfprune.pruning.pipeline import prune_model
    from selfprune.evolution.loop import Search
    from selfprune.evolution.genome import GenomeSpace
    from selfprune.evolution.llm.backends import RandomBackend
    from selfprune.evolution.llm.operator import LLMSettings
    from selfprune.evolution.strategies import make_operator, strategy_config
    from synthetic import synthetic_problem

    problem = synthetic_problem(3)
    space = GenomeSpace.from_problem(problem, 0.3)
    operators = {}
    for name in ("ga", "evopress", "llm"):
        out = tmp_path / "search" / name
        operator = make_operator(name, RandomBackend(), LLMSettings()) if name == "llm" else make_operator(name)
        result = Search(space, problem.fitness, operator, strategy_config(name, 4, 3, 2, 2, seed=0),
                               profiles=problem.profiles, out_dir=out).run()
        best = result.best
        operators[name] = {"best": {"attn": list(best.genome.attn), "mlp": list(best.genome.mlp),
                                    "fitness": best.fitness, "origin": best.origin},
                           "report": result.report, "files": {"history.json": f"search/{name}/history.json"}}
    winner = min(operators, key=lambda n: operators[n]["best"]["fitness"])
    uniform, _ = space.repair(torch.full((space.dim,), 0.3).numpy())

    dense = tiny_model("llama")
    pruned = prune_model(tiny_model("llama"), None, attn_rates=operators[winner]["best"]["attn"],
                         mlp_rates=operators[winner]["best"]["mlp"], options=PruneOptions(metric="magnitude"),
                         progress=False)
    measured = speed({"dense": dense, "pruned": pruned.model}, prefill_shapes=[(1, 8)], decode_batches=[1],
                     decode_tokens=2, warmup=0, repeats=1)
    results = {
        "format": 1, "model": "tiny-llama", "ratio": 0.3, "preset": "quick", "seed": 0,
        "problem": {"metric": "magnitude", "calib": "lambada", "calib_samples": 1, "calib_seqlen": 2,
                    "fitness": "ppl", "fitness_samples": [1], "fitness_seqlen": 256, "fitness_tokens": 256},
        "search": {"operators": operators,
                   "uniform": {"attn": list(uniform.attn), "mlp": list(uniform.mlp),
                               "fitness": problem.fitness(*uniform.arrays(), stage=1)},
                   "best": {**operators[winner]["best"], "operator": winner}},
        "best": {**operators[winner]["best"], "operator": winner},
        "prune": pruned.summary,
        "models": {"dense": {"params": count_params(dense), "perplexity": None, "zeroshot": None},
                   "pruned": {"params": count_params(pruned.model), "perplexity": None, "zeroshot": None}},
        "speed": measured,
        "budget": {"fitness_evals": sum(o["report"]["budget"]["total_evals"] for o in operators.values()),
                   "fitness_tokens": 1, "llm_tokens": 0, "search_seconds": 1.0, "total_seconds": 2.0},
        "warnings": ["perplexity skipped: WikiText-2 cannot be loaded (offline?)"],
        "files": {"config": "config.yaml", "environment": "environment.json", "model": None},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_report_of_three_operators_without_perplexity(run_dir):
    path = build_report(run_dir)
    report = path.read_text()
    results, histories = load_run(run_dir)
    assert set(histories) == {"ga", "evopress", "llm"}
    for name in ("ga", "evopress", "llm"):
        assert f"| {name} |" in report
    # The LLM's counters as the search counted them: how many of its replies were proposals of its own.
    stats = results.search.operators["llm"].report.operator_stats.to_json()
    assert stats["distinct"] > 0
    echoes = stats["example_answers"]
    assert (f"{stats['distinct']} distinct proposals (of them the prompt's own example answer: {echoes['mutate']} "
            f"moves, {echoes['crossover']} crossovers; kept), {stats['repeats']} repeats of an earlier reply and "
            f"{stats['copies']} copies of an example shape (dropped); {stats['fallbacks']} fallbacks") in report
    assert "perplexity" not in report.split("## Dense vs pruned", 1)[1].split("## Budget", 1)[0]
    assert "> warning: perplexity skipped" in report
    assert f"| parameters | {results.models['dense']['params']:,} | {results.models['pruned']['params']:,} |" in report
    for png in ("convergence.png", "rates.png", "overview.png"):
        assert (run_dir / png).stat().st_size > 10_000
    # The rebuild is deterministic.
    assert build_report(run_dir).read_text() == report


def test_convergence_draws_best_and_median_per_operator_and_the_uniform_line(run_dir):
    results, histories = load_run(run_dir)
    fig, ax = plt.subplots()
    convergence(ax, histories, results.search.uniform.fitness, results.problem)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["ga: best", "ga: median", "evopress: best", "evopress: median", "llm: best", "llm: median",
                      "uniform rates"]
    ga_best = ax.get_lines()[0].get_ydata()
    assert list(ga_best) == [h["best"] for h in histories["ga"]]
    assert all(b2 <= b1 for b1, b2 in zip(ga_best, ga_best[1:]))  # elitism, as the plot promises
    plt.close(fig)


def test_report_refuses_folders_that_are_not_runs(tmp_path, run_dir, capsys):
    with pytest.raises(SelfpruneError, match="results.json"):
        build_report(tmp_path / "nothing")
    (run_dir / "search" / "ga" / "history.json").unlink()
    assert main(["report", str(run_dir)]) == 2
    assert "history" in capsys.readouterr().err


def test_summary_says_when_no_llm_reply_was_usable():
    """An LLM search whose every reply was garbage ran on the classical operator alone: the summary
    must not credit the LLM."""
    from selfprune.evolution.genome import GenomeSpace
    from selfprune.evolution.llm.backends import ChatBackend, RandomBackend, Reply
    from selfprune.evolution.llm.operator import LLMSettings
    from selfprune.evolution.loop import Search
    from selfprune.evolution.strategies import make_operator, strategy_config
    from selfprune.report.summary import _no_llm_note
    from selfprune.results import SearchReport
    from synthetic import synthetic_problem

    class Garbage(ChatBackend):
        name = "garbage"

        def chat(self, messages, n=1, **kwargs):
            return [Reply("I cannot help with pruning rates.") for _ in range(n)]

    problem = synthetic_problem(3)
    space = GenomeSpace.from_problem(problem, 0.3)
    notes = {}
    for backend in (Garbage(), RandomBackend()):
        operator = make_operator("llm", backend, LLMSettings(share=1.0))
        result = Search(space, problem.fitness, operator, strategy_config("llm", 4, 2, 2, 2, seed=0),
                        profiles=problem.profiles).run()
        notes[backend.name] = _no_llm_note(SearchReport.model_validate(result.report).operator_stats)
    assert "no LLM reply was usable" in notes["garbage"] and notes["random"] == ""


def test_results_are_typed_records_that_round_trip_and_name_a_bad_field(run_dir):
    from selfprune.results import RunResults

    raw = json.loads((run_dir / "results.json").read_text())
    typed = RunResults.model_validate(raw)
    assert typed.to_json() == raw  # nothing added, nothing lost: what was written reads back the same
    assert typed.search.operators["llm"].report.budget.total_evals == raw["search"]["operators"]["llm"]["report"][
        "budget"]["total_evals"]
    raw["budget"]["fitness_evals"] = "many"
    (run_dir / "results.json").write_text(json.dumps(raw))
    with pytest.raises(SelfpruneError, match=r"is not a run's results.json \(budget.fitness_evals: "):
        build_report(run_dir)
