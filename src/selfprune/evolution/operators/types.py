"""What operators work with: individuals, moves between layers, raw proposals and the context of a call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from selfprune.evolution.genome import Genome, GenomeSpace


@dataclass
class Individual:
    genome: Genome
    fitness: float
    id: int
    origin: str
    parents: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"genome": self.genome.to_json(), "fitness": self.fitness, "id": self.id,
                "origin": self.origin, "parents": list(self.parents)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Individual":
        return cls(Genome.from_json(d["genome"]), float(d["fitness"]), int(d["id"]), d["origin"],
                   tuple(d.get("parents", ())))


@dataclass(frozen=True)
class Move:
    """Move ``amount`` of pruning rate from layer ``src`` to layer ``dst`` (rates, not percent).

    ``part`` is "attn", "mlp" or "both"; in joint mode it is ignored.
    """

    src: int
    dst: int
    amount: float
    part: str = "both"

    def apply(self, vector: np.ndarray, space: GenomeSpace) -> np.ndarray:
        v = np.array(vector, dtype=float)
        L = space.num_layers
        offsets = [0] if space.joint else {"attn": [0], "mlp": [L], "both": [0, L]}.get(self.part, [0, L])
        for off in offsets:
            v[off + self.src] -= self.amount
            v[off + self.dst] += self.amount
        return v

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "amount": self.amount, "part": self.part}


@dataclass
class Proposal:
    """A candidate as an operator wrote it, before repair."""

    vector: Any
    origin: str  # e.g. "ga-mutate", "llm-init", "fallback-crossover"
    parents: tuple[int, ...] = ()
    moves: tuple[Move, ...] = ()
    events: tuple[str, ...] = ()  # parse-level repairs (e.g. values coerced from strings)


@dataclass
class MoveRecord:
    moves: tuple[Move, ...]
    parent_fitness: float
    child_fitness: float

    @property
    def gain(self) -> float:
        """Relative improvement of the child over its parent (positive: better)."""
        return (self.parent_fitness - self.child_fitness) / max(abs(self.parent_fitness), 1e-12)


@dataclass
class Context:
    """What an operator may look at when it writes proposals."""

    space: GenomeSpace
    population: list[Individual]  # sorted, best first
    rng: np.random.Generator
    profiles: dict[str, np.ndarray] = field(default_factory=dict)
    generation: int = 0
    stalled: int = 0  # generations since the best fitness last improved
    moves: list[MoveRecord] = field(default_factory=list)
    log: Callable[[dict[str, Any]], None] = lambda record: None  # the operator transcript
    fitness_name: str = "fitness"  # what the fitness measures, e.g. "perplexity" or "KL to dense"
    init: str = "seeded"  # how the initial population starts (operators/seeds.py)

    @property
    def best(self) -> Individual:
        return self.population[0]
