"""llama.cpp's ``openelm`` graph for Qwen3: per-layer sizes, fused QKV, per-head q/k RMSNorm; no biases,
no removed blocks, and the output matrix is always the token embedding (tied)."""

from __future__ import annotations

import torch

from selfprune.errors import SelfpruneError
from selfprune.export.graphs.base import LayerLayout, T, Target, rope_parameters, tname


class OpenElmTarget(Target):
    """Qwen3 -> llama.cpp ``openelm``: per-layer sizes with per-head q/k norms; no biases, tied output."""

    arch = "openelm"

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

    def layer_tensors(self, i: int, lay: LayerLayout):
        src, h, hd, p = self.src, self.src.hidden, self.src.head_dim, self.layer_prefix(i)
        yield tname(T.ATTN_NORM, i), src.tensor(p + "input_layernorm.weight", (h,))
        if lay.attn == "kept":
            yield tname(T.ATTN_Q_NORM, i), src.tensor(self.block(i, "attn") + ".q_norm.weight", (hd,))
            yield tname(T.ATTN_K_NORM, i), src.tensor(self.block(i, "attn") + ".k_norm.weight", (hd,))
            nq, nkv = lay.heads * hd, lay.kv_heads * hd
            qkv = torch.cat([src.tensor(self.proj(i, "q"), (nq, h)),
                             src.tensor(self.proj(i, "k"), (nkv, h)),
                             src.tensor(self.proj(i, "v"), (nkv, h))])
            yield tname(T.ATTN_QKV, i), qkv
            yield tname(T.ATTN_OUT, i), src.tensor(self.proj(i, "o"), (h, nq))
        else:  # a removed block's norms are gone with it; any weight works on its all-zero q and k
            yield tname(T.ATTN_Q_NORM, i), torch.ones(hd)
            yield tname(T.ATTN_K_NORM, i), torch.ones(hd)
            yield tname(T.ATTN_QKV, i), torch.zeros(3 * hd, h)
            yield tname(T.ATTN_OUT, i), torch.zeros(h, hd)
        yield tname(T.FFN_NORM, i), src.tensor(p + "post_attention_layernorm.weight", (h,))
        if lay.mlp == "kept":
            yield from self.mlp_tensors(i, lay.ffn)
        else:
            yield from self.const_mlp_tensors(i)
