"""Pruned checkpoints save, and load back through selfprune and stock transformers, unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfprune.models import get_adapter, load_model
from selfprune.pruning.apply import apply_plan
from selfprune.pruning.checkpoint import save_pruned
from selfprune.pruning.importance import compute_importance
from selfprune.pruning.plan import make_plan


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_both_ways(tiny_model, family, tmp_path, default_model):
    _, tokenizer = default_model  # any tokenizer: the checkpoint carries it alongside
    model = tiny_model(family)
    adapter = get_adapter(model)
    scores = compute_importance(adapter, torch.randint(0, 128, (4, 32)), "flap", progress=False)
    plan = make_plan(adapter, scores.head_scores, scores.channel_scores, [0.3, 1.0, 0.6], [0.5, 0.2, 1.0])
    apply_plan(adapter, plan, scores, bias_compensation=True)  # adds output biases: must survive the round trip
    out = save_pruned(model, tokenizer, tmp_path / "pruned")
    config = json.loads((out / "config.json").read_text())
    assert [layer["num_heads"] for layer in config["selfprune"]["layers"]] == [lp.num_heads for lp in plan.layers]
    assert (out / "modeling_selfprune.py").exists() and (out / "tokenizer.json").exists()

    x = torch.randint(0, 128, (2, 20))
    with torch.no_grad():
        expected = model(x).logits
        ours, _ = load_model(str(out))
        stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
        for loaded in (ours, stock):
            assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
            assert torch.equal(loaded(x).logits, expected)
    assert AutoTokenizer.from_pretrained(out)("hello").input_ids == tokenizer("hello").input_ids


def test_pruned_model_generates_with_cache(tiny_model, tmp_path):
    """Generation uses the KV cache; removed attention blocks must keep its length in step."""
    model = tiny_model("llama")
    adapter = get_adapter(model)
    scores = compute_importance(adapter, torch.randint(0, 128, (2, 16)), "wanda-sp", progress=False)
    apply_plan(adapter, make_plan(adapter, scores.head_scores, scores.channel_scores, [1.0, 0.5, 0.0], [0.3] * 3))
    x = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        cached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_save_refuses_unpruned_model(tiny_model, tmp_path):
    from selfprune.errors import SelfpruneError

    with pytest.raises(SelfpruneError, match="no pruning record"):
        save_pruned(tiny_model("llama"), None, tmp_path / "x")
    assert not (tmp_path / "x").exists()
