"""The model families selfprune prunes: one row each, the only place a family is declared.

A row names the transformers class the pruned checkpoint subclasses and where a decoder layer
keeps its blocks and projections. Families whose layers use other attribute names (e.g. a fused
or renamed projection) declare them here; the pruner, the importance pass and the checkpoint's
modeling code read the names from the adapter, never from their own constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Roles of the projections: attention inputs (q, k, v) and output (o); MLP inputs (gate, up)
# and output (down).
ROLES = ("q", "k", "v", "o", "gate", "up", "down")
_LLAMA_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


@dataclass(frozen=True)
class Family:
    """What differs between model families, as far as structured pruning is concerned."""

    name: str
    model_types: tuple[str, ...]
    causal_lm_class: str  # the transformers class the pruned checkpoint subclasses
    note: str = ""  # what is special about the family (shown in docs and errors)
    layers: str = "model.layers"  # attribute path of the decoder layer list
    attention: str = "self_attn"  # a layer's attention block
    mlp: str = "mlp"  # a layer's MLP block
    projections: dict[str, str] = field(default_factory=lambda: dict(_LLAMA_NAMES))
    # The layer's modules whose outputs are added to the residual stream (default: the blocks
    # themselves; families with sandwich norms add the norm's output): block influence reads them.
    attn_residual: str | None = None
    mlp_residual: str | None = None
    gguf_arch: str | None = None  # the llama.cpp graph a pruned model exports to (export/graphs/); None: none

    def anatomy(self) -> dict:
        """The attribute names, as recorded in a pruned checkpoint for its modeling code."""
        return {"layers": self.layers, "attention": self.attention, "mlp": self.mlp, "projections": dict(self.projections)}


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), "LlamaForCausalLM", "Llama 2/3, SmolLM2, TinyLlama: GQA, SwiGLU, no biases",
           gguf_arch="deci"),
    Family("mistral", ("mistral",), "MistralForCausalLM", "the Llama layout with sliding-window attention",
           gguf_arch="deci"),
    Family("qwen2", ("qwen2",), "Qwen2ForCausalLM", "biases on q/k/v, sliced with their heads", gguf_arch="deci"),
    Family("qwen3", ("qwen3",), "Qwen3ForCausalLM", "RMSNorm on q and k over head_dim (shared by heads, kept whole)",
           gguf_arch="openelm"),
    Family("gemma3", ("gemma3_text",), "Gemma3ForCausalLM", "q/k norms, sandwich norms, GeGLU MLP",
           gguf_arch="gemma3", attn_residual="post_attention_layernorm", mlp_residual="post_feedforward_layernorm"),
)

BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}
