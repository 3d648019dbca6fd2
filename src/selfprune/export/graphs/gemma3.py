"""llama.cpp's ``gemma3`` graph for Gemma 3: the same sizes in every layer, no biases."""

from __future__ import annotations

import gguf
import torch

from selfprune.errors import SelfpruneError
from selfprune.export.graphs.base import LayerLayout, T, Target, rope_parameters, tname


class Gemma3Target(Target):
    """Gemma 3 -> llama.cpp ``gemma3``: one head count and FFN width for all layers, no biases."""

    arch = "gemma3"

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

    def layer_tensors(self, i: int, lay: LayerLayout):
        src, h, hd, p = self.src, self.src.hidden, self.src.head_dim, self.layer_prefix(i)
        nq, nkv = lay.heads * hd, lay.kv_heads * hd
        yield tname(T.ATTN_NORM, i), self.norm_weight(src.tensor(p + "input_layernorm.weight", (h,)))
        yield tname(T.ATTN_Q, i), src.tensor(self.proj(i, "q"), (nq, h))
        yield tname(T.ATTN_K, i), src.tensor(self.proj(i, "k"), (nkv, h))
        yield tname(T.ATTN_V, i), src.tensor(self.proj(i, "v"), (nkv, h))
        yield tname(T.ATTN_OUT, i), src.tensor(self.proj(i, "o"), (h, nq))
        for role in ("q", "k", "v"):
            if src.has(self.proj(i, role, "bias")):
                raise SelfpruneError(f"layer {i} has a {self.family.projections[role]} bias; llama.cpp's gemma3 "
                                     "graph has none")
        yield tname(T.ATTN_Q_NORM, i), self.norm_weight(src.tensor(self.block(i, "attn") + ".q_norm.weight", (hd,))) * self.q_scale
        yield tname(T.ATTN_K_NORM, i), self.norm_weight(src.tensor(self.block(i, "attn") + ".k_norm.weight", (hd,)))
        yield tname(T.ATTN_POST_NORM, i), self.norm_weight(src.tensor(p + "post_attention_layernorm.weight", (h,)))
        yield tname(T.FFN_NORM, i), self.norm_weight(src.tensor(p + "pre_feedforward_layernorm.weight", (h,)))
        yield from self.mlp_tensors(i, lay.ffn)
        yield tname(T.FFN_POST_NORM, i), self.norm_weight(src.tensor(p + "post_feedforward_layernorm.weight", (h,)))
