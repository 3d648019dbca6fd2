"""The one interface every search operator implements.

An operator writes the initial population, picks parents and writes offspring by crossover and
by mutation. It returns raw *proposals* (decision vectors, possibly infeasible); the loop repairs,
de-duplicates and evaluates them. Operators never see a model, only rates and numbers; what they
work with is in ``types.py``.
"""

from __future__ import annotations

from typing import Any

from selfprune.evolution.operators.seeds import initial_population
from selfprune.evolution.operators.types import Context, Proposal


class Operator:
    """Base class: subclasses override what they do; state_dict() holds what must survive resume."""

    name = "operator"

    def initial(self, ctx: Context, n: int) -> list[Proposal]:
        """The shared start (``ctx.init``): every searching operator begins from the same genomes."""
        return initial_population(ctx, n)

    def crossover(self, ctx: Context, n: int) -> list[Proposal]:
        raise NotImplementedError

    def mutate(self, ctx: Context, n: int) -> list[Proposal]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {}

    def setup(self) -> dict[str, Any]:
        """Settings a resume must match (flat: name -> value), beyond the loop's config."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
