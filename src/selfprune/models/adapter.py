"""Where the prunable weights of a decoder-only model live, and its head layout.

One file per model family declares a ``FamilySpec``; ``get_adapter`` wraps a loaded model in a
``ModelAdapter`` that the pruner uses to reach each layer's q/k/v/o and gate/up/down projections.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from selfprune.errors import SelfpruneError


@dataclass(frozen=True)
class FamilySpec:
    """What differs between model families, as far as structured pruning is concerned."""

    name: str
    model_types: tuple[str, ...]
    causal_lm_class: str  # the transformers class the pruned checkpoint subclasses
    qkv_bias: bool = False  # q/k/v projections carry biases that are sliced with their heads
    qk_norm: bool = False  # per-head q/k norms over head_dim, shared by all heads: nothing to slice


_REGISTRY: dict[str, FamilySpec] = {}


def register(spec: FamilySpec) -> FamilySpec:
    for model_type in spec.model_types:
        _REGISTRY[model_type] = spec
    return spec


def supported_model_types() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def _load_families() -> None:
    # Importing the family modules registers them.
    from selfprune.models import gemma3, llama, mistral, qwen2, qwen3  # noqa: F401


class ModelAdapter:
    """A loaded causal LM seen as a stack of (attention, MLP) blocks with heads and channels."""

    def __init__(self, model: nn.Module, spec: FamilySpec):
        self.model = model
        self.spec = spec
        config = model.config
        self.config = config
        self.hidden_size = config.hidden_size
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads  # of the dense model
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.intermediate_size = config.intermediate_size
        if self.num_heads % self.num_kv_heads:
            raise SelfpruneError(
                f"{self.num_heads} attention heads do not split into {self.num_kv_heads} KV groups"
            )

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def attention(self, idx: int) -> nn.Module:
        return self.layers[idx].self_attn

    def mlp(self, idx: int) -> nn.Module:
        return self.layers[idx].mlp

    def set_attention(self, idx: int, module: nn.Module) -> None:
        self.layers[idx].self_attn = module

    def set_mlp(self, idx: int, module: nn.Module) -> None:
        self.layers[idx].mlp = module

    def layer_shape(self, idx: int) -> dict:
        """Current head count, KV-head count and MLP width of layer ``idx`` (0 when removed)."""
        attn, mlp = self.attention(idx), self.mlp(idx)
        q = getattr(attn, "q_proj", None)
        k = getattr(attn, "k_proj", None)
        gate = getattr(mlp, "gate_proj", None)
        return {
            "num_heads": q.out_features // self.head_dim if q is not None else 0,
            "num_kv_heads": k.out_features // self.head_dim if k is not None else 0,
            "intermediate_size": gate.out_features if gate is not None else 0,
        }


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``'s family, or a clear error listing the supported families."""
    _load_families()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    spec = _REGISTRY.get(model_type)
    if spec is None or not hasattr(getattr(model, "model", None), "layers"):
        raise SelfpruneError(
            f"unsupported architecture '{model_type}': selfprune supports "
            f"{', '.join(supported_model_types())} (decoder-only causal LMs)"
        )
    return ModelAdapter(model, spec)
