"""The search benchmark's summaries: merged tables of a matrix run in parts, and where improvements came from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A record's settings as bench_search.py writes them (only their equality and the table's header matter here).
ARGS = {"model": "default", "ratios": "0.3", "seeds": "0,1,2", "max_evals": 40, "population": 8, "crossover": 4,
        "mutation": 4, "llm_share": 0.3, "fitness": "ppl", "fitness_samples": "2", "fitness_seqlen": 64,
        "calib": "lambada", "calib_samples": 2, "calib_seqlen": 64, "eval_windows": 1, "eval_seqlen": 64,
        "tasks": "piqa", "zeroshot_limit": 0, "wikitext": "wiki.test.raw", "seed": 0, "out": "exp"}


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_search")


def result_row(arm, seed, ppl, **extra):
    """One row of a results record with what the summaries read: a fixed arm (uniform, owl) is one evaluation,
    a searching arm many; an arm named llm-* is the LLM operator, with LLM call counts."""
    fixed, llm = arm in ("uniform", "owl"), arm.startswith("llm")
    return {"ratio": 0.3, "arm": arm, "operator": "llm" if llm else arm, "seed": seed, "heldout_ppl": ppl,
            "fitness": ppl / 2, "zeroshot_avg": None, "evals": 1 if fixed else 40, "wall_s": 1.0,
            "llm_calls": 5 if llm else 0, "llm_distinct": 4 if llm else None, "llm_repeats": 1 if llm else None,
            "llm_copies": 0 if llm else None, "fallbacks": 0, **extra}


def record(rows, **args):
    """A results record (as one invocation writes it, before --finalize lists its invocations)."""
    return {"args": {**ARGS, **args}, "dense_ppl": 20.0, "speed": {}, "rows": rows}


def parts():
    """A matrix run as two invocations side by side: the llm-null arm (with one more seed) apart from the others.
    Both ran the fixed uniform arm at their first seed; the second file's uniform row differs only so the test sees
    which one the merge keeps."""
    a = record([result_row("uniform", 0, 400.0)]
               + [result_row("ga-levels", s, p) for s, p in enumerate((100.0, 110.0, 150.0))]
               + [result_row("llm-self", s, p) for s, p in enumerate((90.0, 120.0, 105.0))])
    b = record([result_row("uniform", 0, 999.0)]
               + [result_row("llm-null", s, p) for s, p in enumerate((200.0, 220.0, 180.0, 200.0))], seeds="0,1,2,3")
    return a, b


def test_merged_parts_hold_every_arm_and_seed_once_with_the_means_of_their_rows(bench):
    a, b = parts()
    merged = bench.merge_results([a, b])
    keys = [(r["ratio"], r["arm"], r["seed"]) for r in merged["rows"]]
    assert len(keys) == 1 + 3 + 3 + 4 and len(set(keys)) == len(keys)
    assert set(keys) == {(r["ratio"], r["arm"], r["seed"]) for r in a["rows"] + b["rows"]}
    summary = {s["arm"]: s for s in bench.summarize(merged["rows"])}
    seeds = {arm: s["seeds"] for arm, s in summary.items()}
    assert seeds == {"uniform": 1, "ga-levels": 3, "llm-self": 3, "llm-null": 4}
    assert summary["uniform"]["heldout_mean"] == 400.0  # the first file's row of that arm and seed
    assert summary["ga-levels"]["heldout_mean"] == pytest.approx(120.0)  # (100 + 110 + 150) / 3
    assert summary["llm-self"]["heldout_mean"] == pytest.approx(105.0)  # (90 + 120 + 105) / 3
    assert summary["llm-null"]["heldout_mean"] == pytest.approx(200.0)  # (200 + 220 + 180 + 200) / 4
    assert summary["ga-levels"]["x_uniform"] == pytest.approx(120.0 / 400.0)
    assert merged["args"]["seeds"] == "0,1,2,3"  # every seed of every part, not the first file's


def test_parts_run_with_other_settings_are_not_merged(bench):
    a, b = parts()
    b["args"]["max_evals"] = a["args"]["max_evals"] // 2
    with pytest.raises(SystemExit, match="max_evals"):
        bench.merge_results([a, b])


def test_a_file_from_before_calib_was_recorded_counts_as_lambada(bench):
    a, b = parts()
    del a["args"]["calib"]  # run before --calib existed: it calibrated on LAMBADA
    b["args"]["calib"] = "lambada"
    assert len(bench.merge_results([a, b])["rows"]) == 1 + 3 + 3 + 4
    b["args"]["calib"] = "wiki-passages"
    with pytest.raises(SystemExit, match="calib"):
        bench.merge_results([a, b])
    assert bench.differing_settings(a["args"], b["args"]) == ["calib"]  # either side
    assert bench.differing_settings(b["args"], a["args"]) == ["calib"]


def test_parts_that_differ_in_the_llm_share_merge_as_separate_arms_and_compare_seed_by_seed(bench):
    a, b = parts()
    # The llm-null arm again with every offspring from the LLM operator, under its own name; its rows written in
    # reverse seed order, so only a comparison by seed pairs them right.
    factors = (0.5, 0.8, 1.25, 0.6)
    other = record([result_row("llm-null-share1", s, 200.0 * f) for s, f in reversed(list(enumerate(factors)))],
                   seeds="0,1,2,3", llm_share=1.0)
    b["rows"] = [r for r in b["rows"] if r["seed"] != 3]  # now only llm-null-share1 ran seed 3: not a pair
    merged = bench.merge_results([a, b, other])
    assert merged["args"]["llm_share"] == "per arm"
    shares = {(r["arm"], r.get("llm_share")) for r in merged["rows"] if r["operator"] == "llm"}
    assert shares == {("llm-self", 0.3), ("llm-null", 0.3), ("llm-null-share1", 1.0)}
    (line,) = [x for x in bench.paired_comparisons(merged["rows"], "llm-null") if "llm-null-share1" in x]
    # llm-null 200, 220, 180 at seeds 0-2 against 100, 160, 250: lower in 2 of 3, ratios 0.5, 160/220, 250/180.
    ratio = (0.5 * 160 / 220 * 250 / 180) ** (1 / 3)
    assert line.startswith(f"ratio 0.3: llm-null-share1 vs llm-null: lower held-out ppl in 2 of 3 seed pairs, "
                           f"geometric mean ratio {ratio:.2f}")
    # The same arm name with two shares is two different searches: refused.
    for r in other["rows"]:
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


# The prompts' closing lines as the LLM operator writes them: the example answer a reply may repeat.
PROMPTS = {"crossover": 'Make a child from two parents.\nAnswer with JSON only, like '
                        '{"a": 1, "b": 2, "take": "ABABA"}\n',
           "mutate": 'Propose 1 to 3 moves.\nAnswer with JSON only, like '
                     '{"moves": [{"from": 29, "to": 1, "part": "mlp", "pct": 5}]}\n'}


def transcript_line(kind, replies):
    """One LLM call of a search's transcript.jsonl: its kind, its prompt, its replies as the model wrote them."""
    return json.dumps({"generation": 1, "kind": kind, "prompt": PROMPTS.get(kind, "Describe a shape."),
                       "replies": replies, "outcomes": ["ok"] * len(replies)})


