"""The evolution loop on a synthetic fitness: baselines in one harness, budget accounting,
staged selection, and checkpoint/resume (in process and after SIGKILL)."""

import json
from pathlib import Path
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from selfprune.errors import SelfpruneError
from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.loop import Search, SearchConfig
from selfprune.evolution.operators.classic import EvoPressOperator, FixedOperator, GAOperator, RandomOperator
from synthetic import synthetic_problem


def run(op, cfg, target=0.4, out=None, resume=False, layers=16, **kw):
    p = synthetic_problem(layers, **kw)
    sp = GenomeSpace.from_problem(p, target)
    return Search(sp, p.fitness, op, cfg, profiles=p.profiles, out_dir=out).run(resume=resume), sp, p


def test_baselines_share_the_budget_and_beat_uniform():
    uniform = run(FixedOperator("uniform"), SearchConfig(population=1, generations=0, crossover=0, mutation=0))[0]
    owl = run(FixedOperator("owl"), SearchConfig(population=1, generations=0, crossover=0, mutation=0))[0]
    assert uniform.report["budget"]["total_evals"] == owl.report["budget"]["total_evals"] == 1
    budget = 120
    results = {
        "random": run(RandomOperator(), SearchConfig(population=1, generations=10**6, crossover=0, mutation=8, max_evals=budget))[0],
        "ga": run(GAOperator(), SearchConfig(population=12, generations=10**6, crossover=4, mutation=4, max_evals=budget))[0],
        "evopress": run(EvoPressOperator(), SearchConfig(population=1, generations=10**6, crossover=0, mutation=8, max_evals=budget))[0],
    }
    for name, r in results.items():
        assert r.report["budget"]["total_evals"] == budget, name
        assert r.best.fitness < uniform.best.fitness, name
    assert results["evopress"].best.fitness < results["random"].best.fitness
    # Elitism: the best never gets worse from one generation to the next.
    bests = [h["best"] for h in results["ga"].history]
    assert all(b2 <= b1 for b1, b2 in zip(bests, bests[1:]))


def test_staged_selection_counts_stages():
    r = run(EvoPressOperator(), SearchConfig(population=1, generations=5, crossover=0, mutation=8, stage_keep=(0.25,)))[0]
    evals = r.report["budget"]["evals"]
    assert evals["0"] == 5 * 8 and evals["1"] == 1 + 5 * 2
    tokens = r.report["budget"]["tokens"]
    assert tokens["0"] == 40 * 256 and tokens["1"] == 11 * 512


def test_resume_in_process_matches(tmp_path):
    cfg = SearchConfig(population=8, generations=6, crossover=3, mutation=3, seed=3)
    full = run(GAOperator(), cfg)[0]
    # Interrupt after generation 3 by making the evaluation budget bite, then resume.
    out = tmp_path / "run"
    p = synthetic_problem(16)
    sp = GenomeSpace.from_problem(p, 0.4)
    search = Search(sp, p.fitness, GAOperator(), cfg, profiles=p.profiles, out_dir=out)
    search.config = SearchConfig(**{**cfg.to_json(), "generations": 3, "stage_keep": None})
    search.run()
    resumed = run(GAOperator(), cfg, out=out, resume=True)[0]
    assert resumed.best.genome.key == full.best.genome.key
    assert [h["best"] for h in resumed.history] == [h["best"] for h in full.history]
    assert resumed.report["budget"]["total_evals"] == full.report["budget"]["total_evals"]


def test_resume_refuses_other_settings(tmp_path):
    run(GAOperator(), SearchConfig(population=4, generations=1, crossover=2, mutation=2), out=tmp_path)
    with pytest.raises(SelfpruneError, match="made with population 4, now 5"):
        run(GAOperator(), SearchConfig(population=5, generations=1, crossover=2, mutation=2), out=tmp_path, resume=True)


