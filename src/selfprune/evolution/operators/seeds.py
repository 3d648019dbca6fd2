"""Where every searching operator starts: the initial population, built by one function.

``init="seeded"``: the priors an expert (and the LLM operator's prompt) would start from --
uniform, OWL (fewer outliers -> pruned more), two shapes derived from the per-layer importance
profiles (important layers pruned less) and block removal (the blocks that turn the residual
stream least, per parameter, pruned to the upper bound: ShortGPT's idea per attention and MLP
block) -- and, to fill the population, those priors changed by one to three level switches (a
block one level down, another one level up, so the budget holds).
``init="noise"``: uniform plus Gaussian noise of a random scale around it (the classical start).

GA, random search, EvoPress and the LLM operator all call ``initial_population``, so at the same
seed and ``init`` they start from the same genomes; the LLM operator replaces only the filler
with shapes it writes.
"""

from __future__ import annotations

import numpy as np

from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.operators.types import Context, Move, Proposal

INITS = ("seeded", "noise")
IMPORTANCE_SPREADS = {"importance": 0.3, "importance-strong": 0.6}  # relative deviation from the target
MAX_PRIORS = 3 + len(IMPORTANCE_SPREADS)  # uniform, OWL, the importance shapes and block removal


def uniform_vector(space: GenomeSpace) -> np.ndarray:
    return np.full(space.dim, space.target)


def owl_vector(space: GenomeSpace, outlier_ratio: np.ndarray, lam: float = 0.08) -> np.ndarray:
    """OWL: layers with more activation outliers are pruned less, within target +- lam."""
    o = np.asarray(outlier_ratio, dtype=float)
    span = o.max() - o.min()
    d = (o - o.min()) / span if span > 0 else np.zeros_like(o)
    rates = space.target + lam - 2 * lam * d
    return rates if space.joint else np.concatenate([rates, rates])


def importance_vector(space: GenomeSpace, profiles: dict[str, np.ndarray], spread: float) -> np.ndarray | None:
    """Each block's rate is ``target * (1 + spread * (1 - 2 d))`` with ``d`` its importance scaled
    to [0, 1] over layers: the most important block is pruned ``spread`` less than the target, the
    least important ``spread`` more (repair then puts it on the budget). None without profiles."""
    attn, mlp = profiles.get("attn_importance"), profiles.get("mlp_importance")
    if attn is None or mlp is None:
        return None

    def shape(imp: np.ndarray) -> np.ndarray:
        imp = np.asarray(imp, dtype=float)
        span = imp.max() - imp.min()
        d = (imp - imp.min()) / span if span > 0 else np.full(imp.size, 0.5)
        return space.target * (1 + spread * (1 - 2 * d))

    if space.joint:
        return shape(np.asarray(attn, dtype=float) + np.asarray(mlp, dtype=float))
    return np.concatenate([shape(attn), shape(mlp)])


def removal_vector(space: GenomeSpace, profiles: dict[str, np.ndarray]) -> np.ndarray | None:
    """The blocks of least influence per parameter at the upper rate bound (removed whole when it
    is 1), in that order while they fit in the budget; the others at the lower bound (repair
    spreads what is left of the budget over them). Joint: whole layers. None without influence
    profiles."""
    attn, mlp = profiles.get("attn_influence"), profiles.get("mlp_influence")
    if attn is None or mlp is None:
        return None
    attn, mlp = np.asarray(attn, dtype=float), np.asarray(mlp, dtype=float)
    if space.joint:
        influence, params = attn + mlp, space.attn_params + space.mlp_params
    else:
        influence, params = np.concatenate([attn, mlp]), np.concatenate([space.attn_params, space.mlp_params])
    lo, hi = space.bounds
    v = np.full(influence.size, lo)
    removed, need = 0.0, (space.target - lo) * params.sum()
    for i in np.argsort(influence / params, kind="stable"):
        cost = (hi - lo) * params[i]
        if removed + cost > need:
            break
        v[i] = hi
        removed += cost
    return v


def random_vector(space: GenomeSpace, rng: np.random.Generator) -> np.ndarray:
    """Target plus Gaussian noise of a random scale: from near-uniform to very uneven."""
    sigma = rng.uniform(0.02, 0.15)
    return space.target + sigma * rng.standard_normal(space.dim)