def write_transcript(out, row, lines):
    folder = out / f"r{row['ratio']}" / row["arm"] / f"s{row['seed']}"  # where bench_search.py writes it
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transcript.jsonl").write_text("\n".join(lines) + "\n")


# Each seed's LLM calls. llm-self: parents the two best in 2 of 3 crossover replies (1 of 3 as the example, a 1
# and b 2), segments AABBA in 2 of 3; 1 of 2 mutation replies is the example move (keys reordered, spaced).
SELF_CALLS = [transcript_line("initial", ['{"attn": [30], "mlp": [30]}']),
              transcript_line("crossover", ['{"a": 1, "b": 2, "take": "AABBA"}', '{"b": 1, "a": 2, "take": "AABBA"}',
                                            '{"a": 1, "b": 3, "take": "ABABA"}', "no JSON here"]),
              transcript_line("mutate", ['{"moves": [{"pct": 5, "part": "mlp", "to": 1, "from": 29}]}',
                                         ('{"moves":[{"from":3,"to":7,"part":"attn","pct":9},'
                                          '{"from":4,"to":8,"part":"mlp","pct":2}]}')])]
# llm-null (random fills): the two best in 1 of 4 crossover replies, BABAB in 3 of 4; never the example move.
NULL_CALLS = [transcript_line("crossover", ['{"a": 4, "b": 2, "take": "BABAB"}', '{"a": 2, "b": 1, "take": "BABAB"}',
                                            '{"a": 3, "b": 5, "take": "AABBA"}', '{"a": 5, "b": 1, "take": "BABAB"}']),
              transcript_line("mutate", ['{"moves": [{"from": 3, "to": 7, "part": "attn", "pct": 10}]}'])]


