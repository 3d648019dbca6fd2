"""What a search spent: fitness evaluations and tokens per stage, cache hits, duplicates, repairs,
operator (LLM) usage and wall seconds per phase. Reported at the end and kept in checkpoints."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator


@dataclass
class Budget:
    evals: dict[str, int] = field(default_factory=dict)  # per fitness stage ("0", "1", ...)
    tokens: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    duplicates: int = 0  # repaired proposals equal to a genome already seen (then perturbed)
    dropped: int = 0  # proposals still duplicates after the retries
    failed_evals: int = 0  # fitness returned NaN/inf
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_evals(self) -> int:
        return sum(self.evals.values())

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    def count_eval(self, stage: int, tokens: int) -> None:
        key = str(stage)
        self.evals[key] = self.evals.get(key, 0) + 1
        self.tokens[key] = self.tokens.get(key, 0) + int(tokens)

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add_seconds(phase, time.perf_counter() - t0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_evals"] = self.total_evals
        d["total_tokens"] = self.total_tokens
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Budget":
        d = {k: v for k, v in d.items() if k not in ("total_evals", "total_tokens")}
        return cls(**d)
