"""How each model family maps onto a llama.cpp architecture, layer by layer, exactly.

llama.cpp takes per-layer head, KV-head and FFN-width arrays only in some graphs; the ones used here:

* ``deci`` (Llama-3.1-Nemotron) for Llama, Mistral and Qwen2: per-layer sizes, optional q/k/v,
  attn_output and ffn biases. A layer with ``n_head == 0`` skips attention (output zero); a layer
  with ``n_ff == 0`` skips the *whole rest of the layer*, attention output included, so it is only
  exact when the attention is gone too. llama.cpp derives the head size from layer 0, so layer 0
  must keep at least one head.
* ``openelm`` for Qwen3: per-layer sizes, fused QKV, per-head q/k RMSNorm; no biases, no removed
  blocks, and the output matrix is always the token embedding (tied).
* ``gemma3`` for Gemma 3: the same sizes in every layer, no biases.

A removed block whose constant output cannot be expressed by leaving it out is written as a
*constant block*: one head (or one FFN channel) with all-zero weights, whose output is exactly its
output bias (zero when there is none). That costs one head's (one channel's) compute per such
layer and keeps the function exact. Anything else a pruned model needs but the graph lacks is
refused with a SelfpruneError that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf
import torch

from selfprune.errors import SelfpruneError
from selfprune.export.source import ModelSource

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


def _removed_constant(src: ModelSource, i: int, block: str) -> torch.Tensor | None:
    """The output of a removed block: ``model.layers.i.{self_attn,mlp}.bias``, or None for zero."""
    name = f"model.layers.{i}.{'self_attn' if block == 'attn' else 'mlp'}.bias"
    t = src.optional(name, (src.hidden,))
    return t if _nonzero(t) else None


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

    arch: str
    families: tuple[str, ...]

    def __init__(self, src: ModelSource):
        self.src = src
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
        """Yield (gguf name, float32 tensor in Hugging Face [out, in] layout)."""
        raise NotImplementedError

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
        return f"model.layers.{i}."

    def _check_no_output_biases(self, why: str) -> None:
        src = self.src
        for i in range(src.num_layers):
            p = self.layer_prefix(i)
            for name, block in ((p + "self_attn.o_proj.bias", "attention"), (p + "self_attn.bias", "attention"),
                                (p + "mlp.down_proj.bias", "MLP"), (p + "mlp.bias", "MLP")):
                if src.has(name):
                    raise SelfpruneError(
                        f"layer {i}'s {block} has an output bias ({name}, from bias compensation); {why}. "
                        "Prune with --no-bias-compensation to export this family"
                    )


class DeciTarget(Target):
    """Llama, Mistral, Qwen2 -> llama.cpp ``deci``: per-layer sizes, biases, removed blocks."""

    arch = "deci"
    families = ("llama", "mistral", "qwen2")

    def check(self) -> None:
        super().check()
        cfg = self.src.config
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise SelfpruneError(f"activation '{act}' is not exported: llama.cpp's deci graph uses SiLU")
        self.freq_factors = rope_freq_factors(self.src)

    def context_length(self) -> int:
        ctx = super().context_length()
        window = self._sliding_window()
        if window and window < ctx:
            # Sliding-window attention equals full attention on sequences up to the window; the
            # deci graph has no window, so the trained context is capped there.
            self.notes.append(f"sliding window {window}: context length capped to {window} tokens (exact up to there)")
            return window
        return ctx

    def _sliding_window(self) -> int | None:
        cfg = self.src.config
        window = cfg.get("sliding_window")
        if not window:
            return None
        if cfg.get("model_type") == "mistral":
            return int(window)
        types = cfg.get("layer_types") or []
        if cfg.get("use_sliding_window") or "sliding_attention" in types:
            return int(window)
        return None

    def plan(self) -> list[LayerLayout]:
        src = self.src
        out = []
        last = src.num_layers - 1
        for i, shape in enumerate(src.layers):
            attn_c = _removed_constant(src, i, "attn") if shape.heads == 0 else None
            mlp_c = _removed_constant(src, i, "mlp") if shape.ffn == 0 else None
            if shape.heads:
                if shape.kv_heads < 1 or shape.heads % shape.kv_heads:
                    raise SelfpruneError(f"layer {i}: {shape.heads} heads do not split into {shape.kv_heads} KV groups")
                heads, kv, attn = shape.heads, shape.kv_heads, "kept"
            elif attn_c is not None or i == 0:  # layer 0 sets llama.cpp's head size: keep one (zero) head
                heads, kv, attn = 1, 1, "const"
            else:
                heads, kv, attn = 0, 0, "absent"
            if shape.ffn:
                ffn, mlp = shape.ffn, "kept"
            elif mlp_c is None and attn == "absent" and i != last:
                # n_ff == 0 makes deci skip the rest of the layer: exact only with attention gone too
                # (and not on the last layer, where the output rows are selected after the FFN).
                ffn, mlp = 0, "absent"
            else:
                ffn, mlp = 1, "const"
            out.append(LayerLayout(heads, kv, ffn, attn, mlp, attn_c, mlp_c))
        n_const = sum((l.attn == "const") + (l.mlp == "const") for l in out)
        if n_const:
            self.notes.append(f"{n_const} removed block(s) written as one zero-weight head/channel carrying the block's "
                              "constant output (exact; costs one head or channel of compute each)")
        return out

    @staticmethod
    def _rope_permute(t: torch.Tensor, n_head: int) -> torch.Tensor:
        # Hugging Face rotates the two halves of each head; ggml's "normal" RoPE rotates adjacent
        # pairs. Reorder each head's rows (and bias) so that both compute the same rotation.
        shape = t.shape
        return t.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)

    def tensors(self):
        src = self.src
        yield from self._embeddings()
        if self.freq_factors is not None:
            yield tname(T.ROPE_FREQS), self.freq_factors
        h, hd = src.hidden, src.head_dim
        for i, lay in enumerate(self.layout):
            p = self.layer_prefix(i)
            if lay.attn != "absent":
                yield tname(T.ATTN_NORM, i), src.tensor(p + "input_layernorm.weight", (h,))
            if lay.attn == "kept":
                nq, nkv = lay.heads * hd, lay.kv_heads * hd
                yield tname(T.ATTN_Q, i), self._rope_permute(src.tensor(p + "self_attn.q_proj.weight", (nq, h)), lay.heads)
                yield tname(T.ATTN_K, i), self._rope_permute(src.tensor(p + "self_attn.k_proj.weight", (nkv, h)), lay.kv_heads)
                yield tname(T.ATTN_V, i), src.tensor(p + "self_attn.v_proj.weight", (nkv, h))
                yield tname(T.ATTN_OUT, i), src.tensor(p + "self_attn.o_proj.weight", (h, nq))
                for proj, kind, n, heads in (("q_proj", T.ATTN_Q, nq, lay.heads), ("k_proj", T.ATTN_K, nkv, lay.kv_heads),
                                             ("v_proj", T.ATTN_V, nkv, 0)):
                    b = src.optional(p + f"self_attn.{proj}.bias", (n,))
                    if b is not None:
                        yield tname(kind, i, "bias"), self._rope_permute(b, heads) if heads else b
                b = src.optional(p + "self_attn.o_proj.bias", (h,))
                if b is not None:
                    yield tname(T.ATTN_OUT, i, "bias"), b
            elif lay.attn == "const":
                for kind in (T.ATTN_Q, T.ATTN_K, T.ATTN_V):
                    yield tname(kind, i), torch.zeros(hd, h)
                yield tname(T.ATTN_OUT, i), torch.zeros(h, hd)
                if lay.attn_bias is not None:
                    yield tname(T.ATTN_OUT, i, "bias"), lay.attn_bias
            if lay.mlp != "absent":
                yield tname(T.FFN_NORM, i), src.tensor(p + "post_attention_layernorm.weight", (h,))
            if lay.mlp == "kept":
                n = lay.ffn
                yield tname(T.FFN_GATE, i), src.tensor(p + "mlp.gate_proj.weight", (n, h))
                yield tname(T.FFN_UP, i), src.tensor(p + "mlp.up_proj.weight", (n, h))
                yield tname(T.FFN_DOWN, i), src.tensor(p + "mlp.down_proj.weight", (h, n))
                for proj, kind, size in (("gate_proj", T.FFN_GATE, n), ("up_proj", T.FFN_UP, n), ("down_proj", T.FFN_DOWN, h)):
                    b = src.optional(p + f"mlp.{proj}.bias", (size,))
                    if b is not None:
                        yield tname(kind, i, "bias"), b
            elif lay.mlp == "const":
                yield tname(T.FFN_GATE, i), torch.zeros(1, h)
                yield tname(T.FFN_UP, i), torch.zeros(1, h)
                yield tname(T.FFN_DOWN, i), torch.zeros(h, 1)
                if lay.mlp_bias is not None:
                    yield tname(T.FFN_DOWN, i, "bias"), lay.mlp_bias


class OpenElmTarget(Target):
    """Qwen3 -> llama.cpp ``openelm``: per-layer sizes with per-head q/k norms; no biases, tied output."""

    arch = "openelm"
    families = ("qwen3",)

    def check(self) -> None:
        super().check()
        src, cfg = self.src, self.src.config
        if cfg.get("hidden_act", "silu") != "silu":
            raise SelfpruneError(f"activation '{cfg.get('hidden_act')}' is not exported: llama.cpp's openelm graph uses SiLU")
        if not self.tied:
            raise SelfpruneError(
                "this Qwen3 model has a separate output matrix (lm_head); llama.cpp's only per-layer-size graph with "
                "q/k norms (openelm) always reuses the token embedding as output, so it cannot be exported"
            )
        if cfg.get("attention_bias"):
            raise SelfpruneError("q/k/v biases (attention_bias) are not exported: llama.cpp's openelm graph has none")
        if cfg.get("use_sliding_window") or "sliding_attention" in (cfg.get("layer_types") or []):
            raise SelfpruneError("sliding-window layers are not exported for Qwen3: llama.cpp's openelm graph has no window")
        if rope_parameters(src)["rope_type"] != "default":
            raise SelfpruneError(
                f"rope scaling '{rope_parameters(src)['rope_type']}' is not exported for Qwen3: llama.cpp's openelm graph "
                "applies plain RoPE"
            )
        self._check_no_output_biases("llama.cpp's openelm graph (the one that takes per-layer sizes and q/k norms) "
                                     "has no attention-output or FFN-output bias")

    def plan(self) -> list[LayerLayout]:
        out = []
        for i, s in enumerate(self.src.layers):
            if s.heads and (s.kv_heads < 1 or s.heads % s.kv_heads):
                raise SelfpruneError(f"layer {i}: {s.heads} heads do not split into {s.kv_heads} KV groups")
            attn = ("kept", s.heads, s.kv_heads) if s.heads else ("const", 1, 1)  # openelm needs every layer's tensors
            mlp = ("kept", s.ffn) if s.ffn else ("const", 1)
            out.append(LayerLayout(attn[1], attn[2], mlp[1], attn[0], mlp[0]))
        n_const = sum((l.attn == "const") + (l.mlp == "const") for l in out)
        if n_const:
            self.notes.append(f"{n_const} removed block(s) written as one zero-weight head/channel (exact; costs one head "
                              "or channel of compute each)")
        return out

    def tensors(self):
        src = self.src
        yield from self._embeddings()
        h, hd = src.hidden, src.head_dim
        for i, lay in enumerate(self.layout):
            p = self.layer_prefix(i)
            yield tname(T.ATTN_NORM, i), src.tensor(p + "input_layernorm.weight", (h,))
            if lay.attn == "kept":
                yield tname(T.ATTN_Q_NORM, i), src.tensor(p + "self_attn.q_norm.weight", (hd,))
                yield tname(T.ATTN_K_NORM, i), src.tensor(p + "self_attn.k_norm.weight", (hd,))
                nq, nkv = lay.heads * hd, lay.kv_heads * hd
                qkv = torch.cat([src.tensor(p + "self_attn.q_proj.weight", (nq, h)),
                                 src.tensor(p + "self_attn.k_proj.weight", (nkv, h)),
                                 src.tensor(p + "self_attn.v_proj.weight", (nkv, h))])
                yield tname(T.ATTN_QKV, i), qkv
                yield tname(T.ATTN_OUT, i), src.tensor(p + "self_attn.o_proj.weight", (h, nq))
            else:  # a removed block's norms are gone with it; any weight works on its all-zero q and k
                yield tname(T.ATTN_Q_NORM, i), torch.ones(hd)
                yield tname(T.ATTN_K_NORM, i), torch.ones(hd)
                yield tname(T.ATTN_QKV, i), torch.zeros(3 * hd, h)
                yield tname(T.ATTN_OUT, i), torch.zeros(h, hd)
            yield tname(T.FFN_NORM, i), src.tensor(p + "post_attention_layernorm.weight", (h,))
            if lay.mlp == "kept":
                n = lay.ffn
                yield tname(T.FFN_GATE, i), src.tensor(p + "mlp.gate_proj.weight", (n, h))
                yield tname(T.FFN_UP, i), src.tensor(p + "mlp.up_proj.weight", (n, h))
                yield tname(T.FFN_DOWN, i), src.tensor(p + "mlp.down_proj.weight", (h, n))
            else:
                yield tname(T.FFN_GATE, i), torch.zeros(1, h)
                yield tname(T.FFN_UP, i), torch.zeros(1, h)
                yield tname(T.FFN_DOWN, i), torch.zeros(h, 1)


class Gemma3Target(Target):
    """Gemma 3 -> llama.cpp ``gemma3``: one head count and FFN width for all layers, no biases."""

    arch = "gemma3"
    families = ("gemma3_text",)

    def check(self) -> None:
        super().check()
        src, cfg = self.src, self.src.config
        shapes = set(src.layers)
        if len(shapes) > 1:
            sizes = ", ".join(f"{s.heads}/{s.kv_heads} heads + {s.ffn} FFN" for s in sorted(shapes, key=lambda s: (s.heads, s.ffn)))
            raise SelfpruneError(
                f"this Gemma 3 model has different sizes per layer ({sizes}); llama.cpp's gemma3 graph takes one head "
                "count and one FFN width for all layers (no llama.cpp graph with per-layer sizes has Gemma 3's GELU MLP "
                "and sandwich norms). Prune Gemma 3 with a uniform --ratio to export it"
            )
        s = next(iter(shapes))
        if s.heads == 0 or s.ffn == 0:
            raise SelfpruneError("every layer of this Gemma 3 model has its attention or MLP removed; nothing to export")
        if s.heads % max(s.kv_heads, 1):
            raise SelfpruneError(f"{s.heads} heads do not split into {s.kv_heads} KV groups")
        self._check_no_output_biases("llama.cpp's gemma3 graph has no attention-output or FFN-output bias")
        if cfg.get("attn_logit_softcapping"):
            raise SelfpruneError("attention logit soft-capping is not exported: llama.cpp's gemma3 graph has none")
        if cfg.get("use_bidirectional_attention"):
            raise SelfpruneError("bidirectional attention (an embedding model) is not exported")
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
        if act != "gelu_pytorch_tanh":
            raise SelfpruneError(f"activation '{act}' is not exported: llama.cpp's gemma3 graph uses tanh-approximated GELU")
        full, local = rope_parameters(src, "full_attention"), rope_parameters(src, "sliding_attention")
        if full["rope_type"] not in ("default", "linear"):
            raise SelfpruneError(f"rope scaling '{full['rope_type']}' is not exported for Gemma 3 (default and linear are)")
        if local["rope_type"] != "default":
            raise SelfpruneError(f"rope scaling '{local['rope_type']}' on sliding layers is not exported for Gemma 3")
        self.full_rope, self.local_rope = full, local
        # llama.cpp fixes the attention scale (1/sqrt(head size), or 1/sqrt(hidden/heads) for its
        # 62-layer "27B"); Gemma 3 scales by query_pre_attn_scalar^-0.5. Fold the ratio into the
        # q norm's weight: the scale commutes with RoPE, so this is exact.
        hf_scale = float(cfg.get("query_pre_attn_scalar") or src.head_dim) ** -0.5
        cpp_scale = (src.hidden / s.heads) ** -0.5 if src.num_layers == 62 else src.head_dim ** -0.5
        self.q_scale = hf_scale / cpp_scale

    def plan(self) -> list[LayerLayout]:
        return [LayerLayout(s.heads, s.kv_heads, s.ffn, "kept", "kept") for s in self.src.layers]

    def norm_weight(self, w: torch.Tensor) -> torch.Tensor:
        return w + 1.0  # Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by weight

    def _swa_layers(self) -> list[bool]:
        cfg = self.src.config
        types = cfg.get("layer_types")
        if types:
            return [t == "sliding_attention" for t in types]
        pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
        return [(i + 1) % pattern != 0 for i in range(self.src.num_layers)]

    def write_hparams(self, w: gguf.GGUFWriter, n_vocab: int) -> None:
        self.write_common(w, n_vocab)
        s = self.layout[0]
        w.add_head_count(s.heads)
        w.add_head_count_kv(s.kv_heads)
        w.add_feed_forward_length(s.ffn)
        w.add_rope_freq_base(float(self.full_rope["rope_theta"]))
        w.add_rope_freq_base_swa(float(self.local_rope["rope_theta"]))
        if self.full_rope["rope_type"] == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(self.full_rope["factor"]))
        swa = self._swa_layers()
        if any(swa):
            w.add_sliding_window(int(self.src.get_config("sliding_window")))
            w.add_sliding_window_pattern(swa)
        if self.src.config.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(self.src.config["final_logit_softcapping"]))

    def tensors(self):
        src = self.src
        yield from self._embeddings()
        h, hd = src.hidden, src.head_dim
        for i, lay in enumerate(self.layout):
            p = self.layer_prefix(i)
            nq, nkv = lay.heads * hd, lay.kv_heads * hd
            yield tname(T.ATTN_NORM, i), self.norm_weight(src.tensor(p + "input_layernorm.weight", (h,)))
            yield tname(T.ATTN_Q, i), src.tensor(p + "self_attn.q_proj.weight", (nq, h))
            yield tname(T.ATTN_K, i), src.tensor(p + "self_attn.k_proj.weight", (nkv, h))
            yield tname(T.ATTN_V, i), src.tensor(p + "self_attn.v_proj.weight", (nkv, h))
            yield tname(T.ATTN_OUT, i), src.tensor(p + "self_attn.o_proj.weight", (h, nq))
            for proj in ("q_proj", "k_proj", "v_proj"):
                if src.has(p + f"self_attn.{proj}.bias"):
                    raise SelfpruneError(f"layer {i} has a {proj} bias; llama.cpp's gemma3 graph has none")
            yield tname(T.ATTN_Q_NORM, i), self.norm_weight(src.tensor(p + "self_attn.q_norm.weight", (hd,))) * self.q_scale
            yield tname(T.ATTN_K_NORM, i), self.norm_weight(src.tensor(p + "self_attn.k_norm.weight", (hd,)))
            yield tname(T.ATTN_POST_NORM, i), self.norm_weight(src.tensor(p + "post_attention_layernorm.weight", (h,)))
            yield tname(T.FFN_NORM, i), self.norm_weight(src.tensor(p + "pre_feedforward_layernorm.weight", (h,)))
            yield tname(T.FFN_GATE, i), src.tensor(p + "mlp.gate_proj.weight", (lay.ffn, h))
            yield tname(T.FFN_UP, i), src.tensor(p + "mlp.up_proj.weight", (lay.ffn, h))
            yield tname(T.FFN_DOWN, i), src.tensor(p + "mlp.down_proj.weight", (h, lay.ffn))
            yield tname(T.FFN_POST_NORM, i), self.norm_weight(src.tensor(p + "post_feedforward_layernorm.weight", (h,)))


TARGETS: tuple[type[Target], ...] = (DeciTarget, OpenElmTarget, Gemma3Target)
MODEL_TYPES = tuple(f for cls in TARGETS for f in cls.families)


def target_for(src: ModelSource) -> Target:
    """The llama.cpp architecture this model exports to, checked; or a SelfpruneError saying why not."""
    for cls in TARGETS:
        if src.model_type in cls.families:
            return cls(src)
    raise SelfpruneError(f"model type '{src.model_type}' is not exported to GGUF; supported: {', '.join(MODEL_TYPES)}")
