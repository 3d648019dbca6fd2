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
