"""Importance of every attention head and MLP channel, from one calibration pass.

One forward pass of the dense model over the calibration blocks, with hooks that accumulate, per
input channel of the projections, the sum and the sum of squares of the activations. From those:

- ``wanda-sp``: |W| times the input activation norm (Wanda, applied to structures as in FLAP's
  Wanda-sp baseline): a channel's score sums |W_ij| * ||X_j|| over the output projection's rows;
  a head sums its head_dim channels of ``o_proj``.
- ``flap``: the fluctuation metric of FLAP: the sample variance of input channel j times
  ||W_:,j||^2; removed channels are compensated by adding W_:,j * mean(X_j) to the bias.
- ``magnitude``: the L2 norm of every weight that belongs to the unit (q rows and o columns of a
  head; gate and up rows and the down column of a channel); needs no activations.

The per-channel means are kept for FLAP's bias compensation, and a per-layer outlier ratio
(share of Wanda scores above 5x their layer mean, as OWL defines it) for OWL-style allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from selfprune.errors import SelfpruneError
from selfprune.models.adapter import ModelAdapter

METRICS = ("wanda-sp", "flap", "magnitude")
OWL_OUTLIER_FACTOR = 5.0


@dataclass
class ImportanceScores:
    """Scores of one calibration pass; higher means more important."""

    metric: str
    head_scores: list[torch.Tensor]  # per layer: (num_heads,)
    channel_scores: list[torch.Tensor]  # per layer: (intermediate_size,)
    attn_input_mean: list[torch.Tensor]  # per layer: mean input of o_proj, (num_heads * head_dim,)
    mlp_input_mean: list[torch.Tensor]  # per layer: mean input of down_proj, (intermediate_size,)
    outlier_ratio: torch.Tensor  # (num_layers,)
    calib_tokens: int


class _Stats:
    """Per-channel count, mean, centred sum of squares (M2) and sum of squares of a module's input.

    Each batch is reduced in the activations' precision around its own mean, then merged in float64
    (Chan et al.'s parallel update), so the variance does not cancel catastrophically for channels
    whose mean is large next to their spread, and the hook costs little next to the forward pass.
    """

    def __init__(self):
        self.count = 0
        self._mean = self.m2 = self.sumsq = None

    def __call__(self, module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        n_b = x.shape[0]
        mean_b = x.mean(0)
        m2_b = (x - mean_b).pow(2).sum(0).double()
        sumsq_b = x.pow(2).sum(0).double()
        mean_b = mean_b.double()
        if self._mean is None:
            self.count, self._mean, self.m2, self.sumsq = n_b, mean_b, m2_b, sumsq_b
            return
        n = self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta.pow(2) * (self.count * n_b / n)
        self.sumsq = self.sumsq + sumsq_b
        self.count = n

    def mean(self) -> torch.Tensor:
        return self._mean

    def norm(self) -> torch.Tensor:
        return self.sumsq.sqrt()

    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.count - 1, 1)


@torch.no_grad()
def collect_activation_stats(adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True):
    """Run the calibration blocks through the model and return per-layer input statistics."""
    names = ("q_proj", "o_proj", "gate_proj", "down_proj")
    stats = [{n: _Stats() for n in names} for _ in range(adapter.num_layers)]
    handles = []
    for i in range(adapter.num_layers):
        attn, mlp = adapter.attention(i), adapter.mlp(i)
        for name in names:
            owner = attn if name in ("q_proj", "o_proj") else mlp
            module = getattr(owner, name, None)
            if module is None:
                raise SelfpruneError(f"layer {i} has no {name}: importance needs an unpruned (dense) model")
            handles.append(module.register_forward_pre_hook(stats[i][name]))
    device = next(adapter.model.parameters()).device
    try:
        for start in tqdm(range(0, len(blocks), batch_size), desc="calibration", disable=not progress, leave=False):
            adapter.model(blocks[start : start + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


def _per_head(channel_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    return channel_scores.reshape(-1, head_dim).sum(1)


@torch.no_grad()
def compute_importance(
    adapter: ModelAdapter,
    blocks: torch.Tensor | None,
    metric: str = "wanda-sp",
    batch_size: int = 8,
    progress: bool = True,
) -> ImportanceScores:
    """Score every head and channel of ``adapter``'s dense model on the calibration ``blocks``."""
    if metric not in METRICS:
        raise SelfpruneError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    if blocks is None or len(blocks) == 0:
        raise SelfpruneError("importance needs calibration blocks (at least one sequence)")
    stats = collect_activation_stats(adapter, blocks, batch_size=batch_size, progress=progress)
    hd = adapter.head_dim
    heads, channels, attn_means, mlp_means, outliers = [], [], [], [], []
    for i in range(adapter.num_layers):
        attn, mlp, s = adapter.attention(i), adapter.mlp(i), stats[i]
        w_o = attn.o_proj.weight.double()
        w_down = mlp.down_proj.weight.double()
        if metric == "wanda-sp":
            head_ch = (w_o.abs() * s["o_proj"].norm()).sum(0)
            chan = (w_down.abs() * s["down_proj"].norm()).sum(0)
        elif metric == "flap":
            head_ch = s["o_proj"].variance() * w_o.pow(2).sum(0)
            chan = s["down_proj"].variance() * w_down.pow(2).sum(0)
        else:  # magnitude
            q_rows = attn.q_proj.weight.double().pow(2).sum(1)
            head_ch = (q_rows + w_o.pow(2).sum(0)).sqrt()
            chan = (
                mlp.gate_proj.weight.double().pow(2).sum(1).sqrt()
                + mlp.up_proj.weight.double().pow(2).sum(1).sqrt()
                + w_down.pow(2).sum(0).sqrt()
            )
        heads.append(_per_head(head_ch, hd).float().cpu())
        channels.append(chan.float().cpu())
        attn_means.append(s["o_proj"].mean().float())
        mlp_means.append(s["down_proj"].mean().float())
        outliers.append(_outlier_ratio(attn, mlp, s))
    return ImportanceScores(
        metric=metric,
        head_scores=heads,
        channel_scores=channels,
        attn_input_mean=attn_means,
        mlp_input_mean=mlp_means,
        outlier_ratio=torch.tensor(outliers),
        calib_tokens=int(blocks.numel()),
    )


def _outlier_ratio(attn, mlp, s) -> float:
    """OWL's layerwise outlier ratio: share of Wanda scores above 5x the layer's mean score."""
    pairs = [
        (attn.q_proj, s["q_proj"]), (attn.k_proj, s["q_proj"]), (attn.v_proj, s["q_proj"]),
        (attn.o_proj, s["o_proj"]), (mlp.gate_proj, s["gate_proj"]), (mlp.up_proj, s["gate_proj"]),
        (mlp.down_proj, s["down_proj"]),
    ]
    scores = [(lin.weight.abs() * st.norm().float()).flatten() for lin, st in pairs]
    flat = torch.cat(scores)
    return float((flat > OWL_OUTLIER_FACTOR * flat.mean()).float().mean())