def test_table_of_a_matrix_run_in_parts_prints_the_comparison_the_credit_and_the_operators_choices(
        bench, tmp_path, capsys):
    """--table on two parts' results files: merged, compared with the reference arm seed by seed, credited by
    offspring kind, and the LLM arms' replies read from the transcripts beside each file."""
    a, b = parts()
    origins = {"uniform": {"evaluated": 1, "survived": 1, "best": 0},
               "llm-crossover": {"evaluated": 10, "survived": 5, "best": 2},
               "ga-mutate": {"evaluated": 20, "survived": 5, "best": 1}}
    for r in a["rows"]:
        if r["arm"] == "llm-self":
            r["origins"] = origins
            write_transcript(tmp_path / "a", r, SELF_CALLS)
    for r in b["rows"]:
        if r["arm"] == "llm-null" and r["seed"] < 3:  # its fourth search left no transcript
            write_transcript(tmp_path / "b", r, NULL_CALLS)
    files = []
    for name, part in (("a", a), ("b", b)):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "results.json").write_text(json.dumps(part))
        files.append(str(tmp_path / name / "results.json"))
    assert bench.main(["--table", ",".join(files)]) == 0
    out = capsys.readouterr().out
    # ga-levels 100, 110, 150 against llm-self 90, 120, 105: lower in 2 of 3 (p = P(at least 2 of 3) = 4/8).
    ratio = (90 / 100 * 120 / 110 * 105 / 150) ** (1 / 3)
    assert (f"ratio 0.3: llm-self vs ga-levels: lower held-out ppl in 2 of 3 seed pairs, geometric mean ratio "
            f"{ratio:.2f}") in out and "one-sided sign test p = 0.5\n" in out
    assert "vs llm-null" not in out and "uniform vs" not in out
    # Summed over the 3 seeds: llm-crossover 6 best of 30, 15 survived; ga-mutate 3 of 60, 15 survived; no uniform.
    assert ("ratio 0.3: llm-self (3 seeds), generation bests by offspring kind: llm-crossover 6 of 30 (20.0%, 50% "
            "survived), ga-mutate 3 of 60 (5.0%, 25% survived)\n") in out
    assert out.count("generation bests by offspring kind") == 1  # llm-null's rows record no origins
    assert ("ratio 0.3: llm-self (3 seeds), crossover replies: parents the two best in 6 of 9 (67%; 33% as the "
            "example, a 1 and b 2), most common segments AABBA (67%)") in out
    assert ("ratio 0.3: llm-self (3 seeds), mutation replies: the prompt's example move itself in 3 of 6 (50%); "
            "replies by number of moves 1: 3, 2: 3") in out
    assert ("ratio 0.3: llm-null (3 seeds), crossover replies: parents the two best in 3 of 12 (25%; 0% as the "
            "example, a 1 and b 2), most common segments BABAB (75%)") in out
    assert ("ratio 0.3: llm-null (3 seeds), mutation replies: the prompt's example move itself in 0 of 3 (0%); "
            "replies by number of moves 1: 3") in out
    # --reference chooses the arm every searching arm is compared with.
    assert bench.main(["--table", ",".join(files), "--reference", "llm-null"]) == 0
    out = capsys.readouterr().out
    assert "ratio 0.3: llm-self vs llm-null: lower held-out ppl in 3 of 3 seed pairs" in out
    assert "ratio 0.3: ga-levels vs llm-null: lower held-out ppl in 3 of 3 seed pairs" in out
    assert "vs ga-levels" not in out


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
    for name, part in (("a", a), ("b", b)):
        part["args"]["out"] = str(out / name)
        (out / name).mkdir(parents=True)
        (out / name / "results.json").write_text(json.dumps(part))
        for r in part["rows"]:
            folder = out / name / f"r{r['ratio']}" / r["arm"] / f"s{r['seed']}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "best.json").write_text(json.dumps({"part": name}))
            (folder / "checkpoint.json").write_text("{}")
    assert bench.finalize(out) == 0
    record = json.loads((out / "results.json").read_text())
    assert len(record["rows"]) == 1 + 3 + 3 + 4  # uniform at seed 0 once
    assert [r["heldout_ppl"] for r in record["rows"] if r["arm"] == "uniform"] == [400.0]
    assert [i["part"] for i in record["invocations"]] == ["a", "b"]
    assert record["args"]["out"] == out.name and str(tmp_path) not in (out / "results.json").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "r0.3", "results.json"]
    assert not list(out.rglob("checkpoint*.json"))
    assert json.loads((out / "r0.3" / "llm-null" / "s3" / "best.json").read_text()) == {"part": "b"}
    assert json.loads((out / "r0.3" / "uniform" / "s0" / "best.json").read_text()) == {"part": "a"}  # the row kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == len(record["rows"])
    assert [c["command"].split("--seeds ")[1].split()[0] for c in manifest["invocations"]] == ["0,1,2", "0,1,2,3"]
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
