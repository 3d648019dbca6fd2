"""The search benchmark's summaries: merged tables of a matrix run in parts, and where improvements came from."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search" / "evals430-f512"


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_search")


def parts():
    """The committed 430-evaluation record split back into the two invocations that made it: the llm-null arm
    ran apart from the others."""
    record = json.loads((RESULTS / "results.json").read_text())
    a = {**record, "rows": [r for r in record["rows"] if r["arm"] != "llm-null"]}
    b = json.loads(json.dumps({**record, "rows": [r for r in record["rows"] if r["arm"] == "llm-null"]}))
    return a, b


def test_merged_parts_hold_every_arm_and_seed_once_with_the_means_of_their_rows(bench):
    a, b = parts()
    merged = bench.merge_results([a, b])
    keys = [(r["ratio"], r["arm"], r["seed"]) for r in merged["rows"]]
    assert len(keys) == len(set(keys))
    assert set(keys) == {(r["ratio"], r["arm"], r["seed"]) for r in a["rows"] + b["rows"]}
    summary = {s["arm"]: s for s in bench.summarize(merged["rows"])}
    for arm, s in summary.items():
        values = [r["heldout_ppl"] for r in merged["rows"] if r["arm"] == arm]
        assert s["seeds"] == len(values)
        assert s["heldout_mean"] == pytest.approx(statistics.mean(values))
    uniform = summary["uniform"]["heldout_mean"]
    assert summary["ga-levels"]["x_uniform"] == pytest.approx(summary["ga-levels"]["heldout_mean"] / uniform)
    assert merged["args"]["seeds"] == ",".join(map(str, sorted({k[2] for k in keys})))


def test_parts_run_with_other_settings_are_not_merged(bench):
    a, b = parts()
    b["args"]["max_evals"] = a["args"]["max_evals"] // 2
    with pytest.raises(SystemExit, match="max_evals"):
        bench.merge_results([a, b])


def test_a_file_from_before_calib_was_recorded_counts_as_lambada(bench):
    a, b = parts()
    assert "calib" not in a["args"]  # run before --calib existed: it calibrated on LAMBADA
    b["args"]["calib"] = "lambada"
    assert len(bench.merge_results([a, b])["rows"]) == len(a["rows"]) + len(b["rows"])
    b["args"]["calib"] = "wiki-passages"
    with pytest.raises(SystemExit, match="calib"):
        bench.merge_results([a, b])
    assert bench.differing_settings(a["args"], b["args"]) == ["calib"]  # either side
    assert bench.differing_settings(b["args"], a["args"]) == ["calib"]


def test_parts_that_differ_in_the_llm_share_merge_as_separate_arms_and_compare_seed_by_seed(bench):
    a, b = parts()
    other = json.loads(json.dumps(b))
    other["args"]["llm_share"] = 1.0
    other["rows"] = [r for r in other["rows"] if r["arm"] == "llm-null"]
    for r in other["rows"]:
        r["arm"], r["heldout_ppl"] = "llm-null-share1", r["heldout_ppl"] / 2
    merged = bench.merge_results([a, b, other])
    assert merged["args"]["llm_share"] == "per arm"
    shares = {(r["arm"], r.get("llm_share")) for r in merged["rows"] if r["operator"] == "llm"}
    assert ("llm-null", 0.3) in shares and ("llm-null-share1", 1.0) in shares
    (line,) = [x for x in bench.paired_comparisons(merged["rows"], "llm-null") if "llm-null-share1" in x]
    assert "lower held-out ppl in 3 of 3 seed pairs, geometric mean ratio 0.50" in line
    # The same arm name with two shares is two different searches: refused.
    for r in other["rows"]:
        if r["arm"] == "llm-null-share1":
            r["arm"] = "llm-null"
    with pytest.raises(SystemExit, match="arm llm-null ran with llm_share"):
        bench.merge_results([a, b, other])


def test_origin_credit_sums_offspring_kinds_over_seeds_and_skips_the_initial_population(bench):
    def row(seed, origins):
        return {"ratio": 0.3, "arm": "llm-self", "seed": seed, "origins": origins}

    rows = [
        row(0, {"owl": {"evaluated": 1, "survived": 1, "best": 0},
                "llm-crossover": {"evaluated": 10, "survived": 9, "best": 3},
                "ga-mutate": {"evaluated": 30, "survived": 10, "best": 1}}),
        row(1, {"llm-crossover": {"evaluated": 10, "survived": 7, "best": 1},
                "ga-mutate": {"evaluated": 30, "survived": 20, "best": 0}}),
        {"ratio": 0.3, "arm": "uniform", "seed": 0, "origins": {"uniform": {"evaluated": 1, "survived": 1, "best": 0}}},
    ]
    (line,) = bench.origin_credit(rows)
    assert line.startswith("ratio 0.3: llm-self (2 seeds)")
    assert "llm-crossover 4 of 20 (20.0%, 80% survived), ga-mutate 1 of 60 (1.7%, 50% survived)" in line
    assert "owl" not in line


def test_table_of_the_committed_results_prints_the_comparison_and_the_credit():
    files = str(RESULTS / "results.json")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--table", files],
                         capture_output=True, text=True, check=True).stdout
    assert "llm-self vs ga-levels" in out
    assert "llm-self (3 seeds), generation bests by offspring kind: llm-crossover" in out
    # The operator's choices, read from the committed transcripts: the model mates the two best far more often
    # than random fills of the same template do...
    shares = dict(re.findall(r"(llm-\w+) \(3 seeds\), crossover replies: parents the two best in \d+ of \d+ \((\d+)%", out))
    assert set(shares) == {"llm-self", "llm-null"} and int(shares["llm-self"]) > 5 * int(shares["llm-null"])
    # and repeats the prompt's example move, which random fills never do.
    copies = dict(re.findall(r"(llm-\w+) \(3 seeds\), mutation replies: the prompt's example move itself in \d+ of \d+ "
                             r"\((\d+)%\)", out))
    assert int(copies["llm-self"]) > 20 and copies["llm-null"] == "0"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--table", files,
                          "--reference", "llm-null"], capture_output=True, text=True, check=True).stdout
    assert "llm-self vs llm-null" in out and "vs ga-levels" not in out


def test_paired_comparisons_leave_out_the_fixed_arms_run_beside_each_seed(bench):
    def row(arm, seed, ppl, evals):
        return {"ratio": 0.5, "arm": arm, "seed": seed, "heldout_ppl": ppl, "evals": evals}

    rows = [row("uniform", 0, 1356.9, 1), row("uniform", 1, 1356.9, 1),
            row("ga-levels", 0, 900.0, 430), row("ga-levels", 1, 1100.0, 430),
            row("llm-self", 0, 700.0, 430), row("llm-self", 1, 1200.0, 430)]
    (line,) = bench.paired_comparisons(rows, "ga-levels")
    assert line.startswith("ratio 0.5: llm-self vs ga-levels: lower held-out ppl in 1 of 2 seed pairs")
    assert f"geometric mean ratio {(700 / 900 * 1200 / 1100) ** 0.5:.2f}" in line
    assert line.endswith("one-sided sign test p = 0.75")


def test_resume_continues_a_search_killed_before_its_row_was_written(tmp_path, wikitext_test_path, default_model_dir):
    """A benchmark killed inside a search resumes that search from its checkpoint and ends where the whole run
    did (the seeded GA is deterministic), instead of redoing it from the start."""
    out = tmp_path / "bench"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--ratios", "0.3",
           "--arms", "ga-levels=ga-levels:seeded", "--seeds", "0", "--max-evals", "12", "--population", "4",
           "--crossover", "2", "--mutation", "2", "--fitness-samples", "1", "--fitness-seqlen", "64",
           "--calib-samples", "2", "--calib-seqlen", "64", "--eval-windows", "1", "--eval-seqlen", "64",
           "--zeroshot-limit", "0", "--threads", "1", "--wikitext", str(wikitext_test_path), "--out", str(out)]
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    results = json.loads((out / "results.json").read_text())
    (whole,) = results["rows"]
    assert whole["resumed_at_generation"] is None and whole["evals"] == 12
    # Killed one generation before the end, before the row was saved: the previous checkpoint is the last one.
    folder = out / "r0.3" / "ga-levels" / "s0"
    (folder / "checkpoint.json").write_text((folder / "checkpoint.prev.json").read_text())
    (out / "results.json").write_text(json.dumps({**results, "rows": []}))
    subprocess.run(cmd + ["--resume"], capture_output=True, text=True, check=True)
    (resumed,) = json.loads((out / "results.json").read_text())["rows"]
    assert resumed["resumed_at_generation"] == 1  # 4 initial + 2 generations of 4: killed after the first
    assert resumed["rates"] == whole["rates"] and resumed["fitness"] == whole["fitness"]
    assert resumed["heldout_ppl"] == pytest.approx(whole["heldout_ppl"]) and resumed["evals"] == 12
    # --rescore: the genome that search found, scored on another problem (Wikipedia calibration) as a fixed arm.
    other = tmp_path / "rescored"
    cmd = [c if c != str(out) else str(other) for c in cmd]
    subprocess.run(cmd[:cmd.index("--arms")] + ["--arms", "uniform", "--calib", "wiki-passages", "--rescore",
                   str(out / "results.json")] + cmd[cmd.index("--arms") + 2:], capture_output=True, text=True, check=True)
    rows = {r["arm"]: r for r in json.loads((other / "results.json").read_text())["rows"]}
    assert set(rows) == {"uniform", "ga-levels@bench"} and rows["ga-levels@bench"]["rates"] == whole["rates"]
    assert rows["ga-levels@bench"]["heldout_ppl"] != pytest.approx(whole["heldout_ppl"])  # other importance, other heads


def test_the_evaluation_text_as_fitness_text_is_refused_before_the_model_loads(tmp_path, wikitext_test_path):
    copy = tmp_path / "calib.txt"
    copy.write_text(wikitext_test_path.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--wikitext",
                           str(wikitext_test_path), "--calib", str(copy), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--calib: '{copy}' is the evaluation text itself" in proc.stderr
    assert not out.exists()


def test_finalize_makes_the_parts_one_record_with_every_invocation_and_no_checkpoints(bench, tmp_path):
    out = tmp_path / "exp"
    a, b = parts()
    for name, part, seeds in (("a", a, "0,1,2"), ("b", b, "2")):
        part = {**part, "args": {**part["args"], "seeds": seeds, "out": str(out / name)}}
        part.pop("invocations")  # as a part's own record, written before it was finalized
        (out / name).mkdir(parents=True)
        (out / name / "results.json").write_text(json.dumps(part))
        for r in part["rows"]:
            folder = out / name / f"r{r['ratio']}" / r["arm"] / f"s{r['seed']}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "best.json").write_text(json.dumps({"part": name}))
            (folder / "checkpoint.json").write_text("{}")
    assert bench.finalize(out) == 0
    record = json.loads((out / "results.json").read_text())
    assert len(record["rows"]) == len(a["rows"]) + len(b["rows"])
    assert [i["part"] for i in record["invocations"]] == ["a", "b"]
    assert record["args"]["out"] == out.name and str(tmp_path) not in (out / "results.json").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "r0.3", "results.json"]
    assert not list(out.rglob("checkpoint*.json"))
    assert json.loads((out / "r0.3" / "llm-null" / "s2" / "best.json").read_text()) == {"part": "b"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == len(record["rows"])
    assert [c["command"].split("--seeds ")[1].split()[0] for c in manifest["invocations"]] == ["0,1,2", "2"]
    # Finalizing again changes nothing.
    before = (out / "results.json").read_text()
    assert bench.finalize(out) == 0
    assert json.loads((out / "results.json").read_text())["invocations"] == json.loads(before)["invocations"]


def test_paired_statistics_are_exact_sign_tests_over_seed_pairs(load_benchmark):
    paired = load_benchmark("paired")
    assert paired.sign_test(3, 3) == 0.125  # three seeds alone can never reach p < 0.125
    assert paired.sign_test(12, 12) == pytest.approx(0.000244, rel=1e-3)
    assert paired.sign_test(0, 4) == 1.0
    stats = paired.paired({0: 50.0, 1: 80.0, 2: 90.0, 3: 10.0}, {0: 100.0, 1: 100.0, 2: 100.0, 4: 1.0})
    assert stats["n"] == 3 and stats["seeds"] == [0, 1, 2] and stats["wins"] == 3
    assert stats["ratio"] == pytest.approx((0.5 * 0.8 * 0.9) ** (1 / 3))
    lo, hi = stats["ratio_ci95"]
    assert 0.5 <= lo <= stats["ratio"] <= hi <= 0.9
    assert paired.describe(stats).startswith("lower held-out ppl in 3 of 3 seed pairs, geometric mean ratio 0.71")
    assert paired.paired({0: 1.0}, {0: 2.0}) is None  # one pair is no comparison