def prior_shapes(space: GenomeSpace, profiles: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The priors by name: uniform, OWL (with outlier ratios), importance shapes (with profiles),
    block removal (with influence profiles)."""
    out = [("uniform", uniform_vector(space))]
    if profiles.get("outlier_ratio") is not None:
        out.append(("owl", owl_vector(space, profiles["outlier_ratio"])))
    for name, spread in IMPORTANCE_SPREADS.items():
        v = importance_vector(space, profiles, spread)
        if v is not None:
            out.append((name, v))
    removal = removal_vector(space, profiles)
    if removal is not None:
        out.append(("removal", removal))
    return out


# ---- level switches ------------------------------------------------------------------------
def mlp_unit(space: GenomeSpace) -> float:
    """The MLP rate step of one level switch: as many parameters as one mean attention level step
    (in SmolLM2-135M 71 channels, 4.6%), rounded to the MLP's own levels. One MLP channel would be
    a step too small to change the fitness; this makes a switch between an attention and an MLP
    block keep the parameter budget (nearly; repair fixes the rest)."""
    attn_step = float(np.diff(space.attn_levels).mean()) if space.attn_levels.size > 1 else 0.1
    share = attn_step * float(space.attn_params.mean()) / float(space.mlp_params.mean())
    mlp_step = float(np.diff(space.mlp_levels).min()) if space.mlp_levels.size > 1 else share
    return max(mlp_step, round(share / mlp_step) * mlp_step)


def _step(value: float, levels: np.ndarray, unit: float | None, direction: int, bounds: tuple[float, float]) -> float | None:
    """``value`` one level up (+1) or down (-1); None at the end of the range."""
    if unit is None:  # attention: the next achievable level
        nxt = levels[levels > value + 1e-9] if direction > 0 else levels[levels < value - 1e-9]
        if nxt.size == 0:
            return None
        return float(nxt[0] if direction > 0 else nxt[-1])
    new = value + direction * unit
    lo, hi = max(bounds[0], float(levels[0])), min(bounds[1], float(levels[-1]))
    if new < lo - 1e-9 or new > hi + 1e-9:
        return None
    return float(levels[np.abs(levels - new).argmin()])


def level_switches(v: np.ndarray, space: GenomeSpace, rng: np.random.Generator, count: int) -> tuple[np.ndarray, tuple[Move, ...]]:
    """EvoPress's mutation on our blocks: ``count`` times, one block (attention or MLP of any
    layer) goes one level down and another one level up, so the budget is kept. Attention moves
    between its achievable (GQA) levels, the MLP by ``mlp_unit``. Returns the vector and the
    switches within one kind as moves (for the move history the LLM is shown)."""
    L, v = space.num_layers, np.array(v, dtype=float)
    unit = mlp_unit(space)
    kinds = ["mlp"] * L if space.joint else ["attn"] * L + ["mlp"] * L
    moves = []
    for _ in range(count):
        for _try in range(20):  # positions at the end of their range cannot move: draw again
            down, up = rng.choice(v.size, size=2, replace=False)
            lv = [space.mlp_levels if kinds[i] == "mlp" else space.attn_levels for i in (down, up)]
            un = [unit if kinds[i] == "mlp" else None for i in (down, up)]
            new_down = _step(v[down], lv[0], un[0], -1, space.bounds)
            new_up = _step(v[up], lv[1], un[1], +1, space.bounds)
            if new_down is None or new_up is None:
                continue
            if kinds[down] == kinds[up]:  # a move within one kind is what the move history can say
                moves.append(Move(int(down % L), int(up % L), float(v[down] - new_down),
                                  "both" if space.joint else kinds[down]))
            v[down], v[up] = new_down, new_up
            break
    return v, tuple(moves)


def switch_count(rng: np.random.Generator) -> int:
    """One to three, biased to fewer: ``min(randint(1, 3), randint(1, 3))`` as in EvoPress."""
    return int(min(rng.integers(1, 4), rng.integers(1, 4)))


# ---- the initial population ----------------------------------------------------------------
def seed_proposals(ctx: Context) -> list[Proposal]:
    """The head of the initial population: the priors (seeded) or uniform alone (noise)."""
    if ctx.init == "noise":
        return [Proposal(uniform_vector(ctx.space), "uniform")]
    return [Proposal(vec, name) for name, vec in prior_shapes(ctx.space, ctx.profiles)]


def filler(ctx: Context, n: int, heads: list[Proposal]) -> list[Proposal]:
    """``n`` more initial genomes: noise around uniform, or the priors changed by level switches."""
    if ctx.init == "noise" or not heads:
        return [Proposal(random_vector(ctx.space, ctx.rng), "init-noise") for _ in range(n)]
    out = []
    for i in range(n):
        head = heads[i % len(heads)]
        v, moves = level_switches(np.asarray(head.vector), ctx.space, ctx.rng, 1 + int(ctx.rng.integers(0, 3)))
        out.append(Proposal(v, f"init-{head.origin}", (), moves))
    return out


def initial_population(ctx: Context, n: int) -> list[Proposal]:
    """The ``n`` initial proposals every searching operator starts from."""
    heads = seed_proposals(ctx)[:n]
    return heads + filler(ctx, n - len(heads), heads)
