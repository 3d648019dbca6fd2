"""One call from a model name to searched rates: validate, score importance once, search.

Everything that can be checked cheaply (target feasible within the bounds, operator name, LLM
server reachable, model served, API key present) is checked before the model is loaded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from selfprune.errors import SelfpruneError
from selfprune.atomic import atomic_write_json
from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.loop import Search, SearchResult
from selfprune.versions import versions
from selfprune.evolution.strategies import OPERATORS, make_operator, strategy_config

def check_target(ratio: float, bounds: tuple[float, float]) -> None:
    """Fail early when no genome within the bounds can meet the target."""
    lo, hi = bounds
    if not 0.0 <= lo <= hi <= 1.0:
        raise SelfpruneError(f"rate bounds must satisfy 0 <= --min-rate <= --max-rate <= 1, got [{lo}, {hi}]")
    if not lo <= ratio <= hi:
        raise SelfpruneError(f"target ratio {ratio:g} lies outside the rate bounds [{lo:g}, {hi:g}]; "
                             "lower --ratio or widen --min-rate/--max-rate")


def search_model(
    model: str,
    ratio: float,
    operator: str = "llm",
    out_dir: str | Path | None = None,
    resume: bool = False,
    llm: str = "self",
    llm_base_url: str | None = None,
    llm_api_key_env: str = "OPENAI_API_KEY",
    llm_timeout: float = 120.0,
    llm_share: float = 0.3,
    population: int = 30,
    generations: int = 20,
    crossover: int = 10,
    mutation: int = 10,
    max_evals: int | None = None,
    fitness: str = "ppl",
    fitness_samples: Sequence[int] | None = None,
    fitness_seqlen: int = 512,
    stage_keep: Sequence[float] | None = None,
    budget: str = "mean",
    bounds: tuple[float, float] = (0.0, 0.9),
    joint: bool = False,
    metric: str = "wanda-sp",
    calib: str = "lambada",
    calib_samples: int = 32,
    calib_seqlen: int = 256,
    attn_granularity: str = "head",
    mlp_multiple: int = 1,
    bias_compensation: bool | None = None,
    seed: int = 0,
    progress: bool = True,
    command: dict[str, Any] | None = None,
) -> SearchResult:
    """Search per-layer rates for ``model`` at mean rate ``ratio``; see ``selfprune search --help``."""
    from selfprune.evolution.llm.backends import make_backend
    from selfprune.evolution.llm.operator import LLMSettings

    if operator not in OPERATORS:
        raise SelfpruneError(f"unknown operator '{operator}'; choose one of {', '.join(OPERATORS)}")
    check_target(ratio, bounds)
    samples = list(fitness_samples or [4])
    if stage_keep is None and len(samples) > 1:
        stage_keep = [0.25] * (len(samples) - 1)
    if stage_keep is not None and len(stage_keep) != len(samples) - 1:
        raise SelfpruneError(f"--stage-keep needs one fraction per fitness stage but the last ({len(samples) - 1})")
    config = strategy_config(operator, population, generations, crossover, mutation, max_evals, seed=seed,
                             stage_keep=tuple(stage_keep) if stage_keep else None)
    config.validate()
    backend = None
    if operator == "llm" and llm != "self":  # a server or second model: check it before the big load
        backend = make_backend(llm, base_url=llm_base_url, api_key_env=llm_api_key_env, timeout=llm_timeout)

    from selfprune.models.loading import load_model
    from selfprune.evolution.fitness import build_search_problem

    t0 = time.perf_counter()
    model_obj, tokenizer = load_model(model)
    problem = build_search_problem(
        model_obj, tokenizer, ratio, metric=metric, fitness=fitness, calib=calib, calib_samples=calib_samples,
        calib_seqlen=calib_seqlen, fitness_samples=samples, fitness_seqlen=fitness_seqlen, seed=seed,
        attn_granularity=attn_granularity, mlp_multiple=mlp_multiple, bias_compensation=bias_compensation,
        progress=progress,
    )
    setup_s = time.perf_counter() - t0
    space = GenomeSpace.from_problem(problem, ratio, bounds=bounds, budget=budget, joint=joint)
    if operator == "llm" and backend is None:
        backend = make_backend(llm, self_model=model_obj, self_tokenizer=tokenizer)
    op = make_operator(operator, backend, LLMSettings(share=llm_share))
    meta = {"model": model, "problem": problem.info, "setup_seconds": round(setup_s, 3), "versions": versions(),
            "llm": llm if operator == "llm" else None, "llm_base_url": llm_base_url}
    if out_dir:
        atomic_write_json(Path(out_dir) / "config.json", {"command": command, "config": config.to_json(),
                                                          "space": space.to_json(), **meta})
    search = Search(space, problem.fitness, op, config, profiles=problem.profiles, out_dir=out_dir,
                    progress=progress, meta=meta)
    return search.run(resume=resume)

