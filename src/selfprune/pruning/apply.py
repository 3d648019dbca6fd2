"""Physical removal of heads and channels: slice the weights into smaller ``nn.Linear`` modules.

``apply_plan`` prunes a model in place. ``pruned_view`` builds the same pruned blocks from the
dense weights, swaps them in for the duration of a ``with`` block and puts the dense blocks back:
the search scores a candidate this way, at the cost of slicing the weights (a memory copy) and
one forward pass of the smaller model; no model copy and no new calibration pass.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager

import torch
from torch import nn

from selfprune import __version__
from selfprune.errors import SelfpruneError
from selfprune.models.adapter import ModelAdapter
from selfprune.models.remote_code.modeling_selfprune import SkippedAttention, SkippedMLP
from selfprune.pruning.importance import ImportanceScores
from selfprune.pruning.plan import LayerPlan, PruningPlan


def head_rows(head_ids: list[int], head_dim: int, device) -> torch.Tensor:
    """The weight rows (or columns) of the given heads, head by head."""
    heads = torch.tensor(head_ids, dtype=torch.long).reshape(-1, 1)
    return (heads * head_dim + torch.arange(head_dim)).flatten().to(device)


def _sliced_linear(old: nn.Linear, rows=None, cols=None, extra_bias=None) -> nn.Linear:
    """A new Linear holding the selected rows/columns of ``old`` (fresh tensors, ``old`` untouched)."""
    w = old.weight.detach()
    w = w.index_select(0, rows) if rows is not None else w
    w = w.index_select(1, cols) if cols is not None else w
    if w is old.weight or w.data_ptr() == old.weight.data_ptr():
        w = w.clone()
    bias = old.bias.detach() if old.bias is not None else None
    if bias is not None:
        bias = bias.index_select(0, rows) if rows is not None else bias.clone()
    if extra_bias is not None:
        bias = extra_bias.to(w) if bias is None else bias + extra_bias.to(w)
    # skip_init: no random initialisation of weights that are replaced at once (it would cost
    # more than the forward pass a search candidate is scored with).
    new = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=bias is not None,
                                   device="meta", dtype=w.dtype)
    trainable = old.weight.requires_grad
    new.weight = nn.Parameter(w, requires_grad=trainable)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=trainable)
    return new


def shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing the old one's children, so replacing a child leaves the old intact."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    return new


def _removed(dense: int, kept: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(dense, dtype=torch.bool, device=kept.device)
    mask[kept] = False
    return mask


def _compensation(weight: torch.Tensor, mean: torch.Tensor, removed_mask: torch.Tensor) -> torch.Tensor:
    """FLAP's bias compensation: the expected contribution of the removed input channels."""
    return weight[:, removed_mask] @ mean.to(weight)[removed_mask]


def pruned_attention(adapter: ModelAdapter, idx: int, attn: nn.Module, lp: LayerPlan, mean=None) -> nn.Module:
    hd = adapter.head_dim
    o_proj = adapter.projection(attn, "o")
    device = o_proj.weight.device
    extra = None
    if mean is not None:
        removed = _removed(o_proj.in_features, head_rows(lp.heads, hd, device))
        extra = _compensation(o_proj.weight, mean, removed)
    if lp.num_heads == 0:
        bias = o_proj.bias
        if extra is not None:
            bias = extra if bias is None else bias + extra
        skipped = SkippedAttention(adapter.hidden_size, hd, idx, bias=bias is not None).to(o_proj.weight)
        if bias is not None:
            with torch.no_grad():
                skipped.bias.copy_(bias)
        return skipped
    q_rows = head_rows(lp.heads, hd, device)
    kv_rows = head_rows(lp.kv_heads, hd, device)
    new = shallow_copy(attn)
    for role, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
        adapter.set_projection(new, role, _sliced_linear(adapter.projection(attn, role), rows=rows))
    adapter.set_projection(new, "o", _sliced_linear(o_proj, cols=q_rows, extra_bias=extra))
    new.num_key_value_groups = lp.num_heads // lp.num_kv_heads
    return new


def _prefix_linear(old: nn.Linear, rows: int | None = None, cols: int | None = None, extra_bias=None) -> nn.Linear:
    """A Linear whose weight is a view of the first rows/columns of ``old``: no copy at all."""
    w = old.weight[:rows] if rows is not None else old.weight[:, :cols]
    bias = old.bias
    if bias is not None and rows is not None:
        bias = bias[:rows]
    if extra_bias is not None:
        bias = extra_bias.to(w) if bias is None else bias + extra_bias.to(w)
    new = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=bias is not None,
                                   device="meta", dtype=w.dtype)
    new.weight = nn.Parameter(w, requires_grad=False)
    new.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
    return new


