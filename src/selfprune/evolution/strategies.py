"""Named search strategies (``--operator``): each maps an operator onto the one loop, and all
spend the same budget.

The budget is the paper's: ``population + generations * (crossover + mutation)`` fitness
evaluations (30 + 20 * 20 = 430), unless ``max_evals`` says otherwise. Population strategies (GA,
LLM) run the (mu + lambda) loop as configured; (1 + lambda) strategies (random search,
EvoPress-style) keep one survivor and spend the same evaluations on lambda = crossover +
mutation offspring per generation; fixed ones (uniform, OWL) cost one evaluation. To add an
operator, write it (``operators/``) and list a ``Strategy`` for it in ``STRATEGIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from selfprune.errors import SelfpruneError
from selfprune.evolution.loop import SearchConfig
from selfprune.evolution.operators import classic
from selfprune.evolution.operators.base import Operator

POPULATION, ONE_PLUS_LAMBDA, FIXED = "population", "one-plus-lambda", "fixed"


def _llm_operator(backend: Any, settings: Any) -> Operator:
    from selfprune.evolution.llm.operator import LLMOperator

    if backend is None:
        raise SelfpruneError("the llm operator needs --llm (self, local:PATH or openai:MODEL)")
    return LLMOperator(backend, fallback=classic.GAOperator(), settings=settings)


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    make: Callable[[Any, Any], Operator]  # (chat backend, LLM settings) -> operator
    shape: str = POPULATION
    uses_llm: bool = False

    def config(self, population: int = 30, generations: int = 20, crossover: int = 10, mutation: int = 10,
               max_evals: int | None = None, **kwargs: Any) -> SearchConfig:
        """The loop settings for this strategy at the same evaluation budget as the others."""
        budget = max_evals if max_evals is not None else population + generations * (crossover + mutation)
        if self.shape == FIXED:
            return SearchConfig(population=1, generations=0, crossover=0, mutation=0, max_evals=1, **kwargs)
        if self.shape == ONE_PLUS_LAMBDA:
            lam = max(1, crossover + mutation)
            gens = max(0, -(-(budget - 1) // lam))  # ceil: the last generation may be cut by the budget
            return SearchConfig(population=1, generations=gens, crossover=0, mutation=lam, max_evals=budget, **kwargs)
        return SearchConfig(population=population, generations=generations, crossover=crossover, mutation=mutation,
                            max_evals=budget, **kwargs)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("llm", "an LLM writes shapes, picks parents and proposes moves (GA fills in)", _llm_operator,
             uses_llm=True),
    Strategy("ga", "tournament selection, two-point crossover, Gaussian mutation",
             lambda backend, settings: classic.GAOperator()),
    Strategy("evopress", "(1+lambda) with level moves that keep the budget",
             lambda backend, settings: classic.EvoPressOperator(), shape=ONE_PLUS_LAMBDA),
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
