"""Physical pruning equals masking, on tiny models of every family and on the default model."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES

from selfprune.errors import SelfpruneError
from selfprune.models import get_adapter
from selfprune.pruning.apply import apply_plan, pruned_view
from selfprune.pruning.importance import compute_importance
from selfprune.pruning.plan import attention_levels, make_plan, prunable_params

ATTN = [0.3, 1.0, 0.6]
MLP = [0.5, 0.2, 1.0]


def zero_pruned_units(adapter, plan):
    """The masked reference: zero the inputs of o_proj/down_proj that the plan removes."""
    hd = adapter.head_dim
    with torch.no_grad():
        for i, lp in enumerate(plan.layers):
            attn, mlp = adapter.attention(i), adapter.mlp(i)
            for h in set(range(adapter.num_heads)) - set(lp.heads):
                attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
            for c in set(range(adapter.intermediate_size)) - set(lp.channels):
                mlp.down_proj.weight[:, c] = 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("metric", ["wanda-sp", "flap", "magnitude"])
def test_removal_equals_masking(tiny_model, family, metric):
    model = tiny_model(family)
    adapter = get_adapter(model)
    scores = compute_importance(adapter, torch.randint(0, 128, (4, 32)), metric, progress=False)
    plan = make_plan(adapter, scores.head_scores, scores.channel_scores, ATTN, MLP)
    x = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        dense = model(x).logits
        with pruned_view(adapter, plan):
            viewed = model(x).logits
        assert torch.equal(model(x).logits, dense), "pruned_view must restore the dense model"
        masked_model = tiny_model(family)
        zero_pruned_units(get_adapter(masked_model), plan)
        masked = masked_model(x).logits
        dense_params = sum(p.numel() for p in model.parameters())
        expected = dense_params - prunable_params(adapter) + prunable_params(adapter, plan)
        apply_plan(adapter, plan, scores)
        pruned = model(x).logits
    torch.testing.assert_close(pruned, masked, rtol=1e-4, atol=1e-5)
    assert torch.equal(pruned, viewed)
    assert not torch.allclose(pruned, dense, atol=1e-3), "pruning must change the function"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == expected < dense_params
    # layer 1 lost its attention, layer 2 its MLP: both became constant-output modules
    assert adapter.layer_shape(1)["num_heads"] == 0 and adapter.layer_shape(2)["intermediate_size"] == 0


def test_gqa_layout_stays_valid(tiny_model):
    model = tiny_model("llama")  # 4 query heads in 2 KV groups
    adapter = get_adapter(model)
    scores = compute_importance(adapter, torch.randint(0, 128, (2, 16)), "wanda-sp", progress=False)
    for rate in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]:
        plan = make_plan(adapter, scores.head_scores, scores.channel_scores, [rate] * 3, [0.0] * 3)
        for lp in plan.layers:
            if lp.num_heads:
                assert lp.num_heads % lp.num_kv_heads == 0
                per_group = lp.num_heads // lp.num_kv_heads
                for j, kv in enumerate(lp.kv_heads):  # each kept group keeps its own query heads
                    heads = lp.heads[j * per_group : (j + 1) * per_group]
                    assert all(h // adapter.heads_per_group == kv for h in heads)
    plan = make_plan(adapter, scores.head_scores, scores.channel_scores, [0.5] * 3, [0.0] * 3, attn_granularity="group")
    assert all(lp.num_heads == adapter.heads_per_group for lp in plan.layers)


def test_levels_and_rounding(tiny_model):
    adapter = get_adapter(tiny_model("llama"))
    assert attention_levels(adapter) == [0.0, pytest.approx(1 / 3, abs=1e-5), 0.5, pytest.approx(2 / 3, abs=1e-5), 1.0]
    scores = compute_importance(adapter, torch.randint(0, 128, (2, 16)), "magnitude", progress=False)
    plan = make_plan(adapter, scores.head_scores, scores.channel_scores, [0.0] * 3, [0.3] * 3, mlp_multiple=8)
    assert all(lp.intermediate_size % 8 == 0 for lp in plan.layers)
    assert plan.layers[0].intermediate_size == 64  # 0.7 * 96 = 67.2 -> nearest multiple of 8


def test_bad_rates_and_metric(tiny_model):
    adapter = get_adapter(tiny_model("llama"))
    scores = compute_importance(adapter, torch.randint(0, 128, (2, 16)), "magnitude", progress=False)
    with pytest.raises(SelfpruneError, match="3 layers"):
        make_plan(adapter, scores.head_scores, scores.channel_scores, [0.1] * 2, [0.1] * 3)
    with pytest.raises(SelfpruneError, match="outside"):
        make_plan(adapter, scores.head_scores, scores.channel_scores, [0.1, 1.5, 0.1], [0.1] * 3)
    with pytest.raises(SelfpruneError, match="unknown metric"):
        compute_importance(adapter, torch.randint(0, 128, (2, 16)), "taylor")


def test_unsupported_architecture_lists_supported():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(SelfpruneError, match="unsupported architecture 'gpt2'.*gemma3_text.*llama.*qwen2"):
        get_adapter(model)


def test_flap_bias_compensation_beats_plain_removal(default_model):
    """On the real default model, FLAP's bias compensation lowers the loss of the pruned model."""
    from selfprune.models import load_model
    from selfprune.options import PruneOptions
    from selfprune.pruning.pipeline import calibration_blocks, prune_model

    _, tokenizer = default_model
    eval_ids = calibration_blocks(tokenizer, samples=2, seqlen=128, seed=1)
    losses = {}
    for comp in (False, True):
        model, _ = load_model("default")
        options = PruneOptions(metric="flap", calib_samples=4, calib_seqlen=128, bias_compensation=comp)
        prune_model(model, tokenizer, ratio=0.3, options=options, progress=False)
        with torch.no_grad():
            losses[comp] = model(eval_ids, labels=eval_ids).loss.item()
    assert losses[True] < losses[False]


