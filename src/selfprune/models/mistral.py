"""Mistral: the Llama layout with sliding-window attention; nothing extra to prune."""

from selfprune.models.adapter import FamilySpec, register

MISTRAL = register(FamilySpec(name="mistral", model_types=("mistral",), causal_lm_class="MistralForCausalLM"))
