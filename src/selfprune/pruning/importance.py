"""Importance of every attention head and MLP channel, from one calibration pass.

One forward pass of the dense model over the calibration blocks, with hooks that accumulate, per
input channel of the projections, the mean, the variance and the sum of squares of the
activations. A metric (``selfprune.pruning.metrics``) turns those and the weights into scores;
a head's score sums its head_dim channels of the attention output projection.

Layer by layer (``layerwise``, as FLAP and Wanda do): the inputs of the first decoder layer are
captured once, then each layer in turn is streamed to the device (``LayerStream``: the next
layer's copy overlaps this one's compute, nothing is copied back) and run on the hidden states of
all calibration blocks, so a model that fits in host memory is scored on a device smaller than it. The statistics are merged in the same order, so the scores equal the full pass's.
It runs when a ``device`` is given that is not where the model sits; ``load_model`` leaves a
model that does not fit its device on the CPU and names that device for this pass.

The per-channel means are kept for FLAP's bias compensation, a per-layer outlier ratio
(share of Wanda scores above 5x their layer mean, as OWL defines it) for OWL-style allocation,
and each block's influence on the residual stream (ShortGPT's measure, per attention and MLP
block) for priors that remove whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from selfprune.errors import SelfpruneError
from selfprune.models.adapter import ModelAdapter
from selfprune.models.streaming import LayerStream, calibration_device
from selfprune.pruning.metrics import get_metric

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
    attn_influence: torch.Tensor | None = None  # (num_layers,): see BlockInfluence
    mlp_influence: torch.Tensor | None = None


class BlockInfluence:
    """How much each attention and MLP block turns the residual stream: 1 - cos(stream before the
    block, stream after it), averaged over calibration tokens. ShortGPT's block influence, taken per
    block instead of per layer; a block that barely turns the stream costs little to remove whole."""

    def __init__(self, num_layers: int):
        self.attn_sum, self.mlp_sum = [0.0] * num_layers, [0.0] * num_layers
        self.tokens = [0] * num_layers
        self._stream: list[torch.Tensor | None] = [None] * num_layers

    def register(self, adapter: ModelAdapter) -> list:
        handles = []
        for i, layer in enumerate(adapter.layers):
            handles.append(layer.register_forward_pre_hook(self._enter(i), with_kwargs=True))
            handles.append(adapter.residual_branch(i, "attn").register_forward_hook(self._add(i, self.attn_sum)))
            handles.append(adapter.residual_branch(i, "mlp").register_forward_hook(self._add(i, self.mlp_sum)))
        return handles

    def _enter(self, i):
        def hook(module, args, kwargs):
            self._stream[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def _add(self, i, sums):
        def hook(module, args, output):
            before = self._stream[i]
            if before is None:  # a layer's forward replaced while its inputs are captured
                return
            after = before + (output[0] if isinstance(output, tuple) else output).detach()
            cos = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1)
            # Summed where the activations are, read once in result(): no host sync per block and batch.
            sums[i] = sums[i] + (1 - cos).sum(dtype=torch.float64)
            if sums is self.attn_sum:
                self.tokens[i] += cos.numel()
                self._stream[i] = after
            else:
                self._stream[i] = None
        return hook

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = torch.tensor([max(t, 1) for t in self.tokens], dtype=torch.float64)
        attn, mlp = (torch.tensor([float(x) for x in sums], dtype=torch.float64) for sums in (self.attn_sum, self.mlp_sum))
        return (attn / n).float(), (mlp / n).float()


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

    def to(self, device) -> None:
        self._mean, self.m2, self.sumsq = (t.to(device) for t in (self._mean, self.m2, self.sumsq))

    def mean(self) -> torch.Tensor:
        return self._mean

    def norm(self) -> torch.Tensor:
        return self.sumsq.sqrt()

    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.count - 1, 1)


# The projections whose inputs are observed; the others share one of these inputs.
OBSERVED = ("q", "o", "gate", "down")
INPUT_OF = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}


@torch.no_grad()
def collect_activation_stats(adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True,
                             layerwise: bool = False, device: str | torch.device | None = None,
                             influence: BlockInfluence | None = None):
    """Run the calibration blocks through the model and return per-layer input statistics;
    ``layerwise``: one decoder layer at a time on ``device``; ``influence`` measured on the way."""
    stats = [{role: _Stats() for role in OBSERVED} for _ in range(adapter.num_layers)]
    handles = influence.register(adapter) if influence is not None else []
    for i in range(adapter.num_layers):
        for role in OBSERVED:
            block = adapter.attention(i) if role in ("q", "o") else adapter.mlp(i)
            module = adapter.projection(block, role)
            if module is None:
                raise SelfpruneError(f"layer {i} has no {role} projection: importance needs an unpruned (dense) model")
            handles.append(module.register_forward_pre_hook(stats[i][role]))
    try:
        if layerwise:
            _layerwise_pass(adapter, blocks, batch_size, torch.device(device), progress)
            home = next(adapter.model.parameters()).device
            for layer_stats in stats:  # next to the weights, where the metric reads them
                for s in layer_stats.values():
                    s.to(home)
        else:
            home = next(adapter.model.parameters()).device
            for start in tqdm(range(0, len(blocks), batch_size), desc="calibration", disable=not progress, leave=False):
                adapter.model(blocks[start : start + batch_size].to(home), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


class _Stop(Exception):
    """Raised after the last decoder layer's inputs are captured: nothing after it is needed."""


