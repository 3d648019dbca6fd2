"""One run, end to end: search -> prune with the best rates -> save -> evaluate -> speed -> report.

Everything that can be checked without loading a model is checked first (``preflight``), so a bad
config fails in seconds and writes nothing. The run then works in ``DIR``, records each completed
stage, and marks the folder complete at the end; a failed or killed run keeps its folder (log,
search checkpoints, finished stages) and ``--resume`` continues it.

``DIR/results.json`` is the single source of the report; the search's own files (history,
checkpoint, operator transcript) stay under ``DIR/search/<operator>/``.
"""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfprune.atomic import atomic_write_json, normal_permissions, replace_dir
from selfprune.config import RunConfig, load_config, merge, resolve
from selfprune.errors import SelfpruneError
from selfprune.eval.speed import count_params
from selfprune.eval.speed import speed as measure
from selfprune.eval.suite import EvalSuite
from selfprune.evolution.search import search
from selfprune.export.gguf import export_gguf
from selfprune.models.loading import load_model
from selfprune.outputs import RUN, staging_dir, write_marker
from selfprune.preflight import Preflight, check_run
from selfprune.pruning.pipeline import prune_model
from selfprune.recover.distill import recover
from selfprune.report import build_report
from selfprune.results import RESULTS_FORMAT, RunResults, SearchRecord
from selfprune.stages import Stages, log, logging_to
from selfprune.versions import versions

RESULTS = "results.json"
CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
LOG = "run.log"
PROGRESS = "progress.json"  # the results of completed stages, until the run is complete


@dataclass
class RunResult:
    dir: Path
    results: dict


def run(model: str | None = None, ratio: float | None = None, out: str | None = None,
        config: str | Path | RunConfig | None = None, resume: bool = False, overwrite: bool = False,
        **sections: Any) -> RunResult:
    """The whole job from Python, like ``selfprune run``: ``config`` is a RunConfig or a YAML
    path; ``model``, ``ratio``, ``out`` and sections given as dicts override it, e.g.
    ``run("default", 0.3, "runs/smollm2", search={"population": 4}, eval={"tasks": ["piqa"]})``.
    ``resume`` continues an unfinished run in ``out``; ``overwrite`` replaces an earlier one."""
    overrides = dict(sections)
    overrides.update({k: v for k, v in (("model", model), ("ratio", ratio)) if v is not None})
    if out is not None:
        overrides["output"] = {**overrides.get("output", {}), "dir": str(out)}
    if isinstance(config, RunConfig):
        cfg = resolve(merge(config.model_dump(), overrides))
    else:
        cfg = load_config(config, overrides)
    return execute(cfg, resume=resume, overwrite=overwrite)


def environment(cfg: RunConfig, device: str, argv: list[str] | None) -> dict:
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


