"""Modeling code for checkpoints pruned by selfprune.

This file is copied into every pruned checkpoint, so that stock transformers loads it with
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``. It depends only on torch
and transformers. The checkpoint's config keeps the base architecture (``model_type``) and adds a
``selfprune`` entry with each layer's head count, KV-head count, MLP width and output biases;
the model is built as the base architecture and then each layer is reshaped to those sizes before
the weights are loaded. A sub-block with no heads or channels left is replaced by a module that
returns its (bias-compensation) constant, so a fully pruned attention or MLP costs nothing.
"""

from __future__ import annotations

import torch
from torch import nn

try:  # the base families this file can rebuild; each import is optional across transformers versions
    from transformers import LlamaForCausalLM
except ImportError:  # pragma: no cover
    LlamaForCausalLM = None
try:
    from transformers import MistralForCausalLM
except ImportError:  # pragma: no cover
    MistralForCausalLM = None
try:
    from transformers import Qwen2ForCausalLM
except ImportError:  # pragma: no cover
    Qwen2ForCausalLM = None
try:
    from transformers import Qwen3ForCausalLM
except ImportError:  # pragma: no cover
    Qwen3ForCausalLM = None
try:
    from transformers import Gemma3ForCausalLM
except ImportError:  # pragma: no cover
    Gemma3ForCausalLM = None


class SkippedAttention(nn.Module):
    """An attention block with every head removed: its output is a constant (zero, or the bias)."""

    def __init__(self, hidden_size: int, head_dim: int, layer_idx: int, bias: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.layer_idx = layer_idx
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, hidden_states, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            # Keep the cache's sequence length in step: store zero heads for this layer.
            b, s = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(b, 0, s, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        out = torch.zeros_like(hidden_states)
        if self.bias is not None:
            out = out + self.bias
        return out, None


class SkippedMLP(nn.Module):
    """An MLP block with every channel removed: its output is a constant (zero, or the bias)."""

    def __init__(self, hidden_size: int, bias: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x):
        out = torch.zeros_like(x)
        if self.bias is not None:
            out = out + self.bias
        return out


def _linear_like(old: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device=old.weight.device, dtype=old.weight.dtype)


def restructure(model: nn.Module, layer_specs: list[dict]) -> None:
    """Reshape each decoder layer of ``model`` to the sizes in ``layer_specs`` (weights uninitialised)."""
    config = model.config
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    for idx, (layer, spec) in enumerate(zip(model.model.layers, layer_specs)):
        attn = layer.self_attn
        n_heads, n_kv = int(spec["num_heads"]), int(spec["num_kv_heads"])
        if n_heads == 0:
            layer.self_attn = SkippedAttention(hidden, head_dim, idx, bias=bool(spec.get("o_bias")))
        else:
            attn.q_proj = _linear_like(attn.q_proj, hidden, n_heads * head_dim, attn.q_proj.bias is not None)
            attn.k_proj = _linear_like(attn.k_proj, hidden, n_kv * head_dim, attn.k_proj.bias is not None)
            attn.v_proj = _linear_like(attn.v_proj, hidden, n_kv * head_dim, attn.v_proj.bias is not None)
            o_bias = attn.o_proj.bias is not None or bool(spec.get("o_bias"))
            attn.o_proj = _linear_like(attn.o_proj, n_heads * head_dim, hidden, o_bias)
            attn.num_key_value_groups = n_heads // n_kv
        mlp = layer.mlp
        width = int(spec["intermediate_size"])
        if width == 0:
            layer.mlp = SkippedMLP(hidden, bias=bool(spec.get("down_bias")))
        else:
            mlp.gate_proj = _linear_like(mlp.gate_proj, hidden, width, mlp.gate_proj.bias is not None)
            mlp.up_proj = _linear_like(mlp.up_proj, hidden, width, mlp.up_proj.bias is not None)
            down_bias = mlp.down_proj.bias is not None or bool(spec.get("down_bias"))
            mlp.down_proj = _linear_like(mlp.down_proj, width, hidden, down_bias)
            mlp.intermediate_size = width


def _pruned_class(base):
    class Pruned(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            spec = getattr(config, "selfprune", None)
            if spec:
                restructure(self, spec["layers"])
                self.post_init()

    Pruned.__name__ = Pruned.__qualname__ = "SelfPruned" + base.__name__
    return Pruned


SelfPrunedLlamaForCausalLM = _pruned_class(LlamaForCausalLM) if LlamaForCausalLM else None
SelfPrunedMistralForCausalLM = _pruned_class(MistralForCausalLM) if MistralForCausalLM else None
SelfPrunedQwen2ForCausalLM = _pruned_class(Qwen2ForCausalLM) if Qwen2ForCausalLM else None
SelfPrunedQwen3ForCausalLM = _pruned_class(Qwen3ForCausalLM) if Qwen3ForCausalLM else None
SelfPrunedGemma3ForCausalLM = _pruned_class(Gemma3ForCausalLM) if Gemma3ForCausalLM else None