def _move_outside(model, inside: set[int], device: torch.device) -> list:
    """Move every parameter and buffer not in a decoder layer to ``device``; return how to undo it."""
    undo = []
    for module in model.modules():
        if id(module) in inside:
            continue
        for name, p in module._parameters.items():
            if p is not None and p.device != device:
                undo.append((p, None, p.data))
                p.data = p.data.to(device)
        for name, b in module._buffers.items():
            if b is not None and b.device != device:
                undo.append((module, name, b))
                module._buffers[name] = b.to(device)
    return undo


def _restore(undo: list) -> None:
    for owner, name, old in reversed(undo):
        if name is None:
            owner.data = old
        else:
            owner._buffers[name] = old


@torch.no_grad()
def _layerwise_pass(adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int, device: torch.device,
                    progress: bool) -> None:
    """The calibration pass one decoder layer at a time on ``device`` (the hooks see the same inputs)."""
    model, layers = adapter.model, list(adapter.layers)
    inside = {id(m) for layer in layers for m in layer.modules()}
    hidden: list[torch.Tensor] = []
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in layers]  # per layer, per batch: its other arguments

    def recorder(i):
        # Each layer's own arguments (masks, rotary embeddings) as the model builds them: they differ
        # per layer in families that mix sliding and full attention.
        def forward(*args, **kwargs):
            h = args[0] if args else kwargs.pop("hidden_states")
            calls[i].append((args[1:], kwargs))
            if i == 0:
                hidden.append(h)
            if i == len(layers) - 1:
                raise _Stop
            return h
        return forward

    undo = _move_outside(model, inside, device)
    try:
        for i, layer in enumerate(layers):
            layer.forward = recorder(i)
        try:
            for start in range(0, len(blocks), batch_size):
                try:
                    model(blocks[start : start + batch_size].to(device), use_cache=False)
                except _Stop:
                    pass
        finally:
            for layer in layers:
                del layer.forward  # back to the class's forward
        stream = LayerStream(layers, device)
        for i in tqdm(range(len(layers)), desc="calibration (by layer)", disable=not progress, leave=False):
            with stream.resident(i) as layer:
                for b, (args, kwargs) in enumerate(calls[i]):
                    out = layer(hidden[b], *args, **kwargs)
                    hidden[b] = out[0] if isinstance(out, tuple) else out
            calls[i] = []  # free this layer's arguments as we go
    finally:
        _restore(undo)


def _per_head(channel_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    return channel_scores.reshape(-1, head_dim).sum(1)


@torch.no_grad()
def compute_importance(
    adapter: ModelAdapter,
    blocks: torch.Tensor | None,
    metric: str = "wanda-sp",
    batch_size: int = 8,
    progress: bool = True,
    layerwise: bool | None = None,
    device: str | torch.device | None = None,
) -> ImportanceScores:
    """Score every head and channel of ``adapter``'s dense model on the calibration ``blocks``.

    ``device``: where to run the pass (default: where the model is, or the device ``load_model``
    named for a model too big for it); ``layerwise`` (default: when that is not where the model
    sits): one decoder layer at a time."""
    scorer = get_metric(metric)
    if blocks is None or len(blocks) == 0:
        raise SelfpruneError("importance needs calibration blocks (at least one sequence)")
    home = next(adapter.model.parameters()).device
    device = torch.device(device or calibration_device(adapter.model) or home)
    if layerwise is None:
        same = device.type == home.type and (device.index is None or device.index == home.index)
        layerwise = not same and not getattr(adapter.model, "hf_device_map", None)
    influence = BlockInfluence(adapter.num_layers)
    stats = collect_activation_stats(adapter, blocks, batch_size=batch_size, progress=progress,
                                     layerwise=layerwise, device=device, influence=influence)
    attn_influence, mlp_influence = influence.result()
    heads, channels, attn_means, mlp_means, outliers = [], [], [], [], []
    for i in range(adapter.num_layers):
        attn, mlp, s = adapter.attention(i), adapter.mlp(i), stats[i]
        w = lambda block, role: adapter.projection(block, role).weight.double()  # noqa: E731
        head_ch = scorer.attention(w(attn, "o"), w(attn, "q"), s)
        chan = scorer.mlp(w(mlp, "gate"), w(mlp, "up"), w(mlp, "down"), s)
        heads.append(_per_head(head_ch, adapter.head_dim).float().cpu())
        channels.append(chan.float().cpu())
        attn_means.append(s["o"].mean().float())
        mlp_means.append(s["down"].mean().float())
        outliers.append(_outlier_ratio(adapter, attn, mlp, s))
    return ImportanceScores(
        metric=metric,
        head_scores=heads,
        channel_scores=channels,
        attn_input_mean=attn_means,
        mlp_input_mean=mlp_means,
        outlier_ratio=torch.tensor(outliers),
        calib_tokens=int(blocks.numel()),
        attn_influence=attn_influence,
        mlp_influence=mlp_influence,
    )


def _outlier_ratio(adapter: ModelAdapter, attn, mlp, s) -> float:
    """OWL's layerwise outlier ratio: share of Wanda scores above 5x the layer's mean score."""
    scores = []
    for role, observed in INPUT_OF.items():
        lin = adapter.projection(attn if role in ("q", "k", "v", "o") else mlp, role)
        scores.append((lin.weight.abs() * s[observed].norm().float()).flatten())
    flat = torch.cat(scores)
    return float((flat > OWL_OUTLIER_FACTOR * flat.mean()).float().mean())
