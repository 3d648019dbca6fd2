"""Named search strategies (``--operator``) mapped onto the one loop, with one budget for all.

The budget is the paper's: ``population + generations * (crossover + mutation)`` fitness
evaluations (30 + 20 * 20 = 430), unless ``max_evals`` says otherwise. GA and LLM run the
(mu + lambda) loop as configured; random search and EvoPress-style (1 + lambda) keep one
survivor and spend the same evaluations on lambda = crossover + mutation offspring per
generation; uniform and OWL cost one evaluation.
"""

from __future__ import annotations

from typing import Any

from selfprune.errors import SelfpruneError
from selfprune.evolution.loop import SearchConfig
from selfprune.evolution.operators.base import Operator

OPERATORS = ("llm", "ga", "evopress", "random", "uniform", "owl")


def strategy_config(name: str, population: int = 30, generations: int = 20, crossover: int = 10,
                    mutation: int = 10, max_evals: int | None = None, **kwargs: Any) -> SearchConfig:
    """The loop settings for operator ``name`` at the same evaluation budget as the others."""
    if name not in OPERATORS:
        raise SelfpruneError(f"unknown operator '{name}'; choose one of {', '.join(OPERATORS)}")
    budget = max_evals if max_evals is not None else population + generations * (crossover + mutation)
    if name in ("uniform", "owl"):
        return SearchConfig(population=1, generations=0, crossover=0, mutation=0, max_evals=1, **kwargs)
    if name in ("random", "evopress"):
        lam = max(1, crossover + mutation)
        gens = max(0, -(-(budget - 1) // lam))  # ceil: the last generation may be cut by the budget
        return SearchConfig(population=1, generations=gens, crossover=0, mutation=lam, max_evals=budget, **kwargs)
    return SearchConfig(population=population, generations=generations, crossover=crossover, mutation=mutation,
                        max_evals=budget, **kwargs)


def make_operator(name: str, backend: Any = None, llm_settings: Any = None) -> Operator:
    """The operator of that name; ``llm`` needs a chat backend and falls back to the GA."""
    from selfprune.evolution.operators.classic import EvoPressOperator, FixedOperator, GAOperator, RandomOperator

    if name in ("uniform", "owl"):
        return FixedOperator(name)
    if name == "random":
        return RandomOperator()
    if name == "ga":
        return GAOperator()
    if name == "evopress":
        return EvoPressOperator()
    if name == "llm":
        from selfprune.evolution.llm.operator import LLMOperator

        if backend is None:
            raise SelfpruneError("the llm operator needs --llm (self, local:PATH or openai:MODEL)")
        return LLMOperator(backend, fallback=GAOperator(), settings=llm_settings)
    raise SelfpruneError(f"unknown operator '{name}'; choose one of {', '.join(OPERATORS)}")
