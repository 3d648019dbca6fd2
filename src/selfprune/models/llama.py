"""Llama family (Llama 2/3, SmolLM2, TinyLlama, ...): grouped-query attention, SwiGLU MLP, no biases."""

from selfprune.models.adapter import FamilySpec, register

LLAMA = register(FamilySpec(name="llama", model_types=("llama",), causal_lm_class="LlamaForCausalLM"))
