"""The speed harness on tiny real models: structure, counts and comparisons (no timing asserts)."""

from __future__ import annotations

import pytest
import torch

from selfprune.eval.speed import count_macs, count_params, speed
from selfprune.report.tables import format_speed_table


def tiny(intermediate: int, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def test_macs_count_every_linear_layer():
    model = tiny(96)
    seqlen = 32
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    macs = count_macs(model, seqlen)
    assert macs == seqlen * linear  # the tied lm_head runs (and counts) once per token


def test_side_by_side_comparison():
    dense, small = tiny(96), tiny(32)
    result = speed({"dense": dense, "small": small}, prefill_shapes=((1, 16), (2, 16)), decode_batches=(1, 2),
                   prompt_len=4, decode_tokens=3, warmup=1, repeats=2)
    rows, comp = result["models"], result["comparison"]
    assert rows["small"]["params"] == count_params(small) < rows["dense"]["params"]
    assert rows["small"]["macs"] < rows["dense"]["macs"]
    for row in rows.values():
        assert set(row["prefill_ms"]) == {"1x16", "2x16"} and all(v > 0 for v in row["prefill_ms"].values())
        assert set(row["decode_tok_s"]) == {"1", "2"} and all(v > 0 for v in row["decode_tok_s"].values())
        assert row["weights_mb"] > 0
    assert comp["dense"]["ideal"] == 1.0 and comp["dense"]["prefill_speedup"]["1x16"] == 1.0
    ideal = rows["dense"]["params"] / rows["small"]["params"]
    assert comp["small"]["ideal"] == pytest.approx(ideal)
    measured = rows["dense"]["decode_tok_s"]["2"] and rows["small"]["decode_tok_s"]["2"] / rows["dense"]["decode_tok_s"]["2"]
    assert comp["small"]["decode_vs_ideal"]["2"] == pytest.approx(measured / ideal)
    assert result["protocol"]["repeats"] == 2 and result["protocol"]["baseline"] == "dense"
    table = format_speed_table(result)
    assert table.splitlines()[2].startswith("dense") and "small" in table
