"""Genome space: constraint repair (clip, project, round), duplicates and repair counts."""

import numpy as np
import pytest

from selfprune.errors import SelfpruneError
from selfprune.evolution.genome import GenomeSpace, RepairStats

ATTN_LEVELS = [0, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 5 / 6, 1.0]
MLP_LEVELS = np.arange(49) / 48


def space(target=0.3, **kw):
    L = 12
    kw.setdefault("attn_params", np.full(L, 4 * 576 * 64 * 3.0))
    kw.setdefault("mlp_params", np.linspace(2e6, 3e6, L))
    kw.setdefault("attn_levels", ATTN_LEVELS)
    kw.setdefault("mlp_levels", MLP_LEVELS)
    return GenomeSpace(L, target, **kw)


def on_level(values, levels):
    return all(np.isclose(levels, v, atol=1e-6).any() for v in values)


@pytest.mark.parametrize("budget", ["mean", "params"])
@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("target", [0.3, 0.5])
def test_repair_is_feasible(budget, joint, target):
    sp = space(target, budget=budget, joint=joint)
    rng = np.random.default_rng(0)
    for _ in range(30):
        raw = rng.normal(target, 0.4, sp.dim)
        g, events = sp.repair(raw)
        a, m = g.arrays()
        assert a.min() >= 0 and max(a.max(), m.max()) <= 0.9 + 1e-9
        assert on_level(a, ATTN_LEVELS) and on_level(m, MLP_LEVELS)
        assert abs(sp.achieved(g) - target) <= sp.tolerance + 2e-3
        assert ("clipped" in events) == bool(((raw < 0) | (raw > 0.9)).any())
        if not joint:  # a repaired genome is a fixed point (joint rates round per block)
            again, ev2 = sp.repair(g.vector)
            assert again.key == g.key and ev2 == []


def test_repair_events_are_counted():
    sp = space()
    stats = RepairStats()
    cases = {
        "nonfinite": [np.nan] + [0.3] * 23,
        "resized": [0.2, 0.4],
        "clipped": [1.5] + [0.25] * 23,
    }
    for event, raw in cases.items():
        _, events = sp.repair(raw)
        assert event in events
        stats.add(events)
    assert stats.genomes == 3 and stats.counts["nonfinite"] == 1 and stats.counts["resized"] == 1
    _, events = sp.repair([])
    assert "resized" in events


def test_projection_keeps_shape():
    sp = space(0.4, attn_levels=None, mlp_levels=None)  # continuous levels: projection only
    ramp = np.linspace(0.1, 0.5, 12)
    g, events = sp.repair(np.concatenate([ramp, ramp]))
    a = np.array(g.attn)
    assert "projected" in events
    assert np.all(np.diff(a) >= -1e-9)  # still a ramp
    assert abs(sp.achieved(g) - 0.4) < 1e-3


def test_duplicates_share_a_key():
    sp = space()
    g1, _ = sp.repair(np.full(24, 0.3))
    g2, _ = sp.repair(np.full(24, 0.3) + 1e-4)
    assert g1.key == g2.key


def test_impossible_target_fails_at_construction():
    with pytest.raises(SelfpruneError, match="cannot be reached"):
        space(0.95, bounds=(0.0, 0.9))
    with pytest.raises(SelfpruneError, match="bounds"):
        space(0.3, bounds=(0.5, 0.2))


def test_rates_format():
    g, _ = space().repair(np.full(24, 0.3))
    rates = g.to_rates()
    assert len(rates) == 12 and set(rates[0]) == {"attn", "mlp"}
