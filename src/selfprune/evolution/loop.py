"""The evolutionary loop: initial population -> evaluate -> (select parents, crossover, mutation)
-> repair, de-duplicate, evaluate (optionally in stages) -> survivors, for N generations.

Survivor selection is (mu + lambda): parents and offspring compete, so the best genome is never
lost (elitism). After every generation the whole state is written atomically to
``OUT/checkpoint.json``; ``run(resume=True)`` continues from it and, with the same seed and a
deterministic operator, reaches the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selfprune.atomic import atomic_write_json
from selfprune.errors import SelfpruneError
from selfprune.evolution.budget import Budget
from selfprune.evolution.checkpoint import (
    CHECKPOINT_VERSION,
    fixed_settings,
    read_checkpoint,
    setup_mismatch,
    write_checkpoint,
)
from selfprune.evolution.evaluator import Evaluator
from selfprune.evolution.genome import Genome, GenomeSpace, RepairStats
from selfprune.evolution.operators.base import Operator
from selfprune.evolution.operators.seeds import INITS, level_switches
from selfprune.evolution.operators.types import Context, Individual, Move, MoveRecord, Proposal
from selfprune.evolution.transcript import Transcript
from selfprune.results import SearchReport

if TYPE_CHECKING:
    from selfprune.evolution.setup import SearchSetup


@dataclass(frozen=True)
class SearchConfig:
    """The loop's settings, made from ``SearchOptions`` by a strategy (strategies.py); no defaults of its
    own for the sizes, so the options are the one place they are set."""

    population: int
    generations: int
    crossover: int  # offspring by crossover per generation
    mutation: int  # offspring by mutation per generation
    max_evals: int | None = None  # stop when this many fitness evaluations (all stages) are spent
    max_tokens: int | None = None  # ... or this many fitness tokens
    seed: int = 0
    stage_keep: tuple[float, ...] | None = None  # fraction of offspring promoted at each stage
    duplicate_retries: int = 3  # how often a duplicate is nudged before it is dropped
    init: str = "seeded"  # the initial population: priors ("seeded") or noise around uniform
    initial: int | None = None  # initial genomes evaluated (default: population); the best population survive

    def validate(self) -> None:
        if self.population < 1:
            raise SelfpruneError("--population must be at least 1")
        if self.generations < 0 or self.crossover < 0 or self.mutation < 0:
            raise SelfpruneError("--generations and offspring counts must not be negative")
        if self.max_evals is not None and self.max_evals < 1:
            raise SelfpruneError("the evaluation budget must be at least 1")
        if self.stage_keep is not None and not all(0 < k <= 1 for k in self.stage_keep):
            raise SelfpruneError("stage keep fractions must lie in (0, 1]")
        if self.init not in INITS:
            raise SelfpruneError(f"unknown init '{self.init}'; choose one of {', '.join(INITS)}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stage_keep"] = list(self.stage_keep) if self.stage_keep else None
        return d


@dataclass
class SearchResult:
    best: Individual
    population: list[Individual]
    history: list[dict[str, Any]]
    report: dict[str, Any]
    evaluated: dict[tuple[int, ...], dict[int, float]] = field(default_factory=dict)  # genome key -> stage -> fitness

    def fitness_of(self, genome: Genome, stage: int | None = None) -> float | None:
        """The fitness this search measured for ``genome`` (last stage by default), or None."""
        entry = self.evaluated.get(genome.key, {})
        return entry.get(max(entry) if stage is None and entry else stage) if entry else None


def median(values: list[float]) -> float:
    if not values:
        return math.inf
    values, n = sorted(values), len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


@dataclass
class _State:
    generation: int = 0  # generations completed
    population: list[Individual] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    origins: dict[str, dict[str, int]] = field(default_factory=dict)
    moves: list[MoveRecord] = field(default_factory=list)
    next_id: int = 0
    stalled: int = 0
    wall: float = 0.0  # seconds spent in earlier sessions of this search


class Search:
    """One search: a genome space, a fitness, an operator and a budget; optionally a folder."""

    def __init__(
        self,
        space: GenomeSpace,
        fitness: Any,
        operator: Operator,
        config: SearchConfig,
        profiles: dict[str, np.ndarray] | None = None,
        out_dir: str | Path | None = None,
        progress: bool = False,
        setup: SearchSetup | None = None,
    ):
        config.validate()
        self.space = space
        self.operator = operator
        self.config = config
        self.profiles = {k: np.asarray(v, dtype=float) for k, v in (profiles or {}).items()}
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress = progress
        self.setup = setup
        self.budget = Budget()
        self.evaluator = Evaluator(fitness, self.budget, config.max_evals, config.max_tokens)
        self.repairs = RepairStats()
        self.rng = np.random.default_rng(config.seed)
        self.state = _State()
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.transcript = Transcript(self.out_dir / "transcript.jsonl" if self.out_dir else None)
        self._t0 = time.perf_counter()

    # ---- public -----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> SearchResult:
        self._t0 = time.perf_counter()
        snap = read_checkpoint(self.out_dir) if resume and self.out_dir else None
        if snap is not None:
            self._load(snap)
        else:
            if resume and self.out_dir:
                print(f"no checkpoint in {self.out_dir}; starting a new search", flush=True)
            if self.out_dir:
                self.transcript.truncate(0)
            self._initialise()
            self._checkpoint()
        bar = self._bar()
        try:
            while self.state.generation < self.config.generations and not self.evaluator.exhausted():
                if self.config.crossover + self.config.mutation == 0:
                    break
                self._generation()
                self._checkpoint()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(best=f"{self.state.population[0].fitness:.4g}", evals=self.budget.total_evals)
        finally:  # an error message starts on a line of its own
            if bar is not None:
                bar.close()
        return self._finish()

    # ---- generations ------------------------------------------------------------------------
    def _context(self) -> Context:
        return Context(
            space=self.space, population=self.state.population, rng=self.rng, profiles=self.profiles,
            generation=self.state.generation, stalled=self.state.stalled, moves=self.state.moves,
            log=self._log, fitness_name=getattr(self.evaluator.fitness, "display_name", "fitness"),
            init=self.config.init,
        )

    def _log(self, record: dict[str, Any]) -> None:
        self.transcript.log({"generation": self.state.generation, **record})

    def _initialise(self) -> None:
        with self.budget.timed("operators"):
            proposals = self.operator.initial(self._context(), self.config.initial or self.config.population)
        genomes, props = self._admit(proposals, set())
        scored = self.evaluator.staged(genomes, None)
        if not scored:
            raise SelfpruneError("the evaluation budget does not cover a single evaluation; raise it")
        pop = [self._individual(genomes[i], value, props[i]) for i, value in scored]
        for ind in pop:
            self._origin(ind.origin)["survived"] += 1
        self.state.population = sorted(pop, key=lambda ind: ind.fitness)[: self.config.population]
        self._record_history(len(genomes))

    def _generation(self) -> None:
        ctx = self._context()
        with self.budget.timed("operators"):
            proposals = self.operator.crossover(ctx, self.config.crossover) if self.config.crossover else []
            proposals += self.operator.mutate(ctx, self.config.mutation) if self.config.mutation else []
        pop_keys = {ind.genome.key for ind in self.state.population}
        genomes, props = self._admit(proposals, pop_keys)
        scored = self.evaluator.staged(genomes, self.config.stage_keep if self.evaluator.num_stages > 1 else None)
        by_id = {ind.id: ind for ind in self.state.population}
        children = []
        for i, value in scored:
            child = self._individual(genomes[i], value, props[i])
            children.append(child)
            if props[i].moves and len(props[i].parents) == 1 and props[i].parents[0] in by_id:
                self.state.moves.append(MoveRecord(props[i].moves, by_id[props[i].parents[0]].fitness, value))
        old_best = self.state.population[0].fitness
        merged = sorted(self.state.population + children, key=lambda ind: (ind.fitness, ind.id))
        survivors = merged[: self.config.population]
        child_ids = {c.id for c in children}
        for ind in survivors:
            if ind.id in child_ids:
                self._origin(ind.origin)["survived"] += 1
        if survivors[0].fitness < old_best - 1e-12:
            self._origin(survivors[0].origin)["best"] += 1
            self.state.stalled = 0
        else:
            self.state.stalled += 1
        self.state.population = survivors
        self.state.generation += 1
        self._record_history(len(genomes))

    def _admit(self, proposals: list[Proposal], taken: set) -> tuple[list[Genome], list[Proposal]]:
        """Repair proposals and nudge duplicates (of the population, of anything evaluated, or of
        each other) by one level move until they are new, or drop them."""
        genomes, props = [], []
        taken = set(taken)
        for prop in proposals:
            stats = self._origin(prop.origin)
            stats["proposed"] += 1
            genome, events = self.space.repair(prop.vector)
            self.repairs.add(list(events) + list(prop.events))
            tries = 0
            while (genome.key in taken or self.evaluator.seen(genome)) and tries < self.config.duplicate_retries:
                if tries == 0:
                    self.budget.duplicates += 1
                    stats["duplicates"] += 1
                nudged, _ = level_switches(np.array(genome.vector), self.space, self.rng, 1)
                genome, _ = self.space.repair(nudged)
                tries += 1
            if genome.key in taken or self.evaluator.seen(genome):
                self.budget.dropped += 1
                continue
            taken.add(genome.key)
            genomes.append(genome)
            props.append(prop)
        return genomes, props

    def _individual(self, genome: Genome, value: float, prop: Proposal) -> Individual:
        ind = Individual(genome, value, self.state.next_id, prop.origin, tuple(prop.parents))
        self.state.next_id += 1
        self._origin(prop.origin)["evaluated"] += 1
        return ind

    def _origin(self, origin: str) -> dict[str, int]:
        return self.state.origins.setdefault(origin, {"proposed": 0, "duplicates": 0, "evaluated": 0, "survived": 0, "best": 0})

    def _record_history(self, offspring: int) -> None:
        pop = self.state.population
        finite = [ind.fitness for ind in pop if math.isfinite(ind.fitness)]
        self.state.history.append({
            "generation": self.state.generation,
            "best": pop[0].fitness,
            "mean": float(np.mean(finite)) if finite else math.inf,
            # With a few hopeless candidates in the population the mean says little; the median
            # says how the population moves.
            "median": median(finite),
            "best_origin": pop[0].origin,
            "offspring": offspring,
            "evals": self.budget.total_evals,
            "tokens": self.budget.total_tokens,
            "wall_s": round(self._wall(), 3),
        })

    def _wall(self) -> float:
        return self.state.wall + time.perf_counter() - self._t0

    # ---- checkpoint and resume ----------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        s = self.state
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_json(),
            "space": self.space.to_json(),
            "operator": self.operator.name,
            "setup": self._fingerprint(),
            "generation": s.generation,
            "population": [ind.to_json() for ind in s.population],
            "history": s.history,
            "origins": s.origins,
            "moves": [{"moves": [m.to_json() for m in r.moves], "parent": r.parent_fitness, "child": r.child_fitness}
                      for r in s.moves],
            "next_id": s.next_id,
            "stalled": s.stalled,
            "wall": self._wall(),
            "rng": self.rng.bit_generator.state,
            "budget": self.budget.to_json(),
            "repairs": self.repairs.to_json(),
            "evaluator": self.evaluator.state_dict(),
            "operator_state": self.operator.state_dict(),
            "transcript_lines": self.transcript.lines,
        }

    def _checkpoint(self) -> None:
        if not self.out_dir:
            return
        t0 = time.perf_counter()
        snap = self._snapshot()
        write_checkpoint(self.out_dir, snap)
        self.budget.add_seconds("checkpoint", time.perf_counter() - t0)

    def _load(self, snap: dict[str, Any]) -> None:
        differs = (setup_mismatch(fixed_settings(snap["config"]), fixed_settings(self.config.to_json()))
                   or setup_mismatch(snap["space"], self.space.to_json())
                   or setup_mismatch({"operator": snap["operator"]}, {"operator": self.operator.name})
                   or setup_mismatch(snap["setup"], self._fingerprint()))
        if differs:
            raise SelfpruneError(f"the checkpoint in {self.out_dir} was made with {differs}; resume with the same "
                                 "settings, or use a new --out folder")
        s = self.state
        s.generation = snap["generation"]
        s.population = [Individual.from_json(d) for d in snap["population"]]
        s.history = snap["history"]
        s.origins = snap["origins"]
        s.moves = [MoveRecord(tuple(Move(**m) for m in r["moves"]), r["parent"], r["child"]) for r in snap["moves"]]
        s.next_id = snap["next_id"]
        s.stalled = snap["stalled"]
        s.wall = snap["wall"]
        self.rng.bit_generator.state = snap["rng"]
        self.budget.__dict__.update(Budget.from_json(snap["budget"]).__dict__)
        self.repairs = RepairStats.from_json(snap["repairs"])
        self.evaluator.load_state_dict(snap["evaluator"])
        self.operator.load_state_dict(snap["operator_state"])
        self.transcript.truncate(snap["transcript_lines"])

    def _fingerprint(self) -> dict[str, Any]:
        """What the fitness values and the operator's behaviour depend on beyond the loop's config: the
        search's setup (fitness, calibration, metric, the data's hashes, the model, ...) and the operator's
        own settings (LLM backend, shares, ...). A resume must match all of it, or the cached fitness values
        would be mixed with another setup's."""
        return {**(self.setup.fingerprint() if self.setup else {}), **self.operator.setup()}

    # ---- results ----------------------------------------------------------------------------
    def _bar(self):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.generations, initial=self.state.generation, desc=f"search[{self.operator.name}]",
                    unit="gen", dynamic_ncols=True)

    def report(self) -> dict[str, Any]:
        best = self.state.population[0]
        self.budget.seconds["total"] = round(self._wall(), 3)
        return SearchReport.model_validate({
            "operator": self.operator.name,
            "best_fitness": best.fitness,
            "generations": self.state.generation,
            "achieved": self.space.achieved(best.genome),
            "budget": self.budget.to_json(),
            "repairs": self.repairs.to_json(),
            "origins": self.state.origins,
            "operator_stats": self.operator.stats(),
        }).to_json()

    def _finish(self) -> SearchResult:
        report = self.report()
        best = self.state.population[0]
        if self.out_dir:
            atomic_write_json(self.out_dir / "best.json", {
                "rates": best.genome.to_rates(), "fitness": best.fitness, "target": self.space.target,
                "budget": self.space.budget, "achieved": report["achieved"], "origin": best.origin,
                **({"made_with": self.setup.made_with()} if self.setup else {}),
            })
            atomic_write_json(self.out_dir / "history.json", self.state.history)
            atomic_write_json(self.out_dir / "report.json", {**report, "config": self.config.to_json(),
                                                             "space": self.space.to_json(),
                                                             **({"setup": self.setup.to_json()} if self.setup else {})})
        evaluated = {k: dict(v) for k, v in self.evaluator.cache.items()}
        return SearchResult(best, list(self.state.population), list(self.state.history), report, evaluated)
