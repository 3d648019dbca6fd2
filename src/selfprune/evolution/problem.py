"""The search problem of one model at one target: importance scored once, the genome space's
facts (layers, parameter counts, achievable levels), the fitness on tokens disjoint from the
calibration and evaluation text, and the per-layer profiles operators may look at.

Fitness tokens come from the second half of the calibration source, so they never overlap the
calibration blocks (first half) nor the evaluation text (WikiText-2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selfprune.data.calibration import calibration_text, token_blocks
from selfprune.evolution.fitness import PruningFitness
from selfprune.evolution.objectives import get_objective
from selfprune.evolution.options import SearchOptions
from selfprune.evolution.setup import SearchSetup
from selfprune.models.adapter import get_adapter
from selfprune.pruning.apply import order_by_importance
from selfprune.pruning.importance import ImportanceScores, compute_importance
from selfprune.pruning.options import PruneOptions
from selfprune.pruning.pipeline import calibration_blocks, check_ratio
from selfprune.pruning.plan import attention_levels


@dataclass
class SearchProblem:
    """What a search needs: the space's facts, the fitness, and the profiles measured once."""

    num_layers: int
    attn_params: list[int]  # dense parameters of each layer's attention block
    mlp_params: list[int]  # dense parameters of each layer's MLP block
    attn_levels: list[float]  # attention rates the pruner realises exactly
    mlp_step: float  # MLP rates are multiples of this
    fitness: PruningFitness
    profiles: dict[str, np.ndarray]
    scores: ImportanceScores
    setup: SearchSetup  # what the fitness values depend on: the options, the seed, the data's hashes, the dtype


def tokens_sha256(blocks: torch.Tensor) -> str:
    """A fingerprint of token blocks: a resume must score on the very same tokens."""
    import hashlib

    t = blocks.detach().to("cpu", torch.int64).contiguous()
    return hashlib.sha256(str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest()


def _profile(per_layer: list[torch.Tensor]) -> np.ndarray:
    totals = np.array([float(t.sum()) for t in per_layer])
    return totals / totals.mean() if totals.mean() > 0 else totals


def build_search_problem(model, tokenizer, ratio: float, prune: PruneOptions | None = None,
                         search: SearchOptions | None = None, seed: int = 0, progress: bool = True,
                         model_name: str | None = None) -> SearchProblem:
    """Score importance once on the calibration blocks and set up the fitness on disjoint tokens.
    ``model_name``: the model as the user named it, for the records."""
    prune, search = prune or PruneOptions(), search or SearchOptions()
    check_ratio(ratio)
    get_objective(search.fitness)
    stages = list(search.fitness_samples)
    adapter = get_adapter(model)
    compensate = prune.compensates()
    blocks = calibration_blocks(tokenizer, prune.calib, prune.calib_samples, prune.calib_seqlen, seed)
    # Best channels, groups and heads first, so that candidates are mostly views of the dense weights.
    scores = order_by_importance(adapter, compute_importance(adapter, blocks, prune.metric, progress=progress))
    fitness_all = token_blocks(tokenizer, calibration_text(prune.calib), stages[-1], search.fitness_seqlen,
                               seed=seed + 1, split="second")
    fit = PruningFitness(adapter, scores, [fitness_all[:n] for n in stages], search.fitness,
                         prune.attn_granularity, prune.mlp_multiple, compensate)
    geo = adapter.geometry()
    n = adapter.num_layers
    return SearchProblem(
        num_layers=n,
        attn_params=[geo.attn_params(adapter.num_kv_heads, adapter.num_heads)] * n,
        mlp_params=[geo.mlp_params(adapter.intermediate_size)] * n,
        attn_levels=attention_levels(adapter, prune.attn_granularity),
        mlp_step=prune.mlp_multiple / adapter.intermediate_size,
        fitness=fit,
        profiles={
            "attn_importance": _profile(scores.head_scores),
            "mlp_importance": _profile(scores.channel_scores),
            "outlier_ratio": scores.outlier_ratio.numpy(),
            **({"attn_influence": scores.attn_influence.numpy(), "mlp_influence": scores.mlp_influence.numpy()}
               if scores.attn_influence is not None else {}),
        },
        scores=scores,
        setup=SearchSetup.of(ratio, prune, search, seed=seed, model=model_name,
                             dtype=str(next(model.parameters()).dtype).removeprefix("torch."),  # fitness depends on it
                             calib_sha256=tokens_sha256(blocks), fitness_sha256=tokens_sha256(fitness_all)),
    )
