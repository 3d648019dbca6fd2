"""Fitness of a genome: the loss of the model pruned at its rates, on fitness tokens.

Importance is scored once (``build_search_problem``); each candidate is then built with
``pruned_view`` (slices of the dense weights swapped in and out again) and scored with one forward
pass of the smaller model. Fitness tokens come from the second half of the calibration source, so
they never overlap the calibration blocks (first half) nor the evaluation text (WikiText-2).

``ppl``: perplexity of the pruned model on the fitness tokens. ``kl``: mean KL divergence from the
dense model's next-token distribution (EvoPress's choice), with the dense log-probabilities
computed once. Stages hold growing numbers of fitness blocks for staged selection: stage 0 scores
many candidates cheaply, the last stage ranks the best on more tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from selfprune.data.calibration import calibration_text, token_blocks
from selfprune.errors import SelfpruneError
from selfprune.models.adapter import ModelAdapter, get_adapter
from selfprune.pruning.apply import order_mlp_channels, pruned_view
from selfprune.pruning.importance import ImportanceScores, compute_importance
from selfprune.pruning.plan import attention_levels, make_plan
from selfprune.pruning.pipeline import check_metric, check_ratio, default_bias_compensation

FITNESS_KINDS = ("ppl", "kl")


class PruningFitness:
    """``fitness(attn, mlp, stage=0) -> float``: lower is better."""

    def __init__(self, adapter: ModelAdapter, scores: ImportanceScores, stage_blocks: list[torch.Tensor],
                 kind: str = "ppl", attn_granularity: str = "head", mlp_multiple: int = 1,
                 bias_compensation: bool = False, batch_size: int = 4):
        if kind not in FITNESS_KINDS:
            raise SelfpruneError(f"unknown fitness '{kind}'; choose one of {', '.join(FITNESS_KINDS)}")
        self.adapter, self.scores, self.kind = adapter, scores, kind
        self.stage_blocks = stage_blocks
        self.attn_granularity, self.mlp_multiple = attn_granularity, mlp_multiple
        self.bias_compensation, self.batch_size = bias_compensation, batch_size
        self.device = next(adapter.model.parameters()).device
        self.evaluations = 0
        self._dense_logprobs = [self._dense(b) for b in stage_blocks] if kind == "kl" else None

    @property
    def num_stages(self) -> int:
        return len(self.stage_blocks)

    def tokens(self, stage: int = 0) -> int:
        return int(self.stage_blocks[stage].numel())

    @torch.no_grad()
    def _dense(self, blocks: torch.Tensor) -> list[torch.Tensor]:
        # Half precision keeps the cached distributions small; the KL sum is accumulated in fp32.
        return [self._logits(blocks[i : i + self.batch_size]).log_softmax(-1).half()
                for i in range(0, len(blocks), self.batch_size)]

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.adapter.model(batch.to(self.device), use_cache=False).logits[:, :-1].float()

    def plan(self, attn, mlp):
        return make_plan(self.adapter, self.scores.head_scores, self.scores.channel_scores,
                         np.asarray(attn, dtype=float).tolist(), np.asarray(mlp, dtype=float).tolist(),
                         self.attn_granularity, self.mlp_multiple)

    @torch.no_grad()
    def __call__(self, attn, mlp, stage: int = 0) -> float:
        blocks = self.stage_blocks[stage]
        total, count = 0.0, 0
        with pruned_view(self.adapter, self.plan(attn, mlp), self.scores, self.bias_compensation):
            for j, i in enumerate(range(0, len(blocks), self.batch_size)):
                batch = blocks[i : i + self.batch_size]
                logits = self._logits(batch)
                if self.kind == "ppl":
                    targets = batch[:, 1:].to(self.device)
                    total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
                else:
                    dense = self._dense_logprobs[stage][j].float()
                    total += F.kl_div(logits.log_softmax(-1), dense, log_target=True, reduction="sum").item()
                count += batch.shape[0] * (batch.shape[1] - 1)
        self.evaluations += 1
        mean = total / count
        if self.kind == "ppl":
            return math.exp(min(mean, 700.0))  # exp overflows past ~709: a hopeless candidate, not a crash
        return mean


@dataclass
class SearchProblem:
    """What a search needs: the space's facts, the fitness, and the profiles measured once."""

    num_layers: int
    target_ratio: float
    attn_params: list[int]  # dense parameters of each layer's attention block
    mlp_params: list[int]  # dense parameters of each layer's MLP block
    attn_levels: list[float]  # attention rates the pruner realises exactly
    mlp_step: float  # MLP rates are multiples of this
    fitness: PruningFitness
    profiles: dict[str, np.ndarray]
    scores: ImportanceScores
    info: dict = field(default_factory=dict)


