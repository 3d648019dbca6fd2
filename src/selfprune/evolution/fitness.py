"""Fitness of a genome: an objective (``objectives.py``) of the model pruned at its rates, on
fitness tokens.

Each candidate is built with ``PrunedViews`` (views and slices of the dense weights swapped in
and out again, everything a rate decides computed once) and scored with one forward pass of the
smaller model; the only host sync is reading the final loss. Stages hold growing numbers of
fitness blocks for staged selection: stage 0 scores many candidates cheaply, the last stage ranks
the best on more tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from selfprune.evolution.objectives import get_objective
from selfprune.models.adapter import ModelAdapter
from selfprune.pruning.importance import ImportanceScores
from selfprune.pruning.plan import make_plan
from selfprune.pruning.views import PrunedViews


class PruningFitness:
    """``fitness(attn, mlp, stage=0) -> float``: lower is better."""

    def __init__(self, adapter: ModelAdapter, scores: ImportanceScores, stage_blocks: list[torch.Tensor],
                 kind: str = "ppl", attn_granularity: str = "head", mlp_multiple: int = 1,
                 bias_compensation: bool = False, batch_size: int = 4):
        self.objective = get_objective(kind)
        self.adapter, self.scores = adapter, scores
        self.attn_granularity, self.mlp_multiple = attn_granularity, mlp_multiple
        self.bias_compensation, self.batch_size = bias_compensation, batch_size
        self.device = next(adapter.model.parameters()).device
        self.stage_blocks = [b.to(self.device) for b in stage_blocks]  # moved once, not per candidate
        self._views: PrunedViews | None = PrunedViews(adapter, scores, attn_granularity, mlp_multiple,
                                                      bias_compensation)
        self._dense_logprobs = [self.dense_logprobs(b) for b in stage_blocks] if self.objective.needs_dense else None

    @property
    def views(self) -> PrunedViews:
        if self._views is None:
            self._views = PrunedViews(self.adapter, self.scores, self.attn_granularity, self.mlp_multiple,
                                      self.bias_compensation)
        return self._views

    def release(self) -> None:
        """Drop the views' references to the dense blocks and their caches, so that pruning the model
        in place frees the dense weights (they are built again if another candidate is scored)."""
        self._views = None

    @property
    def display_name(self) -> str:
        return self.objective.display

    @property
    def num_stages(self) -> int:
        return len(self.stage_blocks)

    def tokens(self, stage: int = 0) -> int:
        return int(self.stage_blocks[stage].numel())

    @torch.no_grad()
    def dense_logprobs(self, blocks: torch.Tensor) -> list[torch.Tensor]:
        """The dense model's next-token log-probabilities on ``blocks``, one tensor per batch.
        Call it outside ``pruned_view``."""
        # Half precision keeps the cached distributions small; the KL sum is accumulated in fp32.
        return [self._logits(blocks[i : i + self.batch_size]).log_softmax(-1).half()
                for i in range(0, len(blocks), self.batch_size)]

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.adapter.model(batch.to(self.device), use_cache=False).logits[:, :-1].float()

    def plan(self, attn, mlp):
        """The plan that prunes the model physically as the candidate ``(attn, mlp)`` is scored."""
        return make_plan(self.adapter, self.scores.head_scores, self.scores.channel_scores,
                         np.asarray(attn, dtype=float).tolist(), np.asarray(mlp, dtype=float).tolist(),
                         self.attn_granularity, self.mlp_multiple)

    @torch.no_grad()
    def __call__(self, attn, mlp, stage: int = 0) -> float:
        blocks = self.stage_blocks[stage]
        losses, count = [], 0
        with self.views.pruned(np.asarray(attn, dtype=float).tolist(), np.asarray(mlp, dtype=float).tolist()):
            for j, i in enumerate(range(0, len(blocks), self.batch_size)):
                batch = blocks[i : i + self.batch_size]
                dense = self._dense_logprobs[stage][j] if self._dense_logprobs else None
                losses.append(self.objective.batch_loss(self._logits(batch), batch[:, 1:], dense))
                count += batch.shape[0] * (batch.shape[1] - 1)
        # The batches' float32 sums added in Python floats, in order: one host sync per candidate.
        total = sum(torch.stack(losses).cpu().tolist())
        return self.objective.value(total / count)
