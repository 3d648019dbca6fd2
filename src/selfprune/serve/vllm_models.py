"""vLLM model for checkpoints pruned by selfprune: every layer with its own query-head count,
KV-head count and MLP width, for each supported family (Llama, Mistral, Qwen2, Qwen3, Gemma 3).

The layers are built from vLLM's own modules (QKVParallelLinear, RowParallelLinear,
MergedColumnParallelLinear, its rotary embedding, Attention and RMSNorm), and the model around
them (embedding, final norm, LM head, weight loading, pipeline stages) is vLLM's Llama model, so
paged attention, batching, CUDA graphs and tensor parallelism work as for vLLM's own models. vLLM's
per-family attention classes are not reused because they take their sizes from the model-wide
config (Qwen2's even derives head_dim from the head count). A removed attention or MLP block is
its constant output (zero, or the compensation bias): no weights and, for attention, no KV cache.

Everything a layer needs is in the checkpoint's config: the ``selfprune`` entry's per-layer
``num_heads``, ``num_kv_heads``, ``intermediate_size``, ``o_bias`` and ``down_bias``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import get_act_and_mul_fn
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.models.llama import LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.utils import extract_layer_index
from vllm.transformers_utils.config import set_default_rope_theta

from selfprune.serve import tensor_parallel_error


@dataclass(frozen=True)
class Style:
    """What a family's layers do differently (the sizes come from the pruning record)."""

    qkv_bias: bool | None = None  # None: the config's attention_bias
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys (Qwen3, Gemma 3)
    gemma: bool = False  # (1 + w) norms, norms after each block too, scaled embedding, GeGLU
    default_rope_theta: float | None = None

    @property
    def norm(self) -> type[nn.Module]:
        return GemmaRMSNorm if self.gemma else RMSNorm


STYLES = {
    "llama": Style(),
    "mistral": Style(),
    "qwen2": Style(qkv_bias=True, default_rope_theta=1000000),
    "qwen3": Style(qk_norm=True, default_rope_theta=1000000),
    "gemma3_text": Style(qk_norm=True, gemma=True),
}


def style_of(config) -> Style:
    try:
        return STYLES[config.model_type]
    except KeyError:
        raise ValueError(f"selfprune serves pruned {', '.join(STYLES)} models in vLLM, "
                         f"not '{config.model_type}'") from None


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class RemovedBlock(nn.Module):
    """An attention or MLP block with every head or channel removed: a constant output (zero or
    the compensation bias), with no weights, no KV cache and nothing to split over ranks."""

    def __init__(self, hidden_size: int, bias: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size), requires_grad=False) if bias else None

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)  # a new tensor: vLLM's fused norms add into it in place
        return out if self.bias is None else out.add_(self.bias)


