"""Qwen3: the Llama layout plus RMSNorm on q and k over head_dim (shared by heads, kept whole)."""

from selfprune.models.adapter import FamilySpec, register

QWEN3 = register(
    FamilySpec(name="qwen3", model_types=("qwen3",), causal_lm_class="Qwen3ForCausalLM", qk_norm=True)
)
