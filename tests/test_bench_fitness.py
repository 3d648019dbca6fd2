"""The fitness benchmark's re-ranking of each search's finalists."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_fitness")


def test_rerank_picks_each_searchs_finalist_with_the_lowest_setting_value_and_counts_changes(bench):
    # Two searches of three finalists each (the first is the search's own pick); "short" ranks like
    # the search, "long" prefers another finalist in search A (better held out) and in B (worse).
    rows = [{"name": n, "heldout_ppl": h, "short": s, "long": lg} for n, h, s, lg in [
        ("a0", 700.0, 5.00, 6.0), ("a1", 600.0, 5.10, 5.5), ("a2", 900.0, 5.20, 6.5),
        ("b0", 500.0, 4.00, 4.6), ("b1", 800.0, 4.10, 4.4), ("b2", 650.0, 4.20, 4.9)]]
    finalists = {"A": [0, 1, 2], "B": [3, 4, 5]}
    short, long = bench.rerank(finalists, rows, ["short", "long"])
    assert short["picks"] == {"A": "a0", "B": "b0"}
    assert (short["better"], short["worse"]) == (0, 0)
    assert short["pick_heldout_mean"] == pytest.approx(short["own_pick_heldout_mean"]) == pytest.approx(600.0)
    assert long["picks"] == {"A": "a1", "B": "b1"}
    assert (long["better"], long["worse"]) == (1, 1)
    assert long["pick_heldout_mean"] == pytest.approx(700.0)
    assert long["best_finalist_heldout_mean"] == pytest.approx(550.0)


def test_roughness_is_the_mean_level_change_between_adjacent_layers(bench):
    assert bench.roughness([0.3] * 6, [0.25] * 6) == 0.0
    # attention alternates 0.2/0.4 (every step 0.2), the MLP ramps 0.1 per layer: (0.2 + 0.1) / 2
    assert bench.roughness([0.2, 0.4, 0.2, 0.4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.15)


def test_smoothness_prior_keeps_the_ranking_at_zero_and_prefers_the_smooth_shape_when_strong(bench):
    flat, bumpy = [0.3, 0.3, 0.3, 0.3], [0.1, 0.5, 0.1, 0.5]
    # "rough" fits best but is worst held out; "smooth" fits a little worse and is best held out
    candidates = [{"name": n, "attn": a, "mlp": a, "heldout_ppl": h, "fit": f} for n, a, h, f in [
        ("rough", bumpy, 900.0, 5.00), ("smooth", flat, 600.0, 5.05), ("mid", [0.2, 0.3, 0.4, 0.3], 700.0, 5.10)]]
    results = {"candidates": candidates, "finalists": {"S": ["rough", "smooth", "mid"]}}
    none, strong = bench.smoothness_prior(results, ["fit"], [0.0, 1.0])
    assert none["top1"] == "rough" and none["rerank"]["picks"] == {"S": "rough"}
    assert none["spearman_heldout"] == pytest.approx(-0.5)
    assert strong["top1"] == "smooth" and strong["rerank"]["picks"] == {"S": "smooth"}
    assert strong["rerank"]["better"] == 1 and strong["spearman_heldout"] == pytest.approx(1.0)
    assert "fit+1tv" not in candidates[0]  # the caller's rows are left as they were


def test_setting_summary_reports_the_agreement_with_a_second_heldout_text_where_rows_have_one(bench):
    # "fit" ranks exactly as WikiText-2 does and exactly against the other text.
    rows = [{"name": f"c{i}", "fit": f, "heldout_ppl": h, "heldout_extra_ppl": x}
            for i, (f, h, x) in enumerate([(1.0, 100.0, 90.0), (2.0, 200.0, 80.0), (3.0, 300.0, 70.0)])]
    summary = bench.setting_summary(rows, "fit")
    assert summary["spearman_heldout"] == pytest.approx(1.0) and summary["top1"] == "c0"
    assert summary["extra_spearman_heldout"] == pytest.approx(-1.0)
    assert summary["extra_top1_heldout_ppl"] == pytest.approx(90.0)
    assert "extra_spearman_heldout" not in bench.setting_summary([{k: v for k, v in r.items() if "extra" not in k}
                                                                  for r in rows], "fit")
