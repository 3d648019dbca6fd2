"""The records selfprune writes, as typed objects: a run's ``results.json``, each search's
``report.json`` and the LLM operator's statistics inside it.

Writers validate what they write against these classes (a missing or mistyped field fails where it
is made, not in a report later); readers (``report/``, ``selfprune search``'s summary) read typed
fields instead of string keys. Sections produced elsewhere with their own protocol -- the pruning
summary, perplexity, zero-shot and speed results -- stay plain dicts here. Every record keeps fields
it does not declare (``extra="allow"``), so a file written by a later version still reads, and a
record dumped with ``exclude_unset`` is byte for byte what was given.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RESULTS_FORMAT = 1  # the version of a run's results.json


class Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The record as written: the fields it was given, nothing added."""
        return self.model_dump(exclude_unset=True)


class OperatorStats(Record):
    """The LLM operator's counters (a classical operator reports none: all zero)."""

    calls: int = 0
    replies: int = 0
    valid: int = 0
    invalid: dict[str, int] = Field(default_factory=dict)
    retries: int = 0
    fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    valid_rate: float | None = None
    seconds_per_reply: float | None = None
    backend: str | None = None


class SearchBudget(Record):
    """What one search spent (evolution/budget.py): fitness evaluations and tokens per stage and in all,
    cache hits, duplicates, seconds by phase."""

    evals: dict[str, int] = Field(default_factory=dict)
    tokens: dict[str, int] = Field(default_factory=dict)
    total_evals: int
    total_tokens: int
    cache_hits: int = 0
    duplicates: int = 0
    dropped: int = 0
    failed_evals: int = 0
    seconds: dict[str, float] = Field(default_factory=dict)


class SearchReport(Record):
    """One operator's search: its best fitness, generations, budget, repairs, where its genomes came from
    (``origins``) and, for the LLM operator, its statistics."""

    operator: str
    best_fitness: float
    generations: int
    achieved: Any  # the achieved mean rate, or per-part rates
    budget: SearchBudget
    repairs: dict[str, Any] = Field(default_factory=dict)
    origins: dict[str, dict[str, int]] = Field(default_factory=dict)
    operator_stats: OperatorStats = Field(default_factory=OperatorStats)


class Rates(Record):
    """Per-layer attention and MLP rates, with their fitness when scored."""

    attn: list[float]
    mlp: list[float]
    fitness: float | None = None


class BestRates(Rates):
    """The rates a run pruned with: the winning operator's best genome."""

    operator: str
    origin: str | None = None
    achieved: Any = None


class OperatorRecord(Record):
    best: Rates
    report: SearchReport
    files: dict[str, str] = Field(default_factory=dict)


class ProblemRecord(Record):
    """The search problem a run's rates were found on: importance, calibration and fitness
    (evolution/setup.py's ``SearchSetup`` fingerprint, with the fitness's name and size)."""

    metric: str
    calib: str
    calib_samples: int
    calib_seqlen: int
    fitness: str
    fitness_name: str | None = None  # as prompts and plots name it, e.g. "perplexity"
    fitness_tokens: int | None = None
    fitness_samples: list[int]
    fitness_seqlen: int
    num_layers: int | None = None


class SearchRecord(Record):
    """Every operator's result on one problem, the uniform baseline and the winner."""

    operators: dict[str, OperatorRecord]
    uniform: Rates
    best: BestRates


class RunBudget(Record):
    fitness_evals: int
    fitness_tokens: int
    llm_tokens: int = 0
    search_seconds: float
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    total_seconds: float


class RunFiles(Record):
    """The run directory's files, relative to it (None: not written)."""

    config: str
    environment: str
    model: str | None = None
    gguf: str | None = None
    recovered: str | None = None
    log: str | None = None


class RunResults(Record):
    """A run's ``results.json``."""

    format: int
    model: str
    ratio: float
    preset: str
    seed: int
    problem: ProblemRecord
    search: SearchRecord
    best: BestRates
    prune: dict[str, Any]  # the pruning summary (pruning/apply.py)
    models: dict[str, dict[str, Any]]  # dense, pruned[, recovered]: params, perplexity, zeroshot
    speed: dict[str, Any] | None = None  # eval/speed.py
    export: dict[str, Any] | None = None
    budget: RunBudget
    warnings: list[str] = Field(default_factory=list)
    files: RunFiles
