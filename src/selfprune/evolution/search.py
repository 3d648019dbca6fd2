"""The one entry point of the search: score importance once, run each operator on the same
problem and budget, and return every operator's result and the winner.

``selfprune search``, ``selfprune run`` and the benchmarks all come through ``search``; the loop
itself (``loop.Search``) knows nothing of models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from selfprune.evolution.genome import Genome, GenomeSpace
from selfprune.evolution.llm.backends import make_backend
from selfprune.evolution.llm.operator import LLMSettings
from selfprune.evolution.loop import Search, SearchResult
from selfprune.evolution.options import SearchOptions
from selfprune.evolution.parallel import ParallelFitness, import_ray
from selfprune.evolution.problem import SearchProblem, build_search_problem
from selfprune.evolution.setup import SearchSetup
from selfprune.evolution.strategies import get_strategy
from selfprune.pruning.options import PruneOptions

RESULT_FILES = ("history.json", "best.json", "report.json")


@dataclass
class SearchOutcome:
    """Every operator's result on one problem, and the uniform baseline they all must beat."""

    problem: SearchProblem
    space: GenomeSpace
    results: dict[str, SearchResult]
    dirs: dict[str, Path | None]
    uniform: Genome
    uniform_fitness: float
    setup: SearchSetup

    @property
    def winner(self) -> str:
        return min(self.results, key=lambda name: self.results[name].best.fitness)

    @property
    def best(self) -> SearchResult:
        return self.results[self.winner]

    def to_json(self, root: Path | None = None) -> dict[str, Any]:
        """The search as ``results.json`` of a run records it (paths relative to ``root``)."""
        operators = {}
        for name, result in self.results.items():
            best, folder = result.best, self.dirs.get(name)
            operators[name] = {
                "best": {"attn": list(best.genome.attn), "mlp": list(best.genome.mlp), "fitness": best.fitness,
                         "origin": best.origin},
                "report": result.report,
                "files": {f: str((folder / f).relative_to(root) if root else folder / f) for f in RESULT_FILES}
                if folder else {},
            }
        winner = operators[self.winner]["best"]
        p = self.problem
        return {
            "problem": {**self.setup.fingerprint(), "fitness_name": p.fitness.display_name, "num_layers": p.num_layers,
                        "fitness_tokens": p.fitness.tokens(p.fitness.num_stages - 1),
                        "attn_levels": list(p.attn_levels), "mlp_step": p.mlp_step},
            "operators": operators,
            "uniform": {"attn": list(self.uniform.attn), "mlp": list(self.uniform.mlp), "fitness": self.uniform_fitness},
            "best": dict(winner, operator=self.winner, achieved=self.space.achieved(self.best.best.genome)),
        }


def make_chat_backend(options: SearchOptions, model=None, tokenizer=None, trust_remote_code: bool = False):
    """The operator LLM's backend: a server, a second local model, or the model being pruned."""
    return make_backend(options.llm, base_url=options.llm_base_url, self_model=model, self_tokenizer=tokenizer,
                        api_key_env=options.llm_api_key_env, timeout=options.llm_timeout,
                        trust_remote_code=trust_remote_code)


def search(model, tokenizer, ratio: float, prune: PruneOptions | None = None, options: SearchOptions | None = None,
           seed: int = 0, out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
           backend: Any = None, per_operator_dirs: bool | None = None, model_name: str | None = None,
           on_operator: Callable[[str], None] | None = None, problem: SearchProblem | None = None,
           trust_remote_code: bool = False) -> SearchOutcome:
    """Search per-layer rates of ``model`` at mean rate ``ratio`` with each operator in ``options``.

    Each operator writes its checkpoint, history and report into ``out_dir`` (one folder per
    operator when several run, or when ``per_operator_dirs``); ``resume`` continues them.
    ``backend`` is an already checked chat backend for the LLM operator (else one is made).
    ``problem``: one built earlier for the same model, options and seed (scored once, reused).
    ``trust_remote_code``: a ``local:`` operator model may run the code it ships.
    ``model_name``: the model as the user named it; the setup every result file records says it.
    """
    prune, options = prune or PruneOptions(), options or SearchOptions()
    parallel = options.workers > 1 or options.ray_address is not None
    if parallel:
        import_ray()  # before the calibration pass: a missing extra fails fast
    problem = problem or build_search_problem(model, tokenizer, ratio, prune, options, seed=seed, progress=progress,
                                              model_name=model_name)
    setup = problem.setup if model_name is None else problem.setup.model_copy(update={"model": model_name})
    fitness = (ParallelFitness(problem.fitness, options.fitness, options.workers, options.ray_address)
               if parallel else problem.fitness)
    try:
        return _search(problem, fitness, model, tokenizer, ratio, options, seed, out_dir, resume, progress, backend,
                       per_operator_dirs, setup, on_operator, trust_remote_code)
    finally:
        if parallel:
            fitness.close()


def _search(problem, fitness, model, tokenizer, ratio, options, seed, out_dir, resume, progress, backend,
            per_operator_dirs, setup, on_operator, trust_remote_code=False) -> SearchOutcome:
    space = GenomeSpace.from_problem(problem, ratio, bounds=(options.min_rate, options.max_rate),
                                     budget=options.budget, joint=options.joint)
    uniform, _ = space.repair(np.full(space.dim, ratio))  # the baseline every search must beat
    split = per_operator_dirs if per_operator_dirs is not None else len(options.operator) > 1
    results: dict[str, SearchResult] = {}
    dirs: dict[str, Path | None] = {}
    uniform_fitness = None
    for name in options.operator:
        if on_operator:
            on_operator(name)
        strategy = get_strategy(name)
        config = strategy.config(options.population, options.generations, options.crossover, options.mutation,
                                 options.max_evals, max_tokens=options.max_tokens, seed=seed, init=options.init,
                                 stage_keep=tuple(options.stage_keep) if options.stage_keep else None)
        if strategy.uses_llm and backend is None:
            backend = make_chat_backend(options, model, tokenizer, trust_remote_code)
        operator = strategy.make(backend, LLMSettings.from_options(options))
        folder = (Path(out_dir) / name if split else Path(out_dir)) if out_dir else None
        loop = Search(space, fitness, operator, config, profiles=problem.profiles, out_dir=folder,
                      progress=progress, setup=setup)
        results[name], dirs[name] = loop.run(resume=resume), folder
        if uniform_fitness is None:  # most operators score the uniform genome first: reuse it
            uniform_fitness = results[name].fitness_of(uniform, problem.fitness.num_stages - 1)
    if uniform_fitness is None:
        uniform_fitness = problem.fitness(*uniform.arrays(), stage=problem.fitness.num_stages - 1)
    return SearchOutcome(problem, space, results, dirs, uniform, uniform_fitness, setup)
