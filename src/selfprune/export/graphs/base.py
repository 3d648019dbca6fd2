"""What every llama.cpp graph shares: the layer layout written to GGUF, tensor names, RoPE settings,
and the base of each graph's target (checks, metadata and tensors of one model).

Source tensor names come from the family's anatomy (``models/families.py``): a family whose layers
name their blocks or projections otherwise needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf
import torch

from selfprune.errors import SelfpruneError
from selfprune.export.source import ModelSource
from selfprune.models.families import BY_MODEL_TYPE

T = gguf.MODEL_TENSOR


def tname(kind: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=bid) + "." + suffix


@dataclass
class LayerLayout:
    """A layer as written to GGUF: sizes, and how each block is realised."""

    heads: int
    kv_heads: int
    ffn: int
    attn: str  # "kept", "const" (one zero-weight head + output bias), "absent"
    mlp: str  # "kept", "const" (one zero-weight channel + output bias), "absent"
    attn_bias: torch.Tensor | None = field(default=None, repr=False)  # constant output of a removed block
    mlp_bias: torch.Tensor | None = field(default=None, repr=False)

    def describe(self) -> dict:
        return {"heads": self.heads, "kv_heads": self.kv_heads, "ffn": self.ffn, "attn": self.attn, "mlp": self.mlp}


def _nonzero(t: torch.Tensor | None) -> bool:
    return t is not None and bool(torch.any(t != 0))


def rope_parameters(src: ModelSource, layer_type: str | None = None) -> dict:
    """The rope settings (rope_type, rope_theta, ...) for the full-attention (or given) layer type."""
    cfg = src.config
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and layer_type is None and "full_attention" in params:
        layer_type = "full_attention"
    if isinstance(params, dict) and layer_type in params:
        params = params[layer_type]
    if not isinstance(params, dict):  # older configs: rope_theta and rope_scaling at the top level
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
        if layer_type == "sliding_attention" and "rope_local_base_freq" in cfg:
            params = {"rope_type": "default", "rope_theta": cfg["rope_local_base_freq"]}
    params = dict(params)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _hf_config(src: ModelSource):
    from transformers import AutoConfig

    return AutoConfig.for_model(**{k: v for k, v in src.config.items() if k not in ("auto_map", "selfprune")})


def rope_freq_factors(src: ModelSource) -> torch.Tensor | None:
    """Per-frequency divisors that turn plain RoPE into the model's scaled RoPE (None: plain).

    Computed from transformers' own rope functions, for the scalings that are a fixed rescaling of
    each frequency (linear, llama3); ggml applies them as ``rope_freqs`` (theta_i / factor_i).
    """
    params = rope_parameters(src)
    kind = params["rope_type"]
    if kind == "default":
        return None
    if kind not in ("linear", "llama3"):
        raise SelfpruneError(
            f"rope scaling '{kind}' is not exported: llama.cpp's graph for this family applies only a fixed per-frequency "
            "rescaling (linear, llama3); YaRN, dynamic and long-rope scaling change with the sequence length or rescale "
            "attention"
        )
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[kind](_hf_config(src), "cpu")
    if abs(float(attention_factor) - 1.0) > 1e-6:
        raise SelfpruneError(f"rope scaling '{kind}' rescales attention by {attention_factor}; llama.cpp cannot express it")
    dim = inv_freq.numel() * 2
    plain = 1.0 / (float(params["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return (plain / inv_freq.to(torch.float64)).to(torch.float32)


class Target:
    """One llama.cpp architecture: checks, metadata and tensors for a model of a family."""

    arch: str  # the llama.cpp architecture (the family table's gguf_arch)

    def __init__(self, src: ModelSource):
        self.src = src
        self.family = BY_MODEL_TYPE[src.model_type]
        self.notes: list[str] = []
        self.check()
        self.layout = self.plan()

    # --- shared -------------------------------------------------------------------------------
    @property
    def tied(self) -> bool:
        return bool(self.src.config.get("tie_word_embeddings", False)) or not self.src.has("lm_head.weight")

    def check(self) -> None:
        src = self.src
        if src.head_dim % 2:
            raise SelfpruneError(f"head size {src.head_dim} is odd; RoPE needs an even head size")
        partial = src.config.get("partial_rotary_factor")
        if partial not in (None, 1, 1.0):
            raise SelfpruneError(f"partial rotary embeddings (partial_rotary_factor={partial}) are not exported")

    def plan(self) -> list[LayerLayout]:
        raise NotImplementedError

    def context_length(self) -> int:
        return int(self.src.config.get("max_position_embeddings") or 4096)

    def write_common(self, w: gguf.GGUFWriter, n_vocab: int) -> None:
        src = self.src
        w.add_context_length(self.context_length())
        w.add_embedding_length(src.hidden)
        w.add_block_count(src.num_layers)
        w.add_key_length(src.head_dim)  # explicit: llama.cpp would otherwise derive it from layer 0's head count
        w.add_value_length(src.head_dim)
        w.add_rope_dimension_count(src.head_dim)
        w.add_layer_norm_rms_eps(float(src.config.get("rms_norm_eps", 1e-6)))
        w.add_vocab_size(n_vocab)

    def write_hparams(self, w: gguf.GGUFWriter, n_vocab: int) -> None:
        """Per-layer head, KV-head and FFN-width arrays (the graphs that take them)."""
        self.write_common(w, n_vocab)
        w.add_head_count([l.heads for l in self.layout])
        w.add_head_count_kv([l.kv_heads for l in self.layout])
        w.add_feed_forward_length([l.ffn for l in self.layout])
        w.add_rope_freq_base(float(rope_parameters(self.src)["rope_theta"]))

    def tensors(self):
        """Yield (gguf name, float32 tensor in Hugging Face [out, in] layout): the model's, then each layer's."""
        yield from self._embeddings()
        for i, lay in enumerate(self.layout):
            yield from self.layer_tensors(i, lay)

    def layer_tensors(self, i: int, lay: LayerLayout):
        """Yield layer ``i``'s tensors as the graph names them."""
        raise NotImplementedError

    def mlp_tensors(self, i: int, width: int):
        """A kept MLP's gate, up and down matrices (``width`` channels)."""
        src, h = self.src, self.src.hidden
        yield tname(T.FFN_GATE, i), src.tensor(self.proj(i, "gate"), (width, h))
        yield tname(T.FFN_UP, i), src.tensor(self.proj(i, "up"), (width, h))
        yield tname(T.FFN_DOWN, i), src.tensor(self.proj(i, "down"), (h, width))

    def const_mlp_tensors(self, i: int):
        """A removed MLP as one zero-weight channel: its output is exactly its output bias (or zero)."""
        h = self.src.hidden
        yield tname(T.FFN_GATE, i), torch.zeros(1, h)
        yield tname(T.FFN_UP, i), torch.zeros(1, h)
        yield tname(T.FFN_DOWN, i), torch.zeros(h, 1)

    def _embeddings(self):
        src = self.src
        embed = src.tensor("model.embed_tokens.weight")
        if embed.ndim != 2 or embed.shape[1] != src.hidden:
            raise SelfpruneError(f"model.embed_tokens.weight has shape {tuple(embed.shape)}; expected (vocab, {src.hidden})")
        yield tname(T.TOKEN_EMBD), embed
        yield tname(T.OUTPUT_NORM), self.norm_weight(src.tensor("model.norm.weight", (src.hidden,)))
        if not self.tied:
            yield tname(T.OUTPUT), src.tensor("lm_head.weight", tuple(embed.shape))

    def norm_weight(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def layer_prefix(self, i: int) -> str:
        return f"{self.family.layers}.{i}."

    def block(self, i: int, part: str) -> str:
        """Layer ``i``'s attention (``part`` "attn") or MLP block, named as the family's anatomy names it."""
        return self.layer_prefix(i) + (self.family.attention if part == "attn" else self.family.mlp)

    def proj(self, i: int, role: str, suffix: str = "weight") -> str:
        """The tensor of layer ``i``'s projection ``role`` (q k v o gate up down), from the family's anatomy."""
        part = "attn" if role in ("q", "k", "v", "o") else "mlp"
        return f"{self.block(i, part)}.{self.family.projections[role]}.{suffix}"

    def removed_constant(self, i: int, part: str) -> torch.Tensor | None:
        """The output of a removed block: the bias its block keeps (bias compensation), or None for zero."""
        t = self.src.optional(self.block(i, part) + ".bias", (self.src.hidden,))
        return t if _nonzero(t) else None

    def _check_no_output_biases(self, why: str) -> None:
        src = self.src
        for i in range(src.num_layers):
            for name, block in ((self.proj(i, "o", "bias"), "attention"), (self.block(i, "attn") + ".bias", "attention"),
                                (self.proj(i, "down", "bias"), "MLP"), (self.block(i, "mlp") + ".bias", "MLP")):
                if src.has(name):
                    raise SelfpruneError(
                        f"layer {i}'s {block} has an output bias ({name}, from bias compensation); {why}. "
                        "Prune with --no-bias-compensation to export this family"
                    )
