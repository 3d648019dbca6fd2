"""Classical operators: uniform and OWL-style seeds, random search, a plain GA (tournament,
two-point crossover, Gaussian mutation) and EvoPress-style level moves that keep the budget."""

from __future__ import annotations

import numpy as np

from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.operators.base import Context, Individual, Move, Operator, Proposal


# ---- building blocks ----------------------------------------------------------------------
def uniform_vector(space: GenomeSpace) -> np.ndarray:
    return np.full(space.dim, space.target)


def owl_vector(space: GenomeSpace, outlier_ratio: np.ndarray, lam: float = 0.08) -> np.ndarray:
    """OWL: layers with more activation outliers are pruned less, within target +- lam."""
    o = np.asarray(outlier_ratio, dtype=float)
    span = o.max() - o.min()
    d = (o - o.min()) / span if span > 0 else np.zeros_like(o)
    rates = space.target + lam - 2 * lam * d
    return rates if space.joint else np.concatenate([rates, rates])


def random_vector(space: GenomeSpace, rng: np.random.Generator) -> np.ndarray:
    """Target plus Gaussian noise of a random scale: from near-uniform to very uneven."""
    sigma = rng.uniform(0.02, 0.15)
    return space.target + sigma * rng.standard_normal(space.dim)


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


def level_moves(v: np.ndarray, space: GenomeSpace, rng: np.random.Generator, count: int) -> tuple[np.ndarray, tuple[Move, ...]]:
    """EvoPress-style: ``count`` times, raise one block's rate by one level and lower another
    block of the same kind by one level, so the total stays (nearly) fixed; repair does the rest."""
    L = space.num_layers
    v = np.array(v, dtype=float)
    moves = []
    for _ in range(count):
        part = "mlp" if space.joint else ("attn" if rng.random() < 0.5 else "mlp")
        levels = space.mlp_levels if part == "mlp" else space.attn_levels
        off = 0 if (space.joint or part == "attn") else L
        src, dst = rng.choice(L, size=2, replace=False)
        cur = v[off + dst]
        higher = levels[levels > cur + 1e-9]
        if higher.size == 0 or v[off + src] <= levels[0] + 1e-9:
            continue
        move = Move(int(src), int(dst), float(higher[0] - cur), part if not space.joint else "both")
        v = move.apply(v, space)
        moves.append(move)
    return v, tuple(moves)


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
    """Random search: every candidate is drawn afresh around the uniform genome."""

    name = "random"

    def initial(self, ctx: Context, n: int) -> list[Proposal]:
        return [Proposal(uniform_vector(ctx.space), "uniform")] + [
            Proposal(random_vector(ctx.space, ctx.rng), "random") for _ in range(n - 1)
        ]

    def crossover(self, ctx: Context, n: int) -> list[Proposal]:
        return [Proposal(random_vector(ctx.space, ctx.rng), "random") for _ in range(n)]

    mutate = crossover


class GAOperator(Operator):
    """A plain GA: tournament selection, two-point crossover, Gaussian mutation."""

    name = "ga"

    def __init__(self, tournament_k: int = 3, sigma: float = 0.05, gene_prob: float = 0.2):
        self.tournament_k = tournament_k
        self.sigma = sigma
        self.gene_prob = gene_prob

    def initial(self, ctx: Context, n: int) -> list[Proposal]:
        return [Proposal(uniform_vector(ctx.space), "uniform")] + [
            Proposal(random_vector(ctx.space, ctx.rng), "ga-init") for _ in range(n - 1)
        ]

    def crossover(self, ctx: Context, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            a = tournament(ctx.population, ctx.rng, self.tournament_k)
            b = tournament(ctx.population, ctx.rng, self.tournament_k)
            child = two_point_crossover(np.array(a.genome.vector), np.array(b.genome.vector), ctx.space, ctx.rng)
            # A pure swap of two feasible parents is often a duplicate; a small mutation helps.
            child = gaussian_mutation(child, ctx.rng, self.sigma / 2, self.gene_prob / 2)
            out.append(Proposal(child, "ga-crossover", (a.id, b.id)))
        return out

    def mutate(self, ctx: Context, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            p = tournament(ctx.population, ctx.rng, self.tournament_k)
            child = gaussian_mutation(np.array(p.genome.vector), ctx.rng, self.sigma, self.gene_prob)
            out.append(Proposal(child, "ga-mutate", (p.id,)))
        return out


class EvoPressOperator(Operator):
    """(1+lambda) with level moves between layers (run it with population 1, no crossover)."""

    name = "evopress"

    def __init__(self, max_moves: int = 3):
        self.max_moves = max_moves

    def initial(self, ctx: Context, n: int) -> list[Proposal]:
        out = [Proposal(uniform_vector(ctx.space), "uniform")]
        for _ in range(n - 1):
            v, moves = level_moves(uniform_vector(ctx.space), ctx.space, ctx.rng, self.max_moves)
            out.append(Proposal(v, "evopress-init", (), moves))
        return out

    def mutate(self, ctx: Context, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            parent = ctx.best
            count = int(ctx.rng.integers(1, self.max_moves + 1))
            v, moves = level_moves(np.array(parent.genome.vector), ctx.space, ctx.rng, count)
            out.append(Proposal(v, "evopress-mutate", (parent.id,), moves))
        return out

    crossover = mutate