def test_activation_statistics_match_direct_computation():
    """The streamed per-channel statistics equal those of all activations at once (float64)."""
    from selfprune.pruning.importance import _Stats

    torch.manual_seed(0)
    batches = [torch.randn(3, 50, 8) * 0.01 + 1000.0 for _ in range(4)]  # large mean, small spread
    stats = _Stats()
    for b in batches:
        stats(None, (b,))
    full = torch.cat([b.reshape(-1, 8) for b in batches]).double()
    torch.testing.assert_close(stats.mean(), full.mean(0))
    torch.testing.assert_close(stats.variance(), full.var(0), rtol=1e-3, atol=0)
    torch.testing.assert_close(stats.norm(), full.pow(2).sum(0).sqrt())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_ordered_channels_preserve_function_and_serve_views(tiny_model, family):
    """Ordering MLP channels by importance changes nothing; the view of a plan then shares storage."""
    from selfprune.pruning.apply import order_mlp_channels

    model = tiny_model(family)
    adapter = get_adapter(model)
    x = torch.randint(0, 128, (2, 24))
    scores = compute_importance(adapter, torch.randint(0, 128, (4, 32)), "flap", progress=False)
    with torch.no_grad():
        before = model(x).logits
        ordered = order_mlp_channels(adapter, scores)
        torch.testing.assert_close(model(x).logits, before, rtol=1e-5, atol=1e-5)
        plan = make_plan(adapter, ordered.head_scores, ordered.channel_scores, [0.3] * 3, [0.4, 0.7, 0.0])
        assert plan.layers[0].channels == list(range(plan.layers[0].intermediate_size))
        with pruned_view(adapter, plan, ordered, bias_compensation=True):
            down = adapter.mlp(0).down_proj.weight
            viewed = model(x).logits
        assert down.data_ptr() == adapter.mlp(0).down_proj.weight.data_ptr()  # a view, not a copy
        apply_plan(adapter, plan, ordered, bias_compensation=True)
        torch.testing.assert_close(model(x).logits, viewed, rtol=1e-5, atol=1e-5)
