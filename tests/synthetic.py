"""A deterministic stand-in for the pruned-model fitness, with a known optimum.

Useful to test and compare search operators in seconds: the fitness is a convex function of the
rates (each layer's blocks have their own sensitivity), so the best genome under the budget is
known in closed form. Stage 0 adds a deterministic, genome-dependent error, like scoring on fewer
tokens does. The object follows the fitness protocol the search expects.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SyntheticProblem:
    """Search-space facts, fitness and profiles, shaped like the pruner's ``SearchProblem``."""

    num_layers: int
    attn_params: np.ndarray
    mlp_params: np.ndarray
    attn_levels: list[float]
    mlp_levels: list[float]
    fitness: "SyntheticFitness"
    profiles: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def space(self) -> "SyntheticProblem":
        return self


class SyntheticFitness:
    """``f = exp(sum_i s_i * x_i**2)``-like score: lower is better, sensitivities ``s`` per block."""

    def __init__(self, num_layers: int = 12, seed: int = 0, num_stages: int = 2, delay: float = 0.0):
        rng = np.random.default_rng(seed)
        depth = np.linspace(0, 1, num_layers)
        # Early and last layers matter most, as in real LLMs; MLPs more than attention.
        base = 1.0 + 3.0 * np.exp(-8 * depth) + 1.5 * np.exp(-20 * (1 - depth))
        self.attn_sens = base * rng.uniform(0.3, 0.7, num_layers)
        self.mlp_sens = base * rng.uniform(0.8, 1.6, num_layers)
        self.num_layers = num_layers
        self.num_stages = num_stages
        self.delay = delay
        self.calls = 0

    def tokens(self, stage: int = 0) -> int:
        return 256 * 2 ** stage

    def __call__(self, attn: np.ndarray, mlp: np.ndarray, stage: int = 0) -> float:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        attn, mlp = np.asarray(attn, dtype=float), np.asarray(mlp, dtype=float)
        loss = float(self.attn_sens @ attn**2 + self.mlp_sens @ mlp**2)
        value = 10.0 * np.exp(loss / self.num_layers * 4)
        if stage < self.num_stages - 1:  # fewer tokens: a reproducible error of a few percent
            h = hashlib.sha256(np.round(np.concatenate([attn, mlp]), 6).tobytes()).digest()
            value *= 1 + 0.04 * (int.from_bytes(h[:4], "little") / 2**32 - 0.5)
        return value


def synthetic_problem(num_layers: int = 12, seed: int = 0, num_stages: int = 2, delay: float = 0.0,
                      mlp_step: int = 48) -> SyntheticProblem:
    """A problem shaped like a small GQA model: 9 heads in 3 groups, MLP in steps of 1/mlp_step."""
    fit = SyntheticFitness(num_layers, seed, num_stages, delay)
    return SyntheticProblem(
        num_layers=num_layers,
        attn_params=np.full(num_layers, 4 * 576 * 64 * 3.0),
        mlp_params=np.full(num_layers, 3 * 576 * 1536.0),
        attn_levels=[0, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 5 / 6, 1.0],
        mlp_levels=list(np.arange(mlp_step + 1) / mlp_step),
        fitness=fit,
        profiles={
            "attn_importance": fit.attn_sens / fit.attn_sens.mean(),
            "mlp_importance": fit.mlp_sens / fit.mlp_sens.mean(),
            "outlier_ratio": (fit.attn_sens + fit.mlp_sens) / (fit.attn_sens + fit.mlp_sens).mean() * 0.05,
        },
    )