class PrunedAttention(nn.Module):
    def __init__(self, config, style: Style, spec: dict, layer_idx: int, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        hidden = config.hidden_size
        heads, kv_heads = int(spec["num_heads"]), int(spec["num_kv_heads"])
        self.head_dim = head_dim = head_dim_of(config)
        self.num_heads = heads // tp
        self.num_kv_heads = max(1, kv_heads // tp)  # fewer KV heads than ranks: replicated
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        quant = vllm_config.quant_config
        attention_bias = bool(getattr(config, "attention_bias", False))
        qkv_bias = attention_bias if style.qkv_bias is None else style.qkv_bias
        self.qkv_proj = QKVParallelLinear(hidden, head_dim, heads, kv_heads, bias=qkv_bias,
                                          quant_config=quant, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(heads * head_dim, hidden, bias=bool(spec.get("o_bias", attention_bias)),
                                        quant_config=quant, prefix=f"{prefix}.o_proj")
        self.qk_norm = style.qk_norm
        if style.qk_norm:
            self.q_norm = style.norm(head_dim, eps=config.rms_norm_eps)
            self.k_norm = style.norm(head_dim, eps=config.rms_norm_eps)

        layer_types = getattr(config, "layer_types", None)
        layer_type = layer_types[layer_idx] if layer_types else None
        rope = config.rope_parameters
        if rope and layer_type in rope:  # Gemma 3: one RoPE per layer type
            rope = rope[layer_type]
        self.rotary_emb = get_rope(head_dim, max_position=config.max_position_embeddings,
                                   rope_parameters=rope, is_neox_style=True)
        scale = (getattr(config, "query_pre_attn_scalar", None) or head_dim) ** -0.5
        sliding_window = config.sliding_window if layer_type == "sliding_attention" else None
        self.attn = Attention(self.num_heads, head_dim, scale, num_kv_heads=self.num_kv_heads,
                              cache_config=vllm_config.cache_config, quant_config=quant,
                              per_layer_sliding_window=sliding_window, prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            q = self.q_norm(q.unflatten(-1, (self.num_heads, self.head_dim))).flatten(-2)
            k = self.k_norm(k.unflatten(-1, (self.num_kv_heads, self.head_dim))).flatten(-2)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(self.attn(q, k, v))
        return out


class PrunedMLP(nn.Module):
    def __init__(self, config, spec: dict, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        width, hidden = int(spec["intermediate_size"]), config.hidden_size
        mlp_bias = bool(getattr(config, "mlp_bias", False))
        quant = vllm_config.quant_config
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [width] * 2, bias=mlp_bias, quant_config=quant,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(width, hidden, bias=bool(spec.get("down_bias", mlp_bias)),
                                           quant_config=quant, prefix=f"{prefix}.down_proj")
        self.act_fn = get_act_and_mul_fn(getattr(config, "hidden_activation", None) or config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.gate_up_proj(x)
        x, _ = self.down_proj(self.act_fn(x))
        return x


class PrunedDecoderLayer(nn.Module):
    """One decoder layer at the sizes its pruning record gives (``layer_type`` of vLLM's Llama model)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        style = style_of(config)
        idx = extract_layer_index(prefix)
        spec = config.selfprune["layers"][idx]
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.attn_removed = int(spec["num_heads"]) == 0
        self.mlp_removed = int(spec["intermediate_size"]) == 0
        self.self_attn = (RemovedBlock(hidden, bool(spec.get("o_bias"))) if self.attn_removed
                          else PrunedAttention(config, style, spec, idx, vllm_config, f"{prefix}.self_attn"))
        self.mlp = (RemovedBlock(hidden, bool(spec.get("down_bias"))) if self.mlp_removed
                    else PrunedMLP(config, spec, vllm_config, f"{prefix}.mlp"))
        # The norms in front of a removed block are kept (the checkpoint holds them) but not run.
        self.input_layernorm = style.norm(hidden, eps=eps)
        self.post_attention_layernorm = style.norm(hidden, eps=eps)
        self.sandwich = style.gemma
        if self.sandwich:
            self.pre_feedforward_layernorm = style.norm(hidden, eps=eps)
            self.post_feedforward_layernorm = style.norm(hidden, eps=eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        # ``residual`` carries the stream; ``hidden_states`` the last block's output, not yet added.
        if self.attn_removed:
            residual = hidden_states if residual is None else hidden_states + residual
        elif residual is None:
            residual, hidden_states = hidden_states, self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states)
        # Gemma 3 normalises each block's output before adding it; its MLP input norm is a second norm.
        mlp_norm = self.post_attention_layernorm
        if self.sandwich:
            hidden_states = self.post_attention_layernorm(hidden_states)
            mlp_norm = self.pre_feedforward_layernorm
        if self.mlp_removed:
            residual = hidden_states + residual
        else:
            hidden_states, residual = mlp_norm(hidden_states, residual)
        hidden_states = self.mlp(hidden_states)
        if self.sandwich:
            hidden_states = self.post_feedforward_layernorm(hidden_states)
        return hidden_states, residual


@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "intermediate_tensors": 0,
                                         "inputs_embeds": 0})
class SelfPrunedModel(LlamaModel):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=PrunedDecoderLayer)
        config = self.config
        gemma = style_of(config).gemma
        # A buffer, so it takes the model's dtype, as in vLLM's Gemma 3.
        self.register_buffer("embed_scale", torch.tensor(config.hidden_size ** 0.5) if gemma else None,
                             persistent=False)
        if gemma and get_pp_group().is_last_rank:
            self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.embed_tokens(input_ids)
        return embeds if self.embed_scale is None else embeds * self.embed_scale


class SelfPrunedForCausalLM(LlamaForCausalLM):
    """The model vLLM builds for every ``SelfPruned<Base>`` architecture."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        config = vllm_config.model_config.hf_config
        style = style_of(config)
        error = tensor_parallel_error(config.selfprune["layers"], get_tensor_model_parallel_world_size())
        if error:
            raise ValueError(error)
        if style.default_rope_theta is not None:
            set_default_rope_theta(config, default_theta=style.default_rope_theta)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        soft_cap = getattr(config, "final_logit_softcapping", None)
        if soft_cap and get_pp_group().is_last_rank:
            self.logits_processor = LogitsProcessor(config.vocab_size, soft_cap=soft_cap)

    def _init_model(self, vllm_config: VllmConfig, prefix: str = "", layer_type=None):
        # vLLM's Llama passes its own decoder layer type here: the pruned model has its own.
        return SelfPrunedModel(vllm_config=vllm_config, prefix=prefix)
