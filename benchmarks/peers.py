"""Published structured-pruning methods, as per-layer decisions that selfprune's pruner then applies.

Each function takes the dense model (through its adapter) and calibration blocks and returns what
the method decides; ``bench_peers.py`` prunes with it and evaluates every method alike. Written
from the papers (and read against their code), not copied:

- **FLAP** (An et al., AAAI 2024; its default "AL-AM" structure): the fluctuation of every
  attention-output and MLP channel (input variance times the squared weight column; squared once
  more for attention), standardised within each layer and module, averaged per KV group for
  attention, then one global threshold over all groups and channels, each weighted by its
  parameter count, so that the requested share of parameters goes. Bias compensation as in FLAP.
- **ShortGPT** (Men et al., 2024): the block influence of every decoder layer, 1 - mean cosine
  similarity of its input and output hidden states on the calibration tokens; the layers of lowest
  influence go whole.
- **SLEB** (Song et al., ICML 2024): layers removed one at a time, each time the one whose removal
  gives the lowest perplexity on the calibration blocks.

Whole layers are removed by a rate of 1.0 for both of a layer's blocks (the residual stream passes
through), which is what removing the block does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from selfprune.eval.perplexity import perplexity
from selfprune.pruning.importance import ImportanceScores, collect_activation_stats
from selfprune.pruning.metrics import METRICS


def _standardized(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()


@torch.no_grad()
def flap_allocation(adapter, blocks: torch.Tensor, ratio: float, progress: bool = False):
    """FLAP's adaptive structure at ``ratio`` of the attention+MLP parameters.

    Returns (attn_rates, mlp_rates, scores): rates that keep exactly the KV groups and channels
    above FLAP's global threshold, and scores that rank them as FLAP does (pass both to
    ``prune_model`` with ``attn_granularity="group"`` and bias compensation)."""
    stats = collect_activation_stats(adapter, blocks, progress=progress)
    fluctuation = METRICS["flap"]
    geo = adapter.geometry()
    kv, g, hd = adapter.num_kv_heads, adapter.heads_per_group, adapter.head_dim
    group_cost = geo.attn_params(1, g) - geo.attn_params(0, 0)  # one KV group with its query heads
    channel_cost = 3 * adapter.hidden_size
    groups, channels, attn_means, mlp_means = [], [], [], []
    for i in range(adapter.num_layers):
        attn, mlp, s = adapter.attention(i), adapter.mlp(i), stats[i]
        w = lambda block, role: adapter.projection(block, role).weight.double()
        a = fluctuation.attention(w(attn, "o"), w(attn, "q"), s).pow(2)  # FLAP squares the attention metric
        groups.append(_standardized(a).reshape(kv, g * hd).mean(1).float().cpu())
        channels.append(_standardized(fluctuation.mlp(w(mlp, "gate"), w(mlp, "up"), w(mlp, "down"), s)).float().cpu())
        attn_means.append(s["o"].mean().float())
        mlp_means.append(s["down"].mean().float())
    score = torch.cat([torch.cat(groups), torch.cat(channels)])
    cost = torch.cat([torch.full((kv * adapter.num_layers,), float(group_cost)),
                      torch.full((adapter.intermediate_size * adapter.num_layers,), float(channel_cost))])
    order = score.argsort(descending=True, stable=True)
    kept_cost = cost[order].cumsum(0)
    n_keep = int((kept_cost - (1 - ratio) * cost.sum()).abs().argmin()) + 1  # the best-scoring units up to the budget
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep[order[:n_keep]] = True
    n_groups = kv * adapter.num_layers
    keep_groups = keep[:n_groups].reshape(adapter.num_layers, kv)
    keep_channels = keep[n_groups:].reshape(adapter.num_layers, adapter.intermediate_size)
    attn_rates = [1 - int(k.sum()) / kv for k in keep_groups]
    mlp_rates = [1 - int(k.sum()) / adapter.intermediate_size for k in keep_channels]
    # The planner keeps the best-scoring groups and channels of each layer: FLAP's own choice.
    head_scores = [s.repeat_interleave(g) for s in groups]
    scores = ImportanceScores(metric="flap", head_scores=head_scores, channel_scores=channels,
                              attn_input_mean=attn_means, mlp_input_mean=mlp_means,
                              outlier_ratio=torch.zeros(adapter.num_layers), calib_tokens=int(blocks.numel()))
    return attn_rates, mlp_rates, scores


def uniform_rates(adapter, ratio: float) -> tuple[list[float], list[float]]:
    """The same rates in every layer that remove ``ratio`` of its attention+MLP parameters: attention
    at the realisable level nearest ``ratio`` (heads are coarse), the MLP making up the difference."""
    from selfprune.pruning.plan import attention_levels

    geo = adapter.geometry()
    attn_dense = geo.attn_params(adapter.num_kv_heads, adapter.num_heads)
    mlp_dense = geo.mlp_params(adapter.intermediate_size)
    attn = min(attention_levels(adapter), key=lambda level: abs(level - ratio))
    mlp = (ratio * (attn_dense + mlp_dense) - attn * attn_dense) / mlp_dense
    return [attn] * adapter.num_layers, [min(1.0, max(0.0, mlp))] * adapter.num_layers


def layers_to_remove(num_layers: int, ratio: float) -> int:
    """Whole layers that make up ``ratio`` of the attention+MLP parameters (all layers alike)."""
    return min(num_layers - 1, max(0, round(ratio * num_layers)))


@torch.no_grad()
def block_influence(adapter, blocks: torch.Tensor, batch_size: int = 8) -> list[float]:
    """ShortGPT's block influence of every layer: 1 - mean cosine(input, output) over all tokens."""
    sums = [0.0] * adapter.num_layers
    count = 0
    handles = []

    def hook(i):
        def record(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            sums[i] += float(torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).sum())
        return record

    for i, layer in enumerate(adapter.layers):
        handles.append(layer.register_forward_hook(hook(i), with_kwargs=True))
    try:
        device = next(adapter.model.parameters()).device
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size].to(device)
            adapter.model(input_ids=batch, use_cache=False)
            count += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return [1 - s / count for s in sums]


