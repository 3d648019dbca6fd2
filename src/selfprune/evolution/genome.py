"""The genome (per-layer pruning rates) and the code that keeps every genome feasible.

A genome holds, for each of the L layers, the fraction of the attention block's and of the MLP
block's parameters to remove. Operators work on a flat *decision vector*: ``[attn..., mlp...]``
(2L values) or, in joint mode, one rate per layer (L values) used for both blocks.

Whatever an operator writes, ``GenomeSpace.repair`` turns it into a feasible genome, in order:
non-finite values are replaced by the target, a vector of the wrong length is resampled over
depth, values are clipped to the bounds, the vector is shifted back onto the budget (the mean
rate over layers, as in Self-Pruner, or an exact parameter budget), and each rate is rounded to
a level the pruner can realise, with a greedy fix that keeps the budget after rounding. Every
step that changed something is counted in ``RepairStats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from selfprune.errors import SelfpruneError

BUDGETS = ("mean", "params")
_EPS = 1e-9


@dataclass(frozen=True)
class Genome:
    """A feasible genome: realised rates per layer and the decision vector they came from."""

    attn: tuple[float, ...]
    mlp: tuple[float, ...]
    vector: tuple[float, ...]

    @property
    def key(self) -> tuple[int, ...]:
        """Identity for duplicate detection and the fitness cache (rates to 1e-6)."""
        return tuple(int(round(v * 1e6)) for v in self.attn + self.mlp)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.attn, dtype=float), np.asarray(self.mlp, dtype=float)

    def to_rates(self) -> list[dict[str, float]]:
        """The per-layer rates in the format ``selfprune prune --rates`` reads."""
        return [{"attn": round(a, 6), "mlp": round(m, 6)} for a, m in zip(self.attn, self.mlp)]

    def to_json(self) -> dict[str, Any]:
        return {"attn": list(self.attn), "mlp": list(self.mlp), "vector": list(self.vector)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Genome":
        return cls(tuple(map(float, d["attn"])), tuple(map(float, d["mlp"])), tuple(map(float, d["vector"])))


REPAIR_EVENTS = ("nonfinite", "resized", "clipped", "projected", "rounded")


@dataclass
class RepairStats:
    """How many genomes needed each kind of repair (a genome counts once per kind)."""

    genomes: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in REPAIR_EVENTS})

    def add(self, events: Sequence[str]) -> None:
        self.genomes += 1
        for e in events:
            self.counts[e] = self.counts.get(e, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {"genomes": self.genomes, **self.counts}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RepairStats":
        d = dict(d)
        genomes = d.pop("genomes", 0)
        counts = {k: 0 for k in REPAIR_EVENTS}
        counts.update(d)
        return cls(genomes, counts)


def resample(values: Sequence[float], length: int) -> np.ndarray:
    """Linear interpolation of ``values`` (control points spread evenly over depth) to ``length``."""
    v = np.asarray(values, dtype=float)
    if len(v) == length:
        return v.copy()
    if len(v) == 1:
        return np.full(length, v[0])
    return np.interp(np.linspace(0, 1, length), np.linspace(0, 1, len(v)), v)


class GenomeSpace:
    """Where genomes live: layer count, parameter counts, achievable levels, bounds and target.

    ``attn_params``/``mlp_params`` are the dense parameter counts of each layer's blocks;
    ``attn_levels``/``mlp_levels`` the rates the pruner can realise (shared by all layers).
    ``budget="mean"``: the mean over layers of each layer's rate (its blocks' rates weighted by
    their parameters) equals ``target``; ``"params"``: the removed parameters are exactly
    ``target`` of all prunable parameters. The two agree when all layers have the same size.
    """

    def __init__(
        self,
        num_layers: int,
        target: float,
        attn_params: Sequence[float] | None = None,
        mlp_params: Sequence[float] | None = None,
        attn_levels: Sequence[float] | None = None,
        mlp_levels: Sequence[float] | None = None,
        bounds: tuple[float, float] = (0.0, 0.9),
        budget: str = "mean",
        joint: bool = False,
    ):
        if num_layers < 1:
            raise SelfpruneError("the model has no layers to prune")
        if budget not in BUDGETS:
            raise SelfpruneError(f"unknown budget '{budget}'; choose one of {', '.join(BUDGETS)}")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not (0.0 <= lo <= hi <= 1.0):
            raise SelfpruneError(f"rate bounds must satisfy 0 <= low <= high <= 1, got [{lo}, {hi}]")
        self.num_layers = L = int(num_layers)
        self.target = float(target)
        self.bounds = (lo, hi)
        self.budget = budget
        self.joint = bool(joint)
        self.attn_params = np.asarray(attn_params if attn_params is not None else [1.0] * L, dtype=float)
        self.mlp_params = np.asarray(mlp_params if mlp_params is not None else [2.0] * L, dtype=float)
        if self.attn_params.shape != (L,) or self.mlp_params.shape != (L,):
            raise SelfpruneError(f"parameter counts must have one value per layer ({L})")
        self.attn_levels = self._allowed(attn_levels, "attention")
        self.mlp_levels = self._allowed(mlp_levels, "MLP")
        # Budget weights w over the 2L block rates: the constraint is w . x == target.
        if budget == "params":
            total = self.attn_params.sum() + self.mlp_params.sum()
            self.weights = np.concatenate([self.attn_params, self.mlp_params]) / total
        else:
            layer = self.attn_params + self.mlp_params
            self.weights = np.concatenate([self.attn_params / layer, self.mlp_params / layer]) / L
        self._levels = [self.attn_levels] * L + [self.mlp_levels] * L
        # Rounding to levels leaves a small budget residual; within it a genome counts as on target.
        steps = [float(np.diff(lv).max()) if lv.size > 1 else 0.0 for lv in self._levels]
        self.tolerance = float(max(w * s for w, s in zip(self.weights, steps)) / 2) + 1e-9
        self._check_feasible()

    # ---- construction helpers -------------------------------------------------------------
    def _allowed(self, levels: Sequence[float] | None, what: str) -> np.ndarray:
        lo, hi = self.bounds
        if levels is None:  # continuous: a fine grid is as good
            levels = np.linspace(0, 1, 1001)
        arr = np.unique(np.round(np.asarray(levels, dtype=float), 9))
        arr = arr[(arr >= lo - 1e-6) & (arr <= hi + 1e-6)]
        if arr.size == 0:
            raise SelfpruneError(
                f"no achievable {what} rate lies within the bounds [{lo}, {hi}]; widen --min-rate/--max-rate"
            )
        return arr

    @classmethod
    def from_problem(cls, problem: Any, target: float, **kwargs) -> "GenomeSpace":
        """Build from the pruner's search-space facts (any object with the documented fields)."""
        facts = getattr(problem, "space", problem)
        mlp_levels = getattr(facts, "mlp_levels", None)
        step = getattr(facts, "mlp_step", None)
        if mlp_levels is None and step:  # multiples of the pruner's MLP step
            mlp_levels = np.arange(int(round(1 / step)) + 1) * step
        return cls(
            num_layers=facts.num_layers,
            target=target,
            attn_params=getattr(facts, "attn_params", None),
            mlp_params=getattr(facts, "mlp_params", None),
            attn_levels=getattr(facts, "attn_levels", None),
            mlp_levels=mlp_levels,
            **kwargs,
        )

    def _check_feasible(self) -> None:
        lo_budget = float(self.weights @ np.array([lv[0] for lv in self._levels]))
        hi_budget = float(self.weights @ np.array([lv[-1] for lv in self._levels]))
        if not (lo_budget - 1e-3 <= self.target <= hi_budget + 1e-3):
            raise SelfpruneError(
                f"target rate {self.target:g} cannot be reached with rates in [{self.bounds[0]:g}, "
                f"{self.bounds[1]:g}] (reachable: {lo_budget:.3f} to {hi_budget:.3f}); "
                "lower the target or widen the bounds"
            )

    # ---- geometry ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Length of the decision vector operators work on."""
        return self.num_layers if self.joint else 2 * self.num_layers

    def expand(self, vector: np.ndarray) -> np.ndarray:
        """Decision vector -> the 2L block rates [attn..., mlp...]."""
        return np.concatenate([vector, vector]) if self.joint else np.asarray(vector, dtype=float)

    def achieved(self, genome: Genome) -> float:
        """The budget value (mean rate or parameter fraction) a genome realises."""
        return float(self.weights @ np.asarray(genome.attn + genome.mlp))

    def uniform(self) -> Genome:
        return self.repair(np.full(self.dim, self.target))[0]

    # ---- repair --------------------------------------------------------------------------
    def repair(self, raw: Any) -> tuple[Genome, list[str]]:
        """Make any numeric vector feasible. Returns the genome and the repair events applied."""
        events: list[str] = []
        v = np.asarray(raw, dtype=float).ravel()
        if v.size == 0:
            v = np.full(self.dim, self.target)
            events.append("resized")
        bad = ~np.isfinite(v)
        if bad.any():
            v = np.where(bad, self.target, v)
            events.append("nonfinite")
        if v.size != self.dim:
            v = self._resize(v)
            events.append("resized")
        lo, hi = self.bounds
        if ((v < lo - _EPS) | (v > hi + _EPS)).any():
            events.append("clipped")
        v = np.clip(v, lo, hi)
        x = self.expand(v)
        shifted = self._project(x)
        if np.abs(shifted - x).max() > 1e-6:
            events.append("projected")
        rounded = self._round(shifted)
        if np.abs(rounded - shifted).max() > 1e-6:
            events.append("rounded")
        L = self.num_layers
        attn, mlp = rounded[:L], rounded[L:]
        vector = self._decision(rounded)
        genome = Genome(tuple(float(a) for a in attn), tuple(float(m) for m in mlp), tuple(float(x) for x in vector))
        return genome, events

    def _decision(self, x: np.ndarray) -> np.ndarray:
        if not self.joint:
            return x.copy()
        L = self.num_layers
        wa, wm = self.attn_params, self.mlp_params
        return (x[:L] * wa + x[L:] * wm) / (wa + wm)

    def _resize(self, v: np.ndarray) -> np.ndarray:
        L = self.num_layers
        if not self.joint and v.size % 2 == 0 and v.size >= 4:
            # Two halves (attn, mlp) of control points, each resampled over depth.
            half = v.size // 2
            return np.concatenate([resample(v[:half], L), resample(v[half:], L)])
        out = resample(v, L)
        return out if self.joint else np.concatenate([out, out])

    def _project(self, x: np.ndarray) -> np.ndarray:
        """Shift all rates by one offset (clipped to bounds) so the budget equals the target."""
        lo, hi = self.bounds
        w, t = self.weights, self.target

        def budget(shift: float) -> float:
            return float(w @ np.clip(x + shift, lo, hi))

        if abs(budget(0.0) - t) <= self.tolerance:
            return x.copy()
        a, b = -1.0 - hi, 1.0 + hi  # budget(a) is the lowest, budget(b) the highest reachable
        for _ in range(100):  # bisection: budget() is monotone in the shift
            mid = 0.5 * (a + b)
            if budget(mid) < t:
                a = mid
            else:
                b = mid
        return np.clip(x + 0.5 * (a + b), lo, hi)

    def _round(self, x: np.ndarray) -> np.ndarray:
        """Round each rate to an achievable level, then fix the budget greedily, one level step
        at a time, preferring the entries whose rounding error makes the step cheapest."""
        w, t = self.weights, self.target
        idx = np.empty(x.size, dtype=int)
        for i, (val, lv) in enumerate(zip(x, self._levels)):
            idx[i] = int(np.abs(lv - val).argmin())
        out = np.array([lv[j] for lv, j in zip(self._levels, idx)])
        for _ in range(4 * x.size * 8):
            resid = t - float(w @ out)
            direction = 1 if resid > 0 else -1
            best, best_cost = None, None
            for i, lv in enumerate(self._levels):
                j = idx[i] + direction
                if j < 0 or j >= lv.size:
                    continue
                new_resid = resid - w[i] * (lv[j] - out[i])
                if abs(new_resid) >= abs(resid) - 1e-12:
                    continue
                # Cost: how far the step moves this rate away from the continuous value it
                # approximates, per unit of budget it fixes.
                cost = ((lv[j] - x[i]) ** 2 - (out[i] - x[i]) ** 2) / (w[i] * abs(lv[j] - out[i]))
                if best_cost is None or cost < best_cost:
                    best, best_cost = i, cost
            if best is None:
                break
            idx[best] += direction
            out[best] = self._levels[best][idx[best]]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers, "target": self.target, "bounds": list(self.bounds),
            "budget": self.budget, "joint": self.joint,
            "attn_params": self.attn_params.tolist(), "mlp_params": self.mlp_params.tolist(),
            "attn_levels": self.attn_levels.tolist(), "mlp_levels": self.mlp_levels.tolist(),
        }
