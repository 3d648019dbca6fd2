"""A search candidate built by PrunedViews is the physically pruned model, and costs no host sync."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import FAMILIES
from torch.profiler import ProfilerActivity, profile

from selfprune.errors import SelfpruneError
from selfprune.evolution.fitness import PruningFitness
from selfprune.models import get_adapter
from selfprune.pruning.apply import apply_plan, order_by_importance
from selfprune.pruning.importance import compute_importance
from selfprune.pruning.views import PrunedViews

# Per layer of the 3-layer tiny models: attention and MLP rates, removed blocks included.
RATES = [([0.3, 1.0, 0.6], [0.5, 0.2, 1.0]), ([0.0, 0.45, 0.9], [1.0, 0.0, 0.37]), ([0.7, 0.7, 0.0], [0.1, 0.6, 0.8])]


def _scored(model, order: bool, metric: str = "flap"):
    adapter = get_adapter(model)
    scores = compute_importance(adapter, torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1)),
                                metric, progress=False)
    return adapter, order_by_importance(adapter, scores) if order else scores


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("order", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("compensate", [True, False], ids=["compensated", "plain"])
def test_a_view_equals_the_physically_pruned_model(tiny_model, family, order, compensate):
    model = tiny_model(family)
    adapter, scores = _scored(model, order)
    views = PrunedViews(adapter, scores, mlp_multiple=1, bias_compensation=compensate)
    x = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        dense = model(x).logits
        for attn, mlp in RATES * 2:  # twice: the second time every layout and width comes from the caches
            with views.pruned(attn, mlp):
                viewed = model(x).logits
            assert torch.equal(model(x).logits, dense), "the dense model must be back after the view"
            physical = copy.deepcopy(model)
            p_adapter = get_adapter(physical)
            apply_plan(p_adapter, views.plan(attn, mlp), scores, compensate)
            expected = physical(x).logits
            scale = expected.abs().max()
            assert float((viewed - expected).abs().max()) <= 1e-4 * float(scale), (attn, mlp)
            assert not torch.allclose(viewed, dense, atol=1e-3)
            assert sum(t.numel() for t in physical.parameters()) < sum(t.numel() for t in model.parameters())


def _shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_ordering_preserves_the_function_and_makes_candidates_views(tiny_model, family):
    model = tiny_model(family)
    x = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        before = model(x).logits
        adapter, scores = _scored(model, order=True)
        torch.testing.assert_close(model(x).logits, before, rtol=1e-5, atol=1e-5)
    for h in scores.head_scores:  # groups by their total, heads within a group: best first
        by_group = h.reshape(adapter.num_kv_heads, adapter.heads_per_group)
        assert (by_group[:, :-1] >= by_group[:, 1:]).all() and (by_group.sum(1)[:-1] >= by_group.sum(1)[1:]).all()
    views = PrunedViews(adapter, scores, bias_compensation=True)
    layer = views.layers[0]
    whole_group = next(i for i, (k, m) in enumerate(layer.choices.layouts) if k == 1 and m == adapter.heads_per_group)
    rate = 1 - layer.choices.params[whole_group] / layer.choices.dense_params
    with views.pruned([rate] * 3, [0.4] * 3):
        attn, mlp = adapter.attention(0), adapter.mlp(0)
        for block, roles in ((attn, ("q", "k", "v", "o")), (mlp, ("gate", "up", "down"))):
            for role in roles:  # one whole group, the best, and the best channels: all views
                assert _shares(adapter.projection(block, role).weight, layer.proj[role].weight), role
        assert adapter.projection(attn, "q").out_features == adapter.heads_per_group * adapter.head_dim
        assert mlp.down_proj.bias is not None  # the compensation
    with pytest.raises(SelfpruneError, match="outside"):
        with views.pruned([0.3, 2.0, 0.3], [0.4] * 3):
            pass
    assert adapter.mlp(0) is views.layers[0].mlp  # restored after a refused view too


SYNCS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::item")


def _profiled(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, [e.name for e in prof.events()]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_candidate_syncs_with_the_host_only_where_the_dense_forward_does(tiny_model, family):
    """Scoring a candidate adds no host sync to the model's own forward passes (transformers' mask
    code has one each): on a GPU every other .item(), nonzero or branch on a tensor would drain the
    pipeline once per layer. Reading the loss is the one sync left, a .cpu() that the CPU does not
    count."""
    model = tiny_model(family)
    adapter, scores = _scored(model, order=True, metric="wanda-sp")
    blocks = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(2))
    fit = PruningFitness(adapter, scores, [blocks], "ppl", bias_compensation=True, batch_size=2)
    rates = np.array([0.3, 0.5, 0.7]), np.array([0.4, 0.2, 0.6])
    first = fit(*rates)  # fills the caches: the next candidate at these layouts looks them up
    again, candidate = _profiled(lambda: fit(*rates))
    with torch.no_grad():
        _, dense = _profiled(lambda: [model(blocks[i : i + 2], use_cache=False) for i in (0, 2)])
    assert again == first
    # nor anything initialised at random or built from Python lists per candidate
    for kinds in (SYNCS, ("aten::uniform_", "aten::normal_", "aten::arange")):
        assert [e for e in candidate if e in kinds] == [e for e in dense if e in kinds]


def test_released_views_let_the_dense_blocks_go(tiny_model):
    import gc
    import weakref

    model = tiny_model("llama")
    adapter, scores = _scored(model, order=True)
    fit = PruningFitness(adapter, scores, [torch.randint(0, 128, (2, 16))], "ppl", bias_compensation=True)
    dense_mlp = weakref.ref(adapter.mlp(0))
    first = fit([0.3] * 3, [0.4] * 3)
    fit.release()
    assert fit([0.3] * 3, [0.4] * 3) == first  # built again on demand
    fit.release()
    apply_plan(adapter, fit.plan([0.3] * 3, [0.4] * 3), scores, True)
    gc.collect()
    assert dense_mlp() is None