def shortgpt_layers(adapter, blocks: torch.Tensor, ratio: float) -> tuple[list[int], list[float]]:
    """The layers ShortGPT removes at ``ratio`` (lowest block influence first), and every influence."""
    influence = block_influence(adapter, blocks)
    n = layers_to_remove(adapter.num_layers, ratio)
    return sorted(sorted(range(len(influence)), key=influence.__getitem__)[:n]), influence


class _Skipped(nn.Module):
    """A decoder layer taken out: its input goes on unchanged."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        if hasattr(layer, "attention_type"):  # the model picks each layer's mask by it (sliding, full)
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _calibration_ppl(model, blocks: torch.Tensor) -> float:
    return perplexity(model, None, blocks.reshape(-1), seqlen=blocks.shape[1]).ppl


def sleb_layers(adapter, blocks: torch.Tensor, ratio: float, progress=None,
                already: tuple[int, ...] = ()) -> tuple[list[int], list[float]]:
    """The layers SLEB removes at ``ratio``, greedily, and the calibration perplexity after each removal.

    ``already``: layers an earlier run of the same greedy (same blocks, a smaller ratio) removed; the search goes on
    from there, as its first steps would pick them again, and the trace holds only the new steps.
    """
    layers = adapter.layers
    removed: dict[int, nn.Module] = {}  # skipped while later candidates are scored, put back at the end
    trace: list[float] = []
    try:
        for j in already:
            removed[j], layers[j] = layers[j], _Skipped(layers[j])
        for _ in range(layers_to_remove(adapter.num_layers, ratio) - len(already)):
            best, best_ppl = None, math.inf
            for j in range(adapter.num_layers):
                if j in removed:
                    continue
                original, layers[j] = layers[j], _Skipped(layers[j])
                try:
                    ppl = _calibration_ppl(adapter.model, blocks)
                finally:
                    layers[j] = original
                if ppl < best_ppl:
                    best, best_ppl = j, ppl
            removed[best], layers[best] = layers[best], _Skipped(layers[best])
            trace.append(best_ppl)
            if progress:
                progress(f"SLEB removed layer {best} (calibration perplexity {best_ppl:.2f})")
    finally:
        for j, layer in removed.items():
            layers[j] = layer
    return list(removed), trace  # in the order removed
