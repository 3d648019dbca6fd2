"""Scoring genomes: the fitness cache by genome, budget limits, and staged selection.

Staged selection (as in EvoPress): all offspring are scored on the first, cheap stage (few
tokens); only the best fraction moves on to the next stage, and only genomes scored on the last
stage compete with the population.

A fitness with a ``map`` method (``parallel.ParallelFitness``) gets each stage's uncached
candidates as one list, scored in parallel; the cache, the budget counters and the order of the
results are the same as when scoring one by one.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

from selfprune.evolution.budget import Budget
from selfprune.evolution.genome import Genome


class Evaluator:
    def __init__(self, fitness: Any, budget: Budget, max_evals: int | None = None, max_tokens: int | None = None):
        self.fitness = fitness
        self.budget = budget
        self.max_evals = max_evals
        self.max_tokens = max_tokens
        self.num_stages = int(getattr(fitness, "num_stages", 1) or 1)
        self.cache: dict[tuple[int, ...], dict[int, float]] = {}

    @property
    def final_stage(self) -> int:
        return self.num_stages - 1

    def tokens(self, stage: int) -> int:
        fn = getattr(self.fitness, "tokens", None)
        return int(fn(stage)) if callable(fn) else 0

    def exhausted(self, stage: int | None = None) -> bool:
        """True when one more evaluation (at ``stage``) would exceed a budget limit."""
        if self.max_evals is not None and self.budget.total_evals >= self.max_evals:
            return True
        if self.max_tokens is not None:
            need = self.tokens(self.final_stage if stage is None else stage)
            if self.budget.total_tokens + need > self.max_tokens:
                return True
        return False

    def seen(self, genome: Genome) -> bool:
        return genome.key in self.cache

    def score(self, genome: Genome, stage: int) -> float | None:
        """Fitness of ``genome`` at ``stage`` from the cache or one evaluation; None when the
        budget is spent."""
        entry = self.cache.setdefault(genome.key, {})
        if stage in entry:
            self.budget.cache_hits += 1
            return entry[stage]
        if self.exhausted(stage):
            if not entry:
                del self.cache[genome.key]
            return None
        attn, mlp = genome.arrays()
        t0 = time.perf_counter()
        value = float(self.fitness(attn, mlp, stage=stage))
        self.budget.add_seconds(f"fitness_stage{stage}", time.perf_counter() - t0)
        self.budget.count_eval(stage, self.tokens(stage))
        if not math.isfinite(value):
            self.budget.failed_evals += 1
            value = math.inf
        entry[stage] = value
        return value

    def _score_all(self, genomes: Sequence[Genome], stage: int) -> list[float | None]:
        """``score`` of each genome, in order; with a parallel fitness, the evaluations at once."""
        if not callable(getattr(self.fitness, "map", None)):
            return [self.score(g, stage) for g in genomes]
        # Admit in order exactly as ``score`` would (cache hits, then budget), then evaluate together.
        values: list[float | None] = [None] * len(genomes)
        pending: dict[tuple[int, ...], list[int]] = {}
        for j, genome in enumerate(genomes):
            entry = self.cache.get(genome.key, {})
            if stage in entry or genome.key in pending:
                self.budget.cache_hits += 1
                if stage in entry:
                    values[j] = entry[stage]
                else:
                    pending[genome.key].append(j)
                continue
            if self.exhausted(stage):
                continue
            self.budget.count_eval(stage, self.tokens(stage))
            pending[genome.key] = [j]
        if not pending:
            return values
        firsts = [js[0] for js in pending.values()]
        t0 = time.perf_counter()
        results = self.fitness.map([(*genomes[j].arrays(), stage) for j in firsts])
        self.budget.add_seconds(f"fitness_stage{stage}", time.perf_counter() - t0)
        for (key, js), value in zip(pending.items(), results):
            value = float(value)
            if not math.isfinite(value):
                self.budget.failed_evals += 1
                value = math.inf
            self.cache.setdefault(key, {})[stage] = value
            for j in js:
                values[j] = value
        return values

    def staged(self, genomes: Sequence[Genome], keep: Sequence[float] | None) -> list[tuple[int, float]]:
        """Score candidates through the stages; returns (index, final fitness) of the survivors
        of every stage that could be afforded."""
        alive = list(range(len(genomes)))
        stages = range(self.num_stages) if keep else [self.final_stage]
        for stage in stages:
            values = self._score_all([genomes[i] for i in alive], stage)
            scored = [(i, v) for i, v in zip(alive, values) if v is not None]
            scored.sort(key=lambda t: t[1])
            if stage == self.final_stage:
                return scored
            frac = keep[stage] if stage < len(keep) else keep[-1]
            alive = [i for i, _ in scored[: max(1, math.ceil(frac * len(scored)))]] if scored else []
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"cache": [[list(k), {str(s): v for s, v in e.items()}] for k, e in self.cache.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cache = {tuple(k): {int(s): float(v) for s, v in e.items()} for k, e in state["cache"]}

