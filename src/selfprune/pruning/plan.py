"""From per-layer rates to the heads and channels each layer keeps.

A rate is the fraction of a sub-block's parameters to remove (1.0 removes the sub-block).

MLP: the kept width is (1 - rate) * intermediate_size rounded to ``mlp_multiple`` channels; the
highest-scoring channels stay.

Attention (GQA-aware): a valid layout keeps ``k`` of the KV groups and the same number ``m`` of
query heads in each kept group, so every query head still has its key/value head and the layer
stays a standard grouped-query attention with ``k`` KV heads and ``m`` heads per group. With
``attn_granularity="head"`` (default) every (k, m) is allowed, which gives nearly per-head
resolution (SmolLM2, 9 heads in 3 groups: 8 distinct sizes); ``"group"`` keeps whole groups only
(m = all heads of a group). The layout whose parameter count is closest to the requested one is
chosen, ties broken by the importance it retains; within it the best groups and heads stay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from selfprune.errors import SelfpruneError
from selfprune.models.adapter import ModelAdapter
from selfprune.pruning.layouts import attention_layouts


@dataclass
class LayerPlan:
    heads: list[int]  # kept query heads (dense indices), grouped by kept KV group, in order
    kv_heads: list[int]  # kept KV heads (dense indices), ascending
    channels: list[int]  # kept MLP channels (dense indices), ascending

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def num_kv_heads(self) -> int:
        return len(self.kv_heads)

    @property
    def intermediate_size(self) -> int:
        return len(self.channels)


@dataclass
class PruningPlan:
    layers: list[LayerPlan]
    attn_rates: list[float]  # requested
    mlp_rates: list[float]  # requested
    attn_granularity: str = "head"
    mlp_multiple: int = 1


def attention_levels(adapter: ModelAdapter, granularity: str = "head") -> list[float]:
    """The attention rates the pruner can realise exactly, ascending (0.0 ... 1.0)."""
    geo = adapter.geometry()
    dense = geo.attn_params(adapter.num_kv_heads, adapter.num_heads)
    levels = {round(1 - geo.attn_params(k, k * m) / dense, 6) for k, m in attention_layouts(adapter, granularity)}
    return sorted(levels)


class AttentionChoices:
    """Every layout one layer's attention may take, with the heads each keeps, decided once from
    the layer's head scores: a rate then picks its layout by parameter count alone.

    For each layout (k KV groups, m heads per group) the best m heads of every group stay, and of
    the groups the k whose kept heads score highest. ``choose(rate)`` is the layout whose
    parameter count is closest to the requested one, ties broken by the importance it retains.
    """

    def __init__(self, scores: torch.Tensor, adapter: ModelAdapter, granularity: str = "head"):
        geo = adapter.geometry()
        kv, g = adapter.num_kv_heads, adapter.heads_per_group
        self.dense_params = geo.attn_params(kv, kv * g)
        by_group = scores.reshape(kv, g)
        order_in_group = by_group.argsort(dim=1, descending=True)
        prefix = torch.cumsum(by_group.gather(1, order_in_group), dim=1)  # value of keeping top-m per group
        self.layouts: list[tuple[int, int]] = attention_layouts(adapter, granularity)
        self.params: list[int] = []
        self.retained: list[float] = []
        self.heads: list[list[int]] = []  # kept query heads (dense indices), grouped by kept KV group
        self.groups: list[list[int]] = []  # kept KV heads, ascending
        for k, m in self.layouts:
            if k == 0:
                retained, groups = 0.0, []
            else:
                group_values = prefix[:, m - 1]
                groups = group_values.argsort(descending=True)[:k].sort().values.tolist()
                retained = float(group_values[groups].sum())
            self.params.append(geo.attn_params(k, k * m))
            self.retained.append(retained)
            self.groups.append(groups)
            self.heads.append([grp * g + int(j) for grp in groups for j in order_in_group[grp, :m].sort().values.tolist()])
        self._chosen: dict[float, int] = {}

    def choose(self, rate: float) -> int:
        """The index of the layout for ``rate``."""
        if rate not in self._chosen:
            target = (1 - rate) * self.dense_params
            keys = [(round(abs(p - target), 3), -r) for p, r in zip(self.params, self.retained)]
            self._chosen[rate] = min(range(len(keys)), key=keys.__getitem__)  # the first of equal keys
        return self._chosen[rate]


def _plan_attention(scores: torch.Tensor, adapter: ModelAdapter, rate: float, granularity: str):
    choices = AttentionChoices(scores, adapter, granularity)
    i = choices.choose(rate)
    return choices.heads[i], choices.groups[i]


def mlp_width(rate: float, width: int, multiple: int) -> int:
    """The MLP channels a layer keeps at ``rate``: (1 - rate) x width, rounded to ``multiple``."""
    keep = int(round((1 - rate) * width / multiple)) * multiple
    return max(0, min(width, keep))


def _plan_mlp(scores: torch.Tensor, rate: float, multiple: int) -> list[int]:
    keep = mlp_width(rate, scores.numel(), multiple)
    return scores.argsort(descending=True, stable=True)[:keep].sort().values.tolist()


def validate_rates(rates, num_layers: int, what: str) -> list[float]:
    values = [float(r) for r in rates]
    if len(values) != num_layers:
        raise SelfpruneError(f"{what}: got {len(values)} rates for a model with {num_layers} layers")
    for i, r in enumerate(values):
        if not (0.0 <= r <= 1.0) or math.isnan(r):
            raise SelfpruneError(f"{what}: rate {r} for layer {i} is outside [0, 1]")
    return values


def make_plan(
    adapter: ModelAdapter,
    head_scores: list[torch.Tensor],
    channel_scores: list[torch.Tensor],
    attn_rates,
    mlp_rates,
    attn_granularity: str = "head",
    mlp_multiple: int = 1,
) -> PruningPlan:
    """Decide, layer by layer, which heads and channels stay."""
    n = adapter.num_layers
    attn_rates = validate_rates(attn_rates, n, "attention rates")
    mlp_rates = validate_rates(mlp_rates, n, "MLP rates")
    if mlp_multiple < 1:
        raise SelfpruneError(f"mlp_multiple must be a positive integer, got {mlp_multiple}")
    layers = []
    for i in range(n):
        heads, kv_heads = _plan_attention(head_scores[i], adapter, attn_rates[i], attn_granularity)
        channels = _plan_mlp(channel_scores[i], mlp_rates[i], mlp_multiple)
        layers.append(LayerPlan(heads=heads, kv_heads=kv_heads, channels=channels))
    return PruningPlan(layers, attn_rates, mlp_rates, attn_granularity, mlp_multiple)


def prunable_params(adapter: ModelAdapter, plan: PruningPlan | None = None, bias_compensation: bool = False) -> int:
    """Parameters of all attention and MLP blocks of a dense model, or of ``plan`` applied to it."""
    geo = adapter.geometry()
    total = 0
    for i in range(adapter.num_layers):
        if plan is None:
            total += geo.attn_params(adapter.num_kv_heads, adapter.num_heads)
            total += geo.mlp_params(adapter.intermediate_size)
            continue
        lp = plan.layers[i]
        total += geo.attn_params(lp.num_kv_heads, lp.num_heads)
        total += geo.mlp_params(lp.intermediate_size)
        if bias_compensation:  # an added output bias, where the block had none
            total += (not geo.o_bias) * geo.hidden + (not geo.mlp_bias) * geo.hidden
    return total