SCRIPT = """
import sys
sys.path.insert(0, %r)  # the tests folder, for the synthetic problem
from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.loop import Search, SearchConfig
from selfprune.evolution.operators.classic import GAOperator
from selfprune.evolution.llm.backends import make_backend
from selfprune.evolution.llm.operator import LLMOperator, LLMSettings
from synthetic import synthetic_problem
p = synthetic_problem(16, delay=float(sys.argv[2]))
sp = GenomeSpace.from_problem(p, 0.4)
cfg = SearchConfig(population=8, generations=12, crossover=3, mutation=3, seed=7)
op = GAOperator() if sys.argv[3] == "ga" else LLMOperator(make_backend("random"), settings=LLMSettings(share=0.5))
Search(sp, p.fitness, op, cfg, profiles=p.profiles, out_dir=sys.argv[1]).run(resume=True)
""" % str(Path(__file__).resolve().parent)


def _generation(out):
    try:
        return json.loads((out / "checkpoint.json").read_text())["generation"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def _calls(out):
    """The transcript's calls without their timings."""
    lines = [json.loads(line) for line in (out / "transcript.jsonl").read_text().splitlines()]
    return [{k: v for k, v in call.items() if k != "seconds"} for call in lines]


@pytest.mark.parametrize("operator", ["ga", "llm"])
def test_sigkill_then_resume_reaches_the_same_result(tmp_path, operator):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([sys.executable, "-c", SCRIPT, str(ref), "0", operator], check=True)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed), "0.01", operator])
    deadline = time.time() + 120
    while _generation(killed) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _generation(killed)
    assert 4 <= done < 12
    subprocess.run([sys.executable, "-c", SCRIPT, str(killed), "0", operator], check=True)
    a = json.loads((ref / "best.json").read_text())
    b = json.loads((killed / "best.json").read_text())
    assert a["rates"] == b["rates"] and a["fitness"] == b["fitness"]
    ha = json.loads((ref / "history.json").read_text())
    hb = json.loads((killed / "history.json").read_text())
    assert [h["best"] for h in ha] == [h["best"] for h in hb]
    ra = json.loads((ref / "report.json").read_text())["budget"]
    rb = json.loads((killed / "report.json").read_text())["budget"]
    assert ra["evals"] == rb["evals"]  # the generation in flight was redone, not double-counted
    if operator == "llm":  # the calls of the generation in flight were cut from the transcript, then redone
        assert _calls(ref) == _calls(killed) and len(_calls(ref)) > 12
        sa = json.loads((ref / "report.json").read_text())["operator_stats"]
        sb = json.loads((killed / "report.json").read_text())["operator_stats"]
        timings = {"seconds", "seconds_per_reply"}
        assert {k: v for k, v in sa.items() if k not in timings} == {k: v for k, v in sb.items() if k not in timings}


def test_best_json_loads_as_prune_rates(tmp_path):
    from selfprune.pruning.pipeline import read_rates

    res = run(GAOperator(), SearchConfig(population=4, generations=1, crossover=2, mutation=2), out=tmp_path)[0]
    attn, mlp = read_rates(tmp_path / "best.json")
    assert attn == pytest.approx(list(res.best.genome.attn), abs=1e-6)
    assert mlp == pytest.approx(list(res.best.genome.mlp), abs=1e-6)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget"]["total_evals"] == 4 + 4 and set(report) >= {"repairs", "origins", "operator_stats"}


@pytest.mark.slow
def test_cli_search_on_the_default_model(tmp_path):
    """End to end on the real fitness with a tiny budget, then resume extends nothing."""
    from selfprune.cli import main

    argv = ["search", "default", "--ratio", "0.3", "--operator", "evopress", "--max-evals", "5", "--crossover", "1",
            "--mutation", "1", "--fitness-samples", "1", "--fitness-seqlen", "128", "--calib-samples", "4",
            "--calib-seqlen", "128", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert len(best["rates"]) == 30 and abs(best["achieved"] - 0.3) < 0.01
    assert main(argv + ["--resume"]) == 0
