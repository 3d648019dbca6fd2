"""Qwen2 / Qwen2.5: the Llama layout plus biases on q/k/v, sliced with their heads."""

from selfprune.models.adapter import FamilySpec, register

QWEN2 = register(
    FamilySpec(name="qwen2", model_types=("qwen2",), causal_lm_class="Qwen2ForCausalLM", qkv_bias=True)
)
