"""llama.cpp's ``deci`` graph (Llama-3.1-Nemotron) for Llama, Mistral and Qwen2: per-layer head, KV-head
and FFN sizes, optional q/k/v, attention-output and FFN biases. A layer with ``n_head == 0`` skips
attention (output zero); a layer with ``n_ff == 0`` skips the *whole rest of the layer*, attention
output included, so it is only exact when the attention is gone too. llama.cpp derives the head
size from layer 0, so layer 0 must keep at least one head."""

from __future__ import annotations

import torch

from selfprune.errors import SelfpruneError
from selfprune.export.graphs.base import LayerLayout, T, Target, rope_freq_factors, tname


class DeciTarget(Target):
    """Llama, Mistral, Qwen2 -> llama.cpp ``deci``: per-layer sizes, biases, removed blocks."""

    arch = "deci"

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
            attn_c = self.removed_constant(i, "attn") if shape.heads == 0 else None
            mlp_c = self.removed_constant(i, "mlp") if shape.ffn == 0 else None
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

    def _embeddings(self):
        yield from super()._embeddings()
        if self.freq_factors is not None:
            yield tname(T.ROPE_FREQS), self.freq_factors

    def layer_tensors(self, i: int, lay: LayerLayout):
        src, h, hd, p = self.src, self.src.hidden, self.src.head_dim, self.layer_prefix(i)
        if lay.attn != "absent":
            yield tname(T.ATTN_NORM, i), src.tensor(p + "input_layernorm.weight", (h,))
        if lay.attn == "kept":
            nq, nkv = lay.heads * hd, lay.kv_heads * hd
            yield tname(T.ATTN_Q, i), self._rope_permute(src.tensor(self.proj(i, "q"), (nq, h)), lay.heads)
            yield tname(T.ATTN_K, i), self._rope_permute(src.tensor(self.proj(i, "k"), (nkv, h)), lay.kv_heads)
            yield tname(T.ATTN_V, i), src.tensor(self.proj(i, "v"), (nkv, h))
            yield tname(T.ATTN_OUT, i), src.tensor(self.proj(i, "o"), (h, nq))
            for role, kind, n, heads in (("q", T.ATTN_Q, nq, lay.heads), ("k", T.ATTN_K, nkv, lay.kv_heads),
                                         ("v", T.ATTN_V, nkv, 0)):
                b = src.optional(self.proj(i, role, "bias"), (n,))
                if b is not None:
                    yield tname(kind, i, "bias"), self._rope_permute(b, heads) if heads else b
            b = src.optional(self.proj(i, "o", "bias"), (h,))
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
            yield from self.mlp_tensors(i, n)
            for role, kind, size in (("gate", T.FFN_GATE, n), ("up", T.FFN_UP, n), ("down", T.FFN_DOWN, h)):
                b = src.optional(self.proj(i, role, "bias"), (size,))
                if b is not None:
                    yield tname(kind, i, "bias"), b
        elif lay.mlp == "const":
            yield from self.const_mlp_tensors(i)
            if lay.mlp_bias is not None:
                yield tname(T.FFN_DOWN, i, "bias"), lay.mlp_bias