def pruned_mlp(adapter: ModelAdapter, mlp: nn.Module, lp: LayerPlan, mean=None, views: bool = False) -> nn.Module:
    gate, up, down = (adapter.projection(mlp, role) for role in ("gate", "up", "down"))
    device = down.weight.device
    n = lp.intermediate_size
    # Kept channels 0..n-1 (see order_mlp_channels): serve views, and compensate from a view too.
    prefix = views and n > 0 and lp.channels[-1] == n - 1
    cols = torch.tensor(lp.channels, dtype=torch.long, device=device)
    extra = None
    if mean is not None:
        w = down.weight
        if prefix:
            extra = w[:, n:] @ mean.to(w)[n:]
        else:
            extra = _compensation(w, mean, _removed(down.in_features, cols))
    if n == 0:
        bias = down.bias
        if extra is not None:
            bias = extra if bias is None else bias + extra
        skipped = SkippedMLP(adapter.hidden_size, bias=bias is not None).to(down.weight)
        if bias is not None:
            with torch.no_grad():
                skipped.bias.copy_(bias)
        return skipped
    new = shallow_copy(mlp)
    if prefix:
        adapter.set_projection(new, "gate", _prefix_linear(gate, rows=n))
        adapter.set_projection(new, "up", _prefix_linear(up, rows=n))
        adapter.set_projection(new, "down", _prefix_linear(down, cols=n, extra_bias=extra))
    else:
        adapter.set_projection(new, "gate", _sliced_linear(gate, rows=cols))
        adapter.set_projection(new, "up", _sliced_linear(up, rows=cols))
        adapter.set_projection(new, "down", _sliced_linear(down, cols=cols, extra_bias=extra))
    if hasattr(new, "intermediate_size"):
        new.intermediate_size = n
    return new


def check_dense(adapter: ModelAdapter) -> None:
    if getattr(adapter.config, "selfprune", None):
        raise SelfpruneError("this model is already pruned; prune the dense model it came from instead")


def _swap_in(adapter: ModelAdapter, plan: PruningPlan, scores: ImportanceScores | None, bias_compensation: bool,
             views: bool = False):
    if len(plan.layers) != adapter.num_layers:
        raise SelfpruneError(f"the plan has {len(plan.layers)} layers, the model {adapter.num_layers}")
    if bias_compensation and scores is None:
        raise SelfpruneError("bias compensation needs the importance scores (their activation means)")
    originals = []
    for i, lp in enumerate(plan.layers):
        attn, mlp = adapter.attention(i), adapter.mlp(i)
        originals.append((attn, mlp))
        attn_mean = scores.attn_input_mean[i] if bias_compensation else None
        mlp_mean = scores.mlp_input_mean[i] if bias_compensation else None
        adapter.set_attention(i, pruned_attention(adapter, i, attn, lp, attn_mean))
        adapter.set_mlp(i, pruned_mlp(adapter, mlp, lp, mlp_mean, views=views))
    return originals


def _restore(adapter: ModelAdapter, originals) -> None:
    for i, (attn, mlp) in enumerate(originals):
        adapter.set_attention(i, attn)
        adapter.set_mlp(i, mlp)


@contextmanager
def pruned_view(adapter: ModelAdapter, plan: PruningPlan, scores: ImportanceScores | None = None,
                bias_compensation: bool = False):
    """Temporarily run ``adapter.model`` as if pruned by ``plan``; the dense model is restored after."""
    check_dense(adapter)
    originals = _swap_in(adapter, plan, scores, bias_compensation, views=True)
    try:
        yield adapter.model
    finally:
        _restore(adapter, originals)


@torch.no_grad()
def order_mlp_channels(adapter: ModelAdapter, scores: ImportanceScores) -> ImportanceScores:
    """Permute every MLP's channels, in place, by descending importance; return the scores to match.

    A function-preserving permutation (gate/up rows and down columns move together). Afterwards
    "keep the n best channels" is the prefix 0..n-1, which ``pruned_view`` serves as views of the
    dense weights: a search candidate's MLPs then cost no copy at all.
    """
    check_dense(adapter)
    channel_scores, mlp_means = [], []
    for i in range(adapter.num_layers):
        order = scores.channel_scores[i].argsort(descending=True, stable=True)
        mlp = adapter.mlp(i)
        down = adapter.projection(mlp, "down")
        idx = order.to(down.weight.device)
        for lin in (adapter.projection(mlp, "gate"), adapter.projection(mlp, "up")):
            lin.weight.copy_(lin.weight.index_select(0, idx))
            if lin.bias is not None:
                lin.bias.copy_(lin.bias.index_select(0, idx))
        down.weight.copy_(down.weight.index_select(1, idx))
        channel_scores.append(scores.channel_scores[i][order])
        mlp_means.append(scores.mlp_input_mean[i][order.to(scores.mlp_input_mean[i].device)])
    return dataclasses.replace(scores, channel_scores=channel_scores, mlp_input_mean=mlp_means)