def execute(cfg: RunConfig, argv: list[str] | None = None, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run ``cfg`` into ``cfg.output.dir``; returns the directory and the results dict.

    The run works in its folder and marks it complete at the end; a failed or killed run keeps its
    folder (log, search checkpoints, finished stages), and ``resume`` continues it from the last
    completed stage. ``overwrite`` replaces an earlier run's folder, which stays until the new run
    is complete (the new one works in a hidden folder beside it, ``.DIR.next``)."""
    pre = check_run(cfg, resume=resume, overwrite=overwrite)
    final = pre.out
    work = staging_dir(final) if overwrite and final.is_dir() and any(final.iterdir()) else final
    progress = _start(work, cfg, resume)
    log_path = Path(cfg.output.log_file).expanduser() if cfg.output.log_file else work / LOG
    again = f"--resume{' --overwrite' if work != final else ''}"
    try:
        with logging_to(log_path, cfg.output.quiet):
            try:
                for warning in pre.warnings:
                    log.warning(warning)
                if progress:
                    log.info("resuming after the completed stages: %s", ", ".join(progress))
                atomic_write_json(work / ENVIRONMENT, environment(cfg, pre.device, argv))
                results = _stages(cfg, pre, work, Stages(cfg.output.quiet, log_path), progress)
                results["files"]["log"] = LOG if log_path.parent == work else str(log_path)
                atomic_write_json(work / RESULTS, results)
                build_report(work)
            except BaseException:
                log.exception("the run stopped", extra={"console": False})  # the screen gets one line
                raise
        (work / PROGRESS).unlink(missing_ok=True)
        write_marker(work, RUN, complete=True)
        normal_permissions(work)
    except SelfpruneError as exc:
        if work == final and "--resume" in str(exc):
            raise SelfpruneError(f"{exc} (the unfinished run is kept in {work})") from None
        raise SelfpruneError(f"{exc} (the unfinished run is kept in {work}: fix that, then continue it with "
                             f"the same command and {again})") from None
    except BaseException:
        print(f"selfprune: the unfinished run is kept in {work}; continue it with the same command and {again}",
              file=sys.stderr, flush=True)
        raise
    if work != final:
        replace_dir(work, final)
    return RunResult(final, results)


def _start(work: Path, cfg: RunConfig, resume: bool) -> dict:
    """Mark ``work`` as an unfinished run (a new one), or check that it is the same run (a
    resume); returns the results of its completed stages."""
    if not resume or not (work / CONFIG).is_file():
        work.mkdir(parents=True, exist_ok=True)
        write_marker(work, RUN, complete=False)
        (work / CONFIG).write_text(cfg.to_yaml(), encoding="utf-8")
        atomic_write_json(work / PROGRESS, {})
        return {}
    differs = _config_differs(work / CONFIG, cfg)
    if differs:
        raise SelfpruneError(f"cannot resume the run in {work}: it was started with {differs}; resume with the "
                             "same settings, or start a new run in a new folder")
    write_marker(work, RUN, complete=False)
    try:
        progress = json.loads((work / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        progress = {}
    return progress if isinstance(progress, dict) else {}


def _config_differs(saved: Path, cfg: RunConfig) -> str:
    """The fields (outside ``output``) on which the saved config and ``cfg`` differ, as one phrase."""
    try:  # resolved again, so that a field added since has its default on both sides
        before = load_config(saved).model_dump(mode="json")
    except (OSError, SelfpruneError):
        return f"a config.yaml that cannot be read ({saved})"
    now = cfg.model_dump(mode="json")
    differs = []
    for key in sorted(set(before) | set(now)):
        if key == "output":
            continue
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differs += [f"{key}.{f} {a.get(f)!r} (now {b.get(f)!r})" for f in sorted(set(a) | set(b))
                        if a.get(f) != b.get(f)]
        elif a != b:
            differs.append(f"{key} {a!r} (now {b!r})")
    return ", ".join(differs)


def _done(work: Path, progress: dict, name: str, value: Any) -> Any:
    """Record a completed stage's result, so that a resume skips the stage."""
    progress[name] = value
    atomic_write_json(work / PROGRESS, progress)
    return value


def _recover(cfg: RunConfig, pre: Preflight, work: Path, stage: Stages, evaluate: EvalSuite, pruned, dense,
              tokenizer) -> dict:
    """Distil a copy of the pruned model toward the dense one; the pruned model stays as measured."""
    options = cfg.recover.to_recover_options(seed=cfg.seed, device=pre.device, progress=not cfg.output.quiet)
    with stage("recover") as bar:
        result = recover(copy.deepcopy(pruned.model), tokenizer, teacher=dense, teacher_tokenizer=tokenizer,
                         options=options, exclude_texts=[pre.eval_text.text] if pre.eval_text is not None else ())
        result.pruning_summary = pruned.summary
        if cfg.output.save_model:
            result.save(work / "recovered", overwrite=True)  # this run's own folder: a resume rewrites it
        bar.update(1)
    out = {"params": count_params(result.model)}
    if evaluate.steps:
        with stage("eval recovered", evaluate.steps) as bar:
            out.update(evaluate(result.model, tokenizer, bar))
    s = result.summary
    out["recovery"] = {"method": s["method"], "data": s["data"], "training": s["training"], "heldout": s["heldout"],
                       "wall_time_s": s["wall_time_s"]}
    return out


def _stages(cfg: RunConfig, pre: Preflight, work: Path, stage: Stages, progress: dict) -> dict:
    """Every stage of the run; those recorded in ``progress`` (a resume) are not run again."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    with stage("load") as bar:
        model, tokenizer = load_model(pre.model_path, device=None if cfg.device_map else pre.device, dtype=cfg.dtype,
                                      device_map=cfg.device_map, trust_remote_code=cfg.trust_remote_code)
        bar.update(1)

    with stage("search", len(cfg.search.operator)) as bar:
        started: list[str] = []

        def next_operator(name: str) -> None:
            bar.update(1 if started else 0)
            started.append(name)
            bar.set_postfix_str(name)

        found = search(model, tokenizer, cfg.ratio, cfg.prune, cfg.search, seed=cfg.seed, out_dir=work / "search",
                       resume=(work / "search").is_dir(), progress=not cfg.output.quiet, backend=pre.backend,
                       per_operator_dirs=True, on_operator=next_operator, trust_remote_code=cfg.trust_remote_code,
                       model_name=cfg.model)
        bar.update(1)
    searched = found.to_json(work)
    found.problem.fitness.release()  # the dense blocks go once the model is pruned in place
    best = searched["best"]

    models: dict[str, dict] = {"dense": {}, "pruned": {}}
    evaluate = EvalSuite(cfg.eval, pre.eval_text, pre.tasks, quiet_libraries=stage.library_output)
    if "eval dense" in progress:
        models["dense"] = dict(progress["eval dense"])
    elif cfg.eval.dense and evaluate.steps:
        with stage("eval dense", evaluate.steps) as bar:
            models["dense"] = _done(work, progress, "eval dense", evaluate(model, tokenizer, bar))
    # The dense model is measured beside the pruned one and is the teacher of the recovery.
    dense = copy.deepcopy(model) if cfg.bench.enabled or cfg.recover.enabled else None
    models["dense"]["params"] = count_params(model)
    with stage("prune") as bar:
        pruned = prune_model(model, tokenizer, attn_rates=list(best["attn"]), mlp_rates=list(best["mlp"]),
                             options=cfg.prune, seed=cfg.seed, scores=found.problem.scores, progress=False)
        pruned.summary.update(model=cfg.model, rates_from=f"search ({best['operator']})")
        bar.update(1)
    models["pruned"]["params"] = count_params(pruned.model)
    if cfg.output.save_model and not ("save" in progress and (work / "model").is_dir()):
        with stage("save") as bar:
            pruned.save(work / "model", overwrite=True)  # this run's own folder: a resume rewrites it
            _done(work, progress, "save", "model")
            bar.update(1)
    exported = progress.get("export")
    if cfg.output.export == "gguf" and exported is None:
        with stage("export") as bar:
            exported = export_gguf(work / "model", work / "model.gguf", cfg.output.export_outtype, overwrite=True)
            exported["path"] = "model.gguf"
            _done(work, progress, "export", exported)
            bar.update(1)
    if "eval pruned" in progress:
        models["pruned"].update(progress["eval pruned"])
    elif evaluate.steps:
        with stage("eval pruned", evaluate.steps) as bar:
            models["pruned"].update(_done(work, progress, "eval pruned", evaluate(pruned.model, tokenizer, bar)))

    if cfg.recover.enabled:
        models["recovered"] = progress.get("recover") or _done(
            work, progress, "recover", _recover(cfg, pre, work, stage, evaluate, pruned, dense, tokenizer))

    speed = progress.get("speed")
    if dense is not None and cfg.bench.enabled and speed is None:
        b = cfg.bench
        with stage("speed") as bar:
            speed = measure({"dense": dense, "pruned": pruned.model}, prefill_shapes=[tuple(s) for s in b.shapes],
                            decode_batches=tuple(b.decode_batches), prompt_len=b.prompt_len,
                            decode_tokens=b.decode_tokens, warmup=b.warmup, repeats=b.repeats, seed=cfg.seed)
            _done(work, progress, "speed", speed)
            bar.update(1)
        del dense

    search_record = SearchRecord.model_validate({k: v for k, v in searched.items() if k != "problem"})
    reports = [o.report for o in search_record.operators.values()]
    return RunResults.model_validate({
        "format": RESULTS_FORMAT,
        "model": cfg.model,
        "ratio": cfg.ratio,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "problem": searched["problem"],
        "search": search_record,
        "best": best,
        "prune": pruned.summary,
        "models": models,
        "speed": speed,
        "export": exported,
        "budget": {
            "fitness_evals": sum(r.budget.total_evals for r in reports),
            "fitness_tokens": sum(r.budget.total_tokens for r in reports),
            "llm_tokens": sum(r.operator_stats.prompt_tokens + r.operator_stats.completion_tokens for r in reports),
            "search_seconds": round(sum(r.budget.seconds.get("total", 0.0) for r in reports), 3),
            "stage_seconds": stage.seconds,
            "total_seconds": round(time.perf_counter() - t_start, 3),
        },
        "warnings": pre.warnings,
        "files": {"config": CONFIG, "environment": ENVIRONMENT, "model": "model" if cfg.output.save_model else None,
                  "gguf": "model.gguf" if exported else None,
                  "recovered": "recovered" if cfg.recover.enabled and cfg.output.save_model else None},
    }).to_json()