def _profile(per_layer: list[torch.Tensor]) -> np.ndarray:
    totals = np.array([float(t.sum()) for t in per_layer])
    return totals / totals.mean() if totals.mean() > 0 else totals


def build_search_problem(
    model,
    tokenizer,
    ratio: float,
    metric: str = "wanda-sp",
    fitness: str = "ppl",
    calib: str = "lambada",
    calib_samples: int = 32,
    calib_seqlen: int = 256,
    fitness_samples: list[int] | int = 4,
    fitness_seqlen: int = 512,
    seed: int = 0,
    attn_granularity: str = "head",
    mlp_multiple: int = 1,
    bias_compensation: bool | None = None,
    progress: bool = True,
) -> SearchProblem:
    """Score importance once on the calibration blocks and set up the fitness on disjoint tokens."""
    from selfprune.pruning.pipeline import calibration_blocks

    check_ratio(ratio)
    check_metric(metric)
    if fitness not in FITNESS_KINDS:
        raise SelfpruneError(f"unknown fitness '{fitness}'; choose one of {', '.join(FITNESS_KINDS)}")
    stages = [fitness_samples] if isinstance(fitness_samples, int) else list(fitness_samples)
    if not stages or any(n < 1 for n in stages) or stages != sorted(stages):
        raise SelfpruneError(f"fitness samples per stage must be positive and non-decreasing, got {stages}")
    adapter = get_adapter(model)
    if bias_compensation is None:
        bias_compensation = default_bias_compensation(metric)
    blocks = calibration_blocks(tokenizer, calib, calib_samples, calib_seqlen, seed)
    # Best channels first, so that candidates' MLPs are served as views of the dense weights.
    scores = order_mlp_channels(adapter, compute_importance(adapter, blocks, metric, progress=progress))
    fitness_all = token_blocks(tokenizer, calibration_text(calib), stages[-1], fitness_seqlen, seed=seed + 1,
                               split="second")
    stage_blocks = [fitness_all[:n] for n in stages]
    fit = PruningFitness(adapter, scores, stage_blocks, fitness, attn_granularity, mlp_multiple, bias_compensation)
    geo = adapter.geometry()
    n = adapter.num_layers
    return SearchProblem(
        num_layers=n,
        target_ratio=ratio,
        attn_params=[geo.attn_params(adapter.num_kv_heads, adapter.num_heads)] * n,
        mlp_params=[geo.mlp_params(adapter.intermediate_size)] * n,
        attn_levels=attention_levels(adapter, attn_granularity),
        mlp_step=mlp_multiple / adapter.intermediate_size,
        fitness=fit,
        profiles={
            "attn_importance": _profile(scores.head_scores),
            "mlp_importance": _profile(scores.channel_scores),
            "outlier_ratio": scores.outlier_ratio.numpy(),
        },
        scores=scores,
        info={"metric": metric, "fitness": fitness, "calib": calib, "calib_samples": calib_samples,
              "calib_seqlen": calib_seqlen, "fitness_samples": stages, "fitness_seqlen": fitness_seqlen,
              "seed": seed, "attn_granularity": attn_granularity, "mlp_multiple": mlp_multiple,
              "bias_compensation": bias_compensation},
    )
