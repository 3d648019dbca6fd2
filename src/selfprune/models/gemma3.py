"""Gemma 3 (text): q/k norms over head_dim, sandwich norms around attention and MLP, GeGLU MLP."""

from selfprune.models.adapter import FamilySpec, register

GEMMA3 = register(
    FamilySpec(
        name="gemma3", model_types=("gemma3_text",), causal_lm_class="Gemma3ForCausalLM", qk_norm=True
    )
)
