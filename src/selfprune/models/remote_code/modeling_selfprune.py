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

from functools import reduce

import torch
import transformers
from torch import nn

# Where blocks and projections live, for checkpoints that do not record it (Llama layout).
DEFAULT_ANATOMY = {
    "layers": "model.layers", "attention": "self_attn", "mlp": "mlp",
    "projections": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                    "gate": "gate_proj", "up": "up_proj", "down": "down_proj"},
}


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


def restructure(model: nn.Module, layer_specs: list[dict], anatomy: dict | None = None) -> None:
    """Reshape each decoder layer of ``model`` to the sizes in ``layer_specs`` (weights uninitialised)."""
    anatomy = anatomy or DEFAULT_ANATOMY
    names = anatomy["projections"]
    config = model.config
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    layers = reduce(getattr, anatomy["layers"].split("."), model)
    for idx, (layer, spec) in enumerate(zip(layers, layer_specs)):
        attn = getattr(layer, anatomy["attention"])
        proj = lambda block, role: getattr(block, names[role])  # noqa: E731
        n_heads, n_kv = int(spec["num_heads"]), int(spec["num_kv_heads"])
        if n_heads == 0:
            setattr(layer, anatomy["attention"], SkippedAttention(hidden, head_dim, idx, bias=bool(spec.get("o_bias"))))
        else:
            for role, width in (("q", n_heads), ("k", n_kv), ("v", n_kv)):
                old = proj(attn, role)
                setattr(attn, names[role], _linear_like(old, hidden, width * head_dim, old.bias is not None))
            old = proj(attn, "o")
            o_bias = old.bias is not None or bool(spec.get("o_bias"))
            setattr(attn, names["o"], _linear_like(old, n_heads * head_dim, hidden, o_bias))
            attn.num_key_value_groups = n_heads // n_kv
        mlp = getattr(layer, anatomy["mlp"])
        width = int(spec["intermediate_size"])
        if width == 0:
            setattr(layer, anatomy["mlp"], SkippedMLP(hidden, bias=bool(spec.get("down_bias"))))
        else:
            for role in ("gate", "up"):
                old = proj(mlp, role)
                setattr(mlp, names[role], _linear_like(old, hidden, width, old.bias is not None))
            old = proj(mlp, "down")
            down_bias = old.bias is not None or bool(spec.get("down_bias"))
            setattr(mlp, names["down"], _linear_like(old, width, hidden, down_bias))
            mlp.intermediate_size = width


def _pruned_class(base):
    class Pruned(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            spec = getattr(config, "selfprune", None)
            if spec:
                restructure(self, spec["layers"], spec.get("anatomy"))
                self.post_init()

    Pruned.__name__ = Pruned.__qualname__ = "SelfPruned" + base.__name__
    return Pruned


_CLASSES: dict[str, type] = {}


def __getattr__(name: str):
    # ``SelfPruned<Base>`` for any transformers causal LM class ``<Base>`` (the config's auto_map
    # names one), built once: a new model family needs no change here.
    if name.startswith("SelfPruned") and hasattr(transformers, name[len("SelfPruned"):]):
        if name not in _CLASSES:
            _CLASSES[name] = _pruned_class(getattr(transformers, name[len("SelfPruned"):]))
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
