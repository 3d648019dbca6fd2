"""Classical operators: uniform and OWL baselines, random search, a GA (tournament, two-point
crossover, Gaussian or level-switch mutation) and EvoPress as published ((1 + lambda) with level
switches that keep the budget). Where they start is ``seeds.initial_population``."""

from __future__ import annotations

import numpy as np

from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.operators.base import Operator
from selfprune.evolution.operators.seeds import level_switches, owl_vector, random_vector, switch_count, uniform_vector
from selfprune.evolution.operators.types import Context, Individual, Proposal

__all__ = ["FixedOperator", "RandomOperator", "GAOperator", "EvoPressOperator", "uniform_vector", "owl_vector",
           "random_vector", "tournament", "two_point_crossover", "gaussian_mutation"]


# ---- building blocks ----------------------------------------------------------------------
def tournament(population: list[Individual], rng: np.random.Generator, k: int = 3) -> Individual:
    picks = rng.choice(len(population), size=min(k, len(population)), replace=False)
    return min((population[i] for i in picks), key=lambda ind: ind.fitness)


def two_point_crossover(a: np.ndarray, b: np.ndarray, space: GenomeSpace, rng: np.random.Generator) -> np.ndarray:
    """Swap a contiguous range of layers (both blocks of a layer travel together)."""
    L = space.num_layers
    i, j = sorted(rng.choice(L + 1, size=2, replace=False))
    mask = np.zeros(L, dtype=bool)
    mask[i:j] = True
    full = mask if space.joint else np.concatenate([mask, mask])
    return np.where(full, b, a)


def gaussian_mutation(v: np.ndarray, rng: np.random.Generator, sigma: float, gene_prob: float) -> np.ndarray:
    hit = rng.random(v.size) < gene_prob
    if not hit.any():
        hit[rng.integers(v.size)] = True
    return v + hit * sigma * rng.standard_normal(v.size)


# ---- operators -----------------------------------------------------------------------------
class FixedOperator(Operator):
    """A single, fixed genome: ``uniform`` or ``owl`` (from per-layer outlier ratios)."""

    def __init__(self, kind: str = "uniform", owl_lambda: float = 0.08):
        self.name = kind
        self.owl_lambda = owl_lambda

    def initial(self, ctx: Context, n: int) -> list[Proposal]:
        if self.name == "owl":
            ratio = ctx.profiles.get("outlier_ratio")
            if ratio is None:
                from selfprune.errors import SelfpruneError

                raise SelfpruneError("the OWL baseline needs per-layer outlier ratios in the search problem's profiles")
            return [Proposal(owl_vector(ctx.space, ratio, self.owl_lambda), "owl")]
        return [Proposal(uniform_vector(ctx.space), "uniform")]

    def crossover(self, ctx: Context, n: int) -> list[Proposal]:
        return []

    def mutate(self, ctx: Context, n: int) -> list[Proposal]:
        return []


class RandomOperator(Operator):
    """Random search: after the shared start, every candidate is drawn afresh around uniform."""

    name = "random"

    def crossover(self, ctx: Context, n: int) -> list[Proposal]:
        return [Proposal(random_vector(ctx.space, ctx.rng), "random") for _ in range(n)]

    mutate = crossover


class GAOperator(Operator):
    """A GA: tournament selection, two-point crossover, and Gaussian mutation (``mutation="gauss"``)
    or level switches (``"levels"``: a block one achievable level down, another one up, which
    Gaussian noise of a few percent followed by rounding rarely does on coarse attention levels)."""

    def __init__(self, tournament_k: int = 3, sigma: float = 0.05, gene_prob: float = 0.2, mutation: str = "gauss"):
        if mutation not in ("gauss", "levels"):
            raise ValueError(f"unknown GA mutation '{mutation}'")
        self.tournament_k = tournament_k
        self.sigma = sigma
        self.gene_prob = gene_prob
        self.mutation = mutation
        self.name = "ga" if mutation == "gauss" else "ga-levels"

    def _perturb(self, v: np.ndarray, ctx: Context, small: bool) -> np.ndarray:
        if self.mutation == "levels":
            return level_switches(v, ctx.space, ctx.rng, 1 if small else switch_count(ctx.rng))[0]
        scale = 2 if small else 1
        return gaussian_mutation(v, ctx.rng, self.sigma / scale, self.gene_prob / scale)

    def crossover(self, ctx: Context, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            a = tournament(ctx.population, ctx.rng, self.tournament_k)
            b = tournament(ctx.population, ctx.rng, self.tournament_k)
            child = two_point_crossover(np.array(a.genome.vector), np.array(b.genome.vector), ctx.space, ctx.rng)
            # A pure swap of two feasible parents is often a duplicate; a small mutation helps.
            child = self._perturb(child, ctx, small=True)
            out.append(Proposal(child, f"{self.name}-crossover", (a.id, b.id)))
        return out

    def mutate(self, ctx: Context, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            p = tournament(ctx.population, ctx.rng, self.tournament_k)
            child = self._perturb(np.array(p.genome.vector), ctx, small=False)
            out.append(Proposal(child, f"{self.name}-mutate", (p.id,)))
        return out


class EvoPressOperator(Operator):
    """EvoPress (Sieberling et al. 2024, ``evo_prune_search.py``): one parent, lambda offspring,
    each ``min(randint(1,3), randint(1,3))`` level switches away from it; run it (1 + lambda) with
    the staged evaluator, which keeps the published survivor counts (strategies.py)."""

    name = "evopress"

    def mutate(self, ctx: Context, n: int) -> list[Proposal]:
        out = []
        parent = ctx.best
        for _ in range(n):
            v, moves = level_switches(np.array(parent.genome.vector), ctx.space, ctx.rng, switch_count(ctx.rng))
            out.append(Proposal(v, "evopress-mutate", (parent.id,), moves))
        return out

    crossover = mutate
