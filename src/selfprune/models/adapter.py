"""A loaded decoder-only model seen as what structured pruning needs: per layer, an attention block
with heads in KV groups and an MLP block with channels, and the projections that hold them.

Everything that knows where a family keeps its weights goes through ``ModelAdapter`` (the family
table is ``selfprune.models.families``): the importance pass hooks the projections' inputs, the
plan counts parameters with ``geometry``, the pruner slices ``projection``s and swaps blocks, and
the checkpoint records ``anatomy`` so its modeling code rebuilds the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from torch import nn

from selfprune.errors import SelfpruneError
from selfprune.models.families import BY_MODEL_TYPE, Family

ATTENTION_INPUTS = ("q", "k", "v")  # sliced by rows (heads)
ATTENTION_OUTPUT = "o"  # sliced by columns; carries bias compensation
MLP_INPUTS = ("gate", "up")  # sliced by rows (channels)
MLP_OUTPUT = "down"  # sliced by columns; carries bias compensation


@dataclass(frozen=True)
class BlockGeometry:
    """Parameter counts of one layer's prunable blocks, as a function of what is kept."""

    hidden: int
    head_dim: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    attn_extra: int = 0  # other parameters of the attention block (q/k norms): gone with its last head

    def attn_params(self, kv_heads: int, heads: int) -> int:
        hd, h = self.head_dim, self.hidden
        n = (heads + 2 * kv_heads) * hd * h + heads * hd * h
        if self.qkv_bias:
            n += (heads + 2 * kv_heads) * hd
        if self.o_bias:  # kept as a constant even when every head is gone
            n += h
        if heads:
            n += self.attn_extra
        return n

    def mlp_params(self, width: int) -> int:
        n = 3 * self.hidden * width
        if self.mlp_bias:
            n += 2 * width + self.hidden
        return n


def supported_model_types() -> list[str]:
    return sorted(BY_MODEL_TYPE)


class ModelAdapter:
    """A loaded causal LM as a stack of (attention, MLP) blocks with heads and channels."""

    def __init__(self, model: nn.Module, family: Family):
        self.model = model
        self.family = family
        config = model.config
        self.config = config
        self.hidden_size = config.hidden_size
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads  # of the dense model
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.intermediate_size = config.intermediate_size
        if self.num_heads % self.num_kv_heads:
            raise SelfpruneError(f"{self.num_heads} attention heads do not split into {self.num_kv_heads} KV groups")

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def layers(self) -> nn.ModuleList:
        return reduce(getattr, self.family.layers.split("."), self.model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # ---- blocks and projections ------------------------------------------------------------
    def attention(self, idx: int) -> nn.Module:
        return getattr(self.layers[idx], self.family.attention)

    def mlp(self, idx: int) -> nn.Module:
        return getattr(self.layers[idx], self.family.mlp)

    def residual_branch(self, idx: int, kind: str) -> nn.Module:
        """The module of layer ``idx`` whose output the ``kind`` (attn or mlp) block adds to the
        residual stream: the block itself, or the norm after it in families with sandwich norms."""
        name = self.family.attn_residual if kind == "attn" else self.family.mlp_residual
        return getattr(self.layers[idx], name) if name else (self.attention(idx) if kind == "attn" else self.mlp(idx))

    def set_attention(self, idx: int, module: nn.Module) -> None:
        setattr(self.layers[idx], self.family.attention, module)

    def set_mlp(self, idx: int, module: nn.Module) -> None:
        setattr(self.layers[idx], self.family.mlp, module)

    def projection(self, block: nn.Module, role: str) -> nn.Linear | None:
        """The projection of ``role`` (q, k, v, o, gate, up, down) in a block; None once removed."""
        return getattr(block, self.family.projections[role], None)

    def set_projection(self, block: nn.Module, role: str, linear: nn.Linear) -> None:
        setattr(block, self.family.projections[role], linear)

    # ---- sizes -----------------------------------------------------------------------------
    def geometry(self, idx: int = 0) -> BlockGeometry:
        """Parameter counts of a layer of the dense model (call before pruning it)."""
        attn, mlp = self.attention(idx), self.mlp(idx)
        q, o, down = (self.projection(attn, "q"), self.projection(attn, "o"), self.projection(mlp, "down"))
        projections = {id(p) for role in (*ATTENTION_INPUTS, ATTENTION_OUTPUT)
                       for p in self.projection(attn, role).parameters()}
        return BlockGeometry(
            attn_extra=sum(p.numel() for p in attn.parameters() if id(p) not in projections),
            hidden=self.hidden_size,
            head_dim=self.head_dim,
            qkv_bias=q.bias is not None,
            o_bias=o.bias is not None,
            mlp_bias=down.bias is not None,
        )

    def layer_shape(self, idx: int) -> dict:
        """Current head count, KV-head count and MLP width of layer ``idx`` (0 when removed)."""
        attn, mlp = self.attention(idx), self.mlp(idx)
        q, k, gate = self.projection(attn, "q"), self.projection(attn, "k"), self.projection(mlp, "gate")
        return {
            "num_heads": q.out_features // self.head_dim if q is not None else 0,
            "num_kv_heads": k.out_features // self.head_dim if k is not None else 0,
            "intermediate_size": gate.out_features if gate is not None else 0,
        }


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``'s family, or a clear error listing the supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise SelfpruneError(
            f"unsupported architecture '{model_type}': selfprune supports "
            f"{', '.join(supported_model_types())} (decoder-only causal LMs)"
        )
    adapter = ModelAdapter(model, family)
    try:
        adapter.layers
    except AttributeError:
        raise SelfpruneError(f"'{model_type}' model has no decoder layers at '{family.layers}'; "
                             "pass a causal LM (AutoModelForCausalLM), not a base or multimodal model") from None
    return adapter
