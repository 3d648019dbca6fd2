"""Named search strategies (``--operator``): each maps an operator onto the one loop, and all
spend the same budget.

The budget is the paper's: ``population + generations * (crossover + mutation)`` fitness
evaluations (30 + 20 * 20 = 430), unless ``max_evals`` says otherwise. Population strategies (GA,
LLM) run the (mu + lambda) loop as configured; (1 + lambda) strategies (random search, EvoPress)
keep one survivor and spend the same evaluations on lambda offspring per generation (random:
crossover + mutation; EvoPress: its published 64, fewer on small budgets); fixed ones (uniform,
OWL) cost one evaluation. To add an
operator, write it (``operators/``) and list a ``Strategy`` for it in ``STRATEGIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from selfprune.errors import SelfpruneError
from selfprune.evolution.loop import SearchConfig
from selfprune.evolution.operators import classic
from selfprune.evolution.operators.base import Operator
from selfprune.evolution.operators.seeds import MAX_PRIORS

POPULATION, ONE_PLUS_LAMBDA, FIXED = "population", "one-plus-lambda", "fixed"


def _llm_operator(backend: Any, settings: Any) -> Operator:
    from selfprune.evolution.llm.operator import LLMOperator

    if backend is None:
        raise SelfpruneError("the llm operator needs --llm (self, local:PATH, openai:MODEL or random)")
    return LLMOperator(backend, fallback=classic.GAOperator(), settings=settings)


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    make: Callable[[Any, Any], Operator]  # (chat backend, LLM settings) -> operator
    shape: str = POPULATION
    uses_llm: bool = False
    offspring: int | None = None  # (1+lambda): lambda at most this (default: crossover + mutation)
    survivors: tuple[int, ...] | None = None  # (1+lambda): offspring kept after each stage but the last

    def config(self, population: int, generations: int, crossover: int, mutation: int,
               max_evals: int | None = None, **kwargs: Any) -> SearchConfig:
        """The loop settings for this strategy at the same evaluation budget as the others (the sizes are
        ``SearchOptions``'s, which hold the defaults)."""
        budget = max_evals if max_evals is not None else population + generations * (crossover + mutation)
        if self.shape == FIXED:
            kwargs.pop("stage_keep", None)
            return SearchConfig(population=1, generations=0, crossover=0, mutation=0, max_evals=1, **kwargs)
        if self.shape == ONE_PLUS_LAMBDA:
            # (1+lambda) keeps one parent; the seeded start evaluates every prior and keeps the best.
            initial = MAX_PRIORS if kwargs.get("init", "seeded") == "seeded" else 1
            initial = max(1, min(initial, budget))
            if self.offspring is not None:
                # As published when the budget allows four generations; fewer offspring otherwise,
                # so that a small budget still makes several steps from the parent.
                lam = max(1, min(self.offspring, (budget - initial) // 4))
            else:
                lam = max(1, crossover + mutation)
            if self.survivors is not None and kwargs.get("stage_keep"):
                kwargs["stage_keep"] = self._keep(lam, len(kwargs["stage_keep"]))
            gens = max(0, -(-(budget - initial) // lam))  # ceil: the last generation may be cut by the budget
            return SearchConfig(population=1, generations=gens, crossover=0, mutation=lam, max_evals=budget,
                                initial=initial, **kwargs)
        return SearchConfig(population=population, generations=generations, crossover=crossover, mutation=mutation,
                            max_evals=budget, **kwargs)

    def _keep(self, lam: int, stages: int) -> tuple[float, ...]:
        """The published survivor counts (e.g. 8, 2 of 64, then 1) as the evaluator's fractions."""
        counts = list(self.survivors[:stages]) + [1] * max(0, stages - len(self.survivors))
        alive, out = lam, []
        for c in counts:
            out.append(min(1.0, c / alive))
            alive = min(alive, c)
        return tuple(out)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("llm", "an LLM writes shapes, picks parents and proposes moves (GA fills in)", _llm_operator,
             uses_llm=True),
    Strategy("ga", "tournament selection, two-point crossover, Gaussian mutation",
             lambda backend, settings: classic.GAOperator()),
    Strategy("ga-levels", "the GA with level switches as mutation (steps between achievable levels)",
             lambda backend, settings: classic.GAOperator(mutation="levels")),
    Strategy("evopress", "EvoPress: (1+lambda), lambda 64, 1-3 level switches, survivors 8, 2, 1 over the stages",
             lambda backend, settings: classic.EvoPressOperator(), shape=ONE_PLUS_LAMBDA, offspring=64,
             survivors=(8, 2)),
    Strategy("random", "every candidate drawn afresh around uniform",
             lambda backend, settings: classic.RandomOperator(), shape=ONE_PLUS_LAMBDA),
    Strategy("uniform", "the same rate in every layer", lambda backend, settings: classic.FixedOperator("uniform"),
             shape=FIXED),
    Strategy("owl", "OWL: layers with more activation outliers pruned less",
             lambda backend, settings: classic.FixedOperator("owl"), shape=FIXED),
)}
OPERATORS = tuple(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise SelfpruneError(f"unknown operator '{name}'; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_config(name: str, *args: Any, **kwargs: Any) -> SearchConfig:
    return get_strategy(name).config(*args, **kwargs)


def make_operator(name: str, backend: Any = None, llm_settings: Any = None) -> Operator:
    """The operator of that name; ``llm`` needs a chat backend and falls back to the GA."""
    return get_strategy(name).make(backend, llm_settings)