@torch.no_grad()
def order_attention_heads(adapter: ModelAdapter, scores: ImportanceScores) -> ImportanceScores:
    """Permute every attention's KV groups by descending importance (the sum of their heads' scores)
    and the query heads within each group likewise, in place; return the scores to match.

    A function-preserving permutation (a group's k/v rows move with its query heads' q rows and
    o columns). Afterwards the best heads of the best groups, which a plan keeps, are mostly
    consecutive rows, which ``PrunedViews`` serves as views of the dense weights.
    """
    check_dense(adapter)
    kv, g, hd = adapter.num_kv_heads, adapter.heads_per_group, adapter.head_dim
    head_scores, attn_means = [], []
    for i in range(adapter.num_layers):
        by_group = scores.head_scores[i].reshape(kv, g)
        within = by_group.argsort(dim=1, descending=True, stable=True)
        groups = by_group.sum(1).argsort(descending=True, stable=True)
        heads = (groups[:, None] * g + within[groups]).flatten()  # new position -> dense head
        attn = adapter.attention(i)
        device = adapter.projection(attn, "o").weight.device
        q_rows, kv_rows = head_rows(heads.tolist(), hd, device), head_rows(groups.tolist(), hd, device)
        for role, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            lin = adapter.projection(attn, role)
            lin.weight.copy_(lin.weight.index_select(0, rows))
            if lin.bias is not None:
                lin.bias.copy_(lin.bias.index_select(0, rows))
        o = adapter.projection(attn, "o")
        o.weight.copy_(o.weight.index_select(1, q_rows))
        head_scores.append(scores.head_scores[i][heads])
        mean = scores.attn_input_mean[i]
        attn_means.append(mean[q_rows.to(mean.device)])
    return dataclasses.replace(scores, head_scores=head_scores, attn_input_mean=attn_means)


def order_by_importance(adapter: ModelAdapter, scores: ImportanceScores) -> ImportanceScores:
    """``order_mlp_channels`` and ``order_attention_heads``: what a search does before its first candidate."""
    return order_attention_heads(adapter, order_mlp_channels(adapter, scores))


def layer_specs(adapter: ModelAdapter) -> list[dict]:
    """Each layer's sizes and output biases, as recorded in a pruned checkpoint's config."""
    specs = []
    for i in range(adapter.num_layers):
        shape = adapter.layer_shape(i)
        attn, mlp = adapter.attention(i), adapter.mlp(i)
        o_bias = attn.bias if isinstance(attn, SkippedAttention) else adapter.projection(attn, "o").bias
        down_bias = mlp.bias if isinstance(mlp, SkippedMLP) else adapter.projection(mlp, "down").bias
        shape["o_bias"] = o_bias is not None
        shape["down_bias"] = down_bias is not None
        specs.append(shape)
    return specs


def apply_plan(adapter: ModelAdapter, plan: PruningPlan, scores: ImportanceScores | None = None,
               bias_compensation: bool = False) -> nn.Module:
    """Prune ``adapter.model`` in place and record the per-layer sizes in its config."""
    check_dense(adapter)
    _swap_in(adapter, plan, scores, bias_compensation)
    config = adapter.config
    config.selfprune = {
        "version": __version__,
        "base_model_type": config.model_type,
        "base_model": getattr(config, "_name_or_path", None) or None,  # where the dense model came from
        "layers": layer_specs(adapter),
        "attn_granularity": plan.attn_granularity,
        "mlp_multiple": plan.mlp_multiple,
        "metric": scores.metric if scores is not None else None,
        "bias_compensation": bias_compensation,
        "anatomy": adapter.family.anatomy(),  # where the modeling code finds blocks and projections
    }
    config.auto_map = {"AutoModelForCausalLM": f"modeling_selfprune.SelfPruned{adapter.family.causal_lm_class}"}
    return adapter.model
