"""The LLM-Pruner peer baseline (benchmarks/peer_llm_pruner.py) through Torch-Pruning, on tiny random models."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_pruning")


@pytest.fixture(scope="module")
def peer(load_benchmark):
    return load_benchmark("peer_llm_pruner")


def _blocks(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(seed))


def _decoder_params(model) -> int:
    return sum(p.numel() for layer in model.model.layers for m in (layer.self_attn, layer.mlp) for p in m.parameters())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_ratio_params_and_logits(peer, tiny_model, family, ratio):
    model = tiny_model(family)
    dense_decoder = _decoder_params(model)
    dense_total = sum(p.numel() for p in model.parameters())
    hidden = model.config.hidden_size
    result = peer.prune_llm_pruner(model, _blocks(), ratio)

    assert result["library"] == "torch-pruning 1.6.1" and result["importance"] == "taylor"
    # One MLP channel of this model is 3 * 64 / 30720 = 0.6% of the decoder: the budget is met to half of it.
    assert abs(result["achieved_ratio"] - ratio) < 0.005
    pruned_decoder = _decoder_params(model)
    assert result["attn_params"] + result["mlp_params"] == pruned_decoder
    assert result["achieved_ratio"] == pytest.approx(1 - pruned_decoder / dense_decoder)
    assert sum(p.numel() for p in model.parameters()) == dense_total - (dense_decoder - pruned_decoder)
    # The hidden size and embeddings are kept; KV heads are kept; every layer is pruned alike.
    assert model.get_input_embeddings().weight.shape == (128, hidden)
    assert result["kv_heads"] == [2, 2, 2]
    assert len(set(result["mlp"])) == 1 and result["mlp"][0] < 96
    assert model.config.intermediate_size == result["mlp"][0]
    ids = _blocks(1)[:2]
    logits = model(input_ids=ids).logits
    assert logits.shape == (2, ids.shape[1], 128)
    assert torch.isfinite(logits).all()


def _gqa_model(heads: int = 8, kv_heads: int = 2):
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_attention_heads, config.num_key_value_heads = heads, kv_heads
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _head_scores(model, blocks: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, per query head: sum of |w * grad| over its q_proj rows and o_proj columns."""
    model.zero_grad(set_to_none=True)
    for start in range(0, len(blocks), 2):
        batch = blocks[start:start + 2]
        (model(input_ids=batch, labels=batch).loss * len(batch) / len(blocks)).backward()
    scores = []
    for layer in model.model.layers:
        q, o = layer.self_attn.q_proj, layer.self_attn.o_proj
        d = layer.self_attn.head_dim
        q_score = (q.weight * q.weight.grad).abs().sum(1).view(-1, d).sum(1)
        o_score = (o.weight * o.weight.grad).abs().sum(0).view(-1, d).sum(1)
        scores.append(q_score + o_score)
    model.zero_grad(set_to_none=True)
    return scores


def test_gqa_heads_removed_are_the_low_taylor_ones(peer):
    """8 query heads in 2 KV groups: the same number leaves each group, the least important by Taylor score."""
    model = _gqa_model()
    blocks = _blocks()
    scores = _head_scores(model, blocks)
    dense_q = [layer.self_attn.q_proj.weight.detach().clone() for layer in model.model.layers]
    result = peer.prune_llm_pruner(model, blocks, 0.5)

    assert abs(result["achieved_ratio"] - 0.5) < 0.005
    assert result["heads"] == [4, 4, 4] and result["kv_heads"] == [2, 2, 2]
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    for layer, score, q in zip(model.model.layers, scores, dense_q):
        assert layer.self_attn.num_key_value_groups == 2
        d = layer.self_attn.head_dim
        kept_rows = layer.self_attn.q_proj.weight.detach().view(-1, d, q.shape[1])
        kept = [next(h for h in range(8) if torch.equal(q.view(8, d, -1)[h], row)) for row in kept_rows]
        expected = []
        for g in range(2):  # the two best heads of each KV group of four
            group = score[4 * g:4 * g + 4]
            expected += sorted(4 * g + i for i in group.argsort(descending=True)[:2].tolist())
        assert kept == expected
    logits = model(input_ids=blocks[:1]).logits
    assert torch.isfinite(logits).all()


def test_heads_never_drop_to_one_per_kv_group(peer):
    """Torch-Pruning skips a layer whose heads would fall to one per KV group, so the MLP takes the budget."""
    model = _gqa_model(4, 2)
    result = peer.prune_llm_pruner(model, _blocks(), 0.5)
    assert result["heads"] == [4, 4, 4]
    assert abs(result["achieved_ratio"] - 0.5) < 0.005


def test_library_that_does_not_finish_raises_peer_failed(peer, tiny_model):
    """The guard around Torch-Pruning's grouping (which loops forever on untraceable layers) reports, not hangs."""
    with pytest.raises(peer.PeerFailed, match="torch-pruning: dependency graph and grouping did not finish"):
        peer.prune_llm_pruner(tiny_model("llama"), _blocks(), 0.3, trace_timeout=1e-4)
