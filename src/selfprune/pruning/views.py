"""Score once, slice many: the model pruned at any per-layer rates, as views of the dense weights.

A search scores hundreds of candidates on one dense model. ``PrunedViews`` decides everything a
rate can decide once per layer, up front (each attention layout's kept heads and their weight
rows as index tensors on the model's device, the compensation biases, the blocks of removed
sub-layers), so that a candidate only looks its layers up and swaps them in:

- MLP channels ordered by importance (``order_by_importance``) are kept as a prefix, served as
  views of the dense weights: no copy;
- attention keeps the best heads of the best KV groups; with groups and heads ordered too, those
  are mostly consecutive rows (a view: whole groups, or a single group; k and v whenever the kept
  groups are); other layouts take one ``index_select`` per projection, indices on the device;
- no host sync, no tensor built from a Python list, no module initialised per candidate.

The result equals ``apply_plan`` of the same rates (``plan``) up to float rounding of the MLP
compensation bias, which sums the same terms through a view.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from selfprune.errors import SelfpruneError
from selfprune.models.adapter import ModelAdapter
from selfprune.pruning.apply import (
    check_dense,
    head_rows,
    pruned_attention,
    pruned_mlp,
    shallow_copy,
)
from selfprune.pruning.importance import ImportanceScores
from selfprune.pruning.plan import (
    AttentionChoices,
    LayerPlan,
    PruningPlan,
    make_plan,
    mlp_width,
    validate_rates,
)

MLP_BIAS_CACHE = 64  # compensation biases kept per layer, for the most recent MLP widths


def _linear_slot(template: nn.Linear) -> nn.Linear:
    """An empty Linear (no storage, no initialisation) whose weight and bias are set per candidate."""
    return torch.nn.utils.skip_init(nn.Linear, 1, 1, bias=False, device="meta", dtype=template.weight.dtype)


def _fill(slot: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    slot.weight = nn.Parameter(weight, requires_grad=False)
    slot.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
    slot.out_features, slot.in_features = weight.shape
    return slot


def _is_descending(scores: torch.Tensor) -> bool:
    return bool((scores[:-1] >= scores[1:]).all()) if scores.numel() > 1 else True


def _plus(bias: torch.Tensor | None, extra: torch.Tensor | None) -> torch.Tensor | None:
    if extra is None:
        return bias
    return extra if bias is None else bias + extra


def _selector(head_ids: list[int], head_dim: int, device) -> slice | torch.Tensor:
    """The rows of these heads: a slice when the heads are consecutive, else an index tensor."""
    if head_ids == list(range(head_ids[0], head_ids[0] + len(head_ids))):
        return slice(head_ids[0] * head_dim, (head_ids[0] + len(head_ids)) * head_dim)
    return head_rows(head_ids, head_dim, device)


def _select(t: torch.Tensor, dim: int, sel: slice | torch.Tensor) -> torch.Tensor:
    if isinstance(sel, slice):
        return t.narrow(dim, sel.start, sel.stop - sel.start)  # a view
    return t.index_select(dim, sel)


class _LayerViews:
    """One decoder layer's pruned blocks for any rate: the dense blocks, slot modules refilled per
    candidate, and what every layout and width needs, computed on first use and kept."""

    def __init__(self, adapter: ModelAdapter, idx: int, scores: ImportanceScores, granularity: str,
                 multiple: int, compensate: bool):
        self.adapter, self.idx, self.multiple = adapter, idx, multiple
        self.attn, self.mlp = adapter.attention(idx), adapter.mlp(idx)
        self.proj = {role: adapter.projection(self.attn, role) for role in ("q", "k", "v", "o")}
        self.proj.update({role: adapter.projection(self.mlp, role) for role in ("gate", "up", "down")})
        self.device = self.proj["o"].weight.device
        self.choices = AttentionChoices(scores.head_scores[idx], adapter, granularity)
        self.attn_mean = scores.attn_input_mean[idx].to(self.device) if compensate else None
        self.mlp_mean = scores.mlp_input_mean[idx].to(self.device) if compensate else None
        self.channel_scores = scores.channel_scores[idx]
        self.width = adapter.intermediate_size
        self.prefix = _is_descending(self.channel_scores)  # ordered channels: kept ones are a prefix
        self._layouts: dict[int, tuple] = {}
        self._widths: dict[int, tuple] = {}
        self._slots: dict[str, nn.Linear] = {}  # per projection role: the Linear refilled per candidate
        self._attn_slot = self._slot(self.attn, ("q", "k", "v", "o"))
        self._mlp_slot = self._slot(self.mlp, ("gate", "up", "down"))

    def _slot(self, block: nn.Module, roles) -> nn.Module:
        slot = shallow_copy(block)
        for role in roles:
            self._slots[role] = _linear_slot(self.proj[role])
            self.adapter.set_projection(slot, role, self._slots[role])
        return slot

    # ---- attention ---------------------------------------------------------------------------
    def attention(self, rate: float) -> nn.Module:
        i = self.choices.choose(rate)
        k, m = self.choices.layouts[i]
        if k == self.adapter.num_kv_heads and m == self.adapter.heads_per_group:
            return self.attn  # nothing removed (a zero compensation bias would change nothing)
        if i not in self._layouts:
            self._layouts[i] = self._layout(i)
        entry = self._layouts[i]
        if isinstance(entry, nn.Module):
            return entry  # the whole attention removed
        q_sel, kv_sel, o_bias = entry
        slot = self._attn_slot
        for role, sel in (("q", q_sel), ("k", kv_sel), ("v", kv_sel)):
            lin = self.proj[role]
            if sel is None:  # every KV head kept: the dense projection itself
                self.adapter.set_projection(slot, role, lin)
                continue
            bias = _select(lin.bias, 0, sel) if lin.bias is not None else None
            self.adapter.set_projection(slot, role, self._slots[role])
            _fill(self._slots[role], _select(lin.weight, 0, sel), bias)
        _fill(self._slots["o"], _select(self.proj["o"].weight, 1, q_sel), o_bias)
        slot.num_key_value_groups = m  # query heads per kept KV head
        return slot

    def _layout(self, i: int):
        """How layout ``i`` selects weight rows: a slice where its heads are consecutive (a view),
        else indices on the device (a copy); None for k and v when every KV head stays."""
        heads, kv_heads = self.choices.heads[i], self.choices.groups[i]
        if not heads:
            return pruned_attention(self.adapter, self.idx, self.attn, LayerPlan([], [], []), self.attn_mean)
        hd = self.adapter.head_dim
        q_rows = head_rows(heads, hd, self.device)
        o = self.proj["o"]
        extra = None
        if self.attn_mean is not None:
            removed = torch.ones(o.in_features, dtype=torch.bool, device=self.device)
            removed[q_rows] = False
            extra = o.weight[:, removed] @ self.attn_mean.to(o.weight)[removed]
        kv_sel = None if len(kv_heads) == self.adapter.num_kv_heads else _selector(kv_heads, hd, self.device)
        return _selector(heads, hd, self.device), kv_sel, _plus(o.bias, extra)


    # ---- MLP ---------------------------------------------------------------------------------
    def mlp_block(self, rate: float) -> nn.Module:
        n = mlp_width(rate, self.width, self.multiple)
        if n == self.width:
            return self.mlp
        if n not in self._widths:
            if len(self._widths) >= MLP_BIAS_CACHE:
                self._widths.pop(next(iter(self._widths)))  # the oldest width
            self._widths[n] = self._width(n)
        entry = self._widths[n]
        if isinstance(entry, nn.Module):
            return entry  # the whole MLP removed
        cols, down_bias = entry
        gate, up, down = self.proj["gate"], self.proj["up"], self.proj["down"]
        slot = self._mlp_slot
        if cols is None:  # a prefix: views of the dense weights
            for role, lin in (("gate", gate), ("up", up)):
                bias = lin.bias[:n] if lin.bias is not None else None
                _fill(self.adapter.projection(slot, role), lin.weight[:n], bias)
            _fill(self.adapter.projection(slot, "down"), down.weight[:, :n], down_bias)
        else:
            for role, lin in (("gate", gate), ("up", up)):
                bias = lin.bias.index_select(0, cols) if lin.bias is not None else None
                _fill(self.adapter.projection(slot, role), lin.weight.index_select(0, cols), bias)
            _fill(self.adapter.projection(slot, "down"), down.weight.index_select(1, cols), down_bias)
        if hasattr(slot, "intermediate_size"):
            slot.intermediate_size = n
        return slot

    def _width(self, n: int):
        if n == 0:
            return pruned_mlp(self.adapter, self.mlp, LayerPlan([], [], []), self.mlp_mean)
        down = self.proj["down"]
        w = down.weight
        if self.prefix:
            cols = None
            extra = w[:, n:] @ self.mlp_mean.to(w)[n:] if self.mlp_mean is not None else None
        else:
            kept = self.channel_scores.argsort(descending=True, stable=True)[:n].sort().values
            cols = kept.to(self.device)
            extra = None
            if self.mlp_mean is not None:
                removed = torch.ones(self.width, dtype=torch.bool, device=self.device)
                removed[cols] = False
                extra = w[:, removed] @ self.mlp_mean.to(w)[removed]
        return cols, _plus(down.bias, extra)


class PrunedViews:
    """``with views.pruned(attn_rates, mlp_rates): model(...)`` runs the dense model as if pruned
    at those rates; the dense blocks are back afterwards.

    Build it after ``order_by_importance`` (MLPs are then views, and attention mostly too); it holds
    references to the dense blocks, so the model must not be restructured while it lives.
    """

    def __init__(self, adapter: ModelAdapter, scores: ImportanceScores, attn_granularity: str = "head",
                 mlp_multiple: int = 1, bias_compensation: bool = False):
        check_dense(adapter)
        if mlp_multiple < 1:
            raise SelfpruneError(f"mlp_multiple must be a positive integer, got {mlp_multiple}")
        self.adapter, self.scores = adapter, scores
        self.attn_granularity, self.mlp_multiple = attn_granularity, mlp_multiple
        self.bias_compensation = bias_compensation
        with torch.no_grad():
            self.layers = [_LayerViews(adapter, i, scores, attn_granularity, mlp_multiple, bias_compensation)
                           for i in range(adapter.num_layers)]
        self._active = False

    def plan(self, attn_rates, mlp_rates) -> PruningPlan:
        """The plan ``apply_plan`` takes to prune the model physically as a view at these rates shows it."""
        return make_plan(self.adapter, self.scores.head_scores, self.scores.channel_scores, attn_rates, mlp_rates,
                         self.attn_granularity, self.mlp_multiple)

    @contextmanager
    def pruned(self, attn_rates, mlp_rates):
        n = len(self.layers)
        attn_rates = validate_rates(attn_rates, n, "attention rates")
        mlp_rates = validate_rates(mlp_rates, n, "MLP rates")
        if self._active:
            raise SelfpruneError("one pruned view at a time: its blocks are reused by the next")
        self._active = True
        adapter = self.adapter
        try:
            with torch.no_grad():
                for i, lv in enumerate(self.layers):
                    adapter.set_attention(i, lv.attention(attn_rates[i]))
                    adapter.set_mlp(i, lv.mlp_block(mlp_rates[i]))
            yield adapter.model
        finally:
            for i, lv in enumerate(self.layers):
                adapter.set_attention(i, lv.attn)
                adapter.set_mlp(i, lv.mlp)
            self._active = False
