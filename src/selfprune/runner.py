"""One run, end to end: search -> prune with the best rates -> save -> evaluate -> speed -> report.

Everything that can be checked without loading a model is checked first (``preflight``), so a bad
config fails in seconds and writes nothing. The run then works in a hidden folder beside the run
directory and renames it into place at the end: ``DIR`` appears complete, or not at all.

``DIR/results.json`` is the single source of the report; the search's own files (history,
checkpoint, operator transcript) stay under ``DIR/search/<operator>/``.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfprune.atomic import atomic_directory, atomic_write_json
from selfprune.config import RunConfig, load_config, merge, resolve
from selfprune.eval.speed import count_params
from selfprune.eval.speed import speed as measure
from selfprune.eval.suite import EvalSuite
from selfprune.evolution.search import search
from selfprune.export.gguf import export_gguf
from selfprune.models.loading import load_model
from selfprune.preflight import Preflight, check_run
from selfprune.pruning.pipeline import prune_model
from selfprune.recover.distill import recover
from selfprune.report import build_report
from selfprune.stages import Stages, log, logging_to
from selfprune.versions import versions

RESULTS = "results.json"
CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
LOG = "run.log"
RESULTS_FORMAT = 1


@dataclass
class RunResult:
    dir: Path
    results: dict


def run(model: str | None = None, ratio: float | None = None, out: str | None = None,
        config: str | Path | RunConfig | None = None, **sections: Any) -> RunResult:
    """The whole job from Python, like ``selfprune run``: ``config`` is a RunConfig or a YAML
    path; ``model``, ``ratio``, ``out`` and sections given as dicts override it, e.g.
    ``run("default", 0.3, "runs/smollm2", search={"population": 4}, eval={"tasks": ["piqa"]})``."""
    overrides = dict(sections)
    overrides.update({k: v for k, v in (("model", model), ("ratio", ratio)) if v is not None})
    if out is not None:
        overrides["output"] = {**overrides.get("output", {}), "dir": str(out)}
    if isinstance(config, RunConfig):
        cfg = resolve(merge(config.model_dump(), overrides))
    else:
        cfg = load_config(config, overrides)
    return execute(cfg)


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


def execute(cfg: RunConfig, argv: list[str] | None = None) -> RunResult:
    """Run ``cfg`` into ``cfg.output.dir``; returns the directory and the results dict."""
    pre = check_run(cfg)
    with atomic_directory(pre.out) as tmp:
        log_path = Path(cfg.output.log_file).expanduser() if cfg.output.log_file else tmp / LOG
        with logging_to(log_path, cfg.output.quiet):
            for warning in pre.warnings:
                log.warning(warning)
            (tmp / CONFIG).write_text(cfg.to_yaml(), encoding="utf-8")
            atomic_write_json(tmp / ENVIRONMENT, environment(cfg, pre.device, argv))
            results = _stages(cfg, pre, tmp, Stages(cfg.output.quiet, log_path))
            results["files"]["log"] = LOG if log_path.parent == tmp else str(log_path)
            atomic_write_json(tmp / RESULTS, results)
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


def _recover(cfg: RunConfig, pre: Preflight, tmp: Path, stage: Stages, evaluate: EvalSuite, pruned, dense,
             tokenizer) -> dict:
    """Distil a copy of the pruned model toward the dense one; the pruned model stays as measured."""
    options = cfg.recover.to_recover_options(seed=cfg.seed, device=pre.device, progress=not cfg.output.quiet)
    with stage("recover") as bar:
        result = recover(copy.deepcopy(pruned.model), tokenizer, teacher=dense, teacher_tokenizer=tokenizer,
                         options=options, exclude_texts=[pre.eval_text.text] if pre.eval_text is not None else ())
        result.pruning_summary = pruned.summary
        if cfg.output.save_model:
            result.save(tmp / "recovered")
        bar.update(1)
    out = {"params": count_params(result.model)}
    if evaluate.steps:
        with stage("eval recovered", evaluate.steps) as bar:
            out.update(evaluate(result.model, tokenizer, bar))
    s = result.summary
    out["recovery"] = {"method": s["method"], "data": s["data"], "training": s["training"], "heldout": s["heldout"],
                       "wall_time_s": s["wall_time_s"]}
    return out


def _stages(cfg: RunConfig, pre: Preflight, tmp: Path, stage: Stages) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    with stage("load") as bar:
        model, tokenizer = load_model(pre.model_path, device=None if cfg.device_map else pre.device, dtype=cfg.dtype,
                                      device_map=cfg.device_map)
        bar.update(1)

    with stage("search", len(cfg.search.operator)) as bar:
        started: list[str] = []

        def next_operator(name: str) -> None:
            bar.update(1 if started else 0)
            started.append(name)
            bar.set_postfix_str(name)

        found = search(model, tokenizer, cfg.ratio, cfg.prune, cfg.search, seed=cfg.seed, out_dir=tmp / "search",
                       progress=not cfg.output.quiet, backend=pre.backend, per_operator_dirs=True,
                       on_operator=next_operator)
        bar.update(1)
    searched = found.to_json(tmp)
    best = searched["best"]

    models: dict[str, dict] = {"dense": {}, "pruned": {}}
    evaluate = EvalSuite(cfg.eval, pre.eval_text, pre.tasks, quiet_libraries=stage.library_output)
    if cfg.eval.dense and evaluate.steps:
        with stage("eval dense", evaluate.steps) as bar:
            models["dense"] = evaluate(model, tokenizer, bar)
    # The dense model is measured beside the pruned one and is the teacher of the recovery.
    dense = copy.deepcopy(model) if cfg.bench.enabled or cfg.recover.enabled else None
    models["dense"]["params"] = count_params(model)
    with stage("prune") as bar:
        pruned = prune_model(model, tokenizer, attn_rates=list(best["attn"]), mlp_rates=list(best["mlp"]),
                             options=cfg.prune, seed=cfg.seed, scores=found.problem.scores, progress=False)
        pruned.summary.update(model=cfg.model, rates_from=f"search ({best['operator']})")
        bar.update(1)
    models["pruned"]["params"] = count_params(pruned.model)
    if cfg.output.save_model:
        with stage("save") as bar:
            pruned.save(tmp / "model")
            bar.update(1)
    exported = None
    if cfg.output.export == "gguf":
        with stage("export") as bar:
            exported = export_gguf(tmp / "model", tmp / "model.gguf", cfg.output.export_outtype)
            exported["path"] = "model.gguf"
            bar.update(1)
    if evaluate.steps:
        with stage("eval pruned", evaluate.steps) as bar:
            models["pruned"].update(evaluate(pruned.model, tokenizer, bar))

    if cfg.recover.enabled:
        models["recovered"] = _recover(cfg, pre, tmp, stage, evaluate, pruned, dense, tokenizer)

    speed = None
    if dense is not None and cfg.bench.enabled:
        b = cfg.bench
        with stage("speed") as bar:
            speed = measure({"dense": dense, "pruned": pruned.model}, prefill_shapes=[tuple(s) for s in b.shapes],
                            decode_batches=tuple(b.decode_batches), prompt_len=b.prompt_len,
                            decode_tokens=b.decode_tokens, warmup=b.warmup, repeats=b.repeats, seed=cfg.seed)
            bar.update(1)
        del dense

    reports = [o["report"] for o in searched["operators"].values()]
    return {
        "format": RESULTS_FORMAT,
        "model": cfg.model,
        "ratio": cfg.ratio,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "problem": searched["problem"],
        "search": {k: v for k, v in searched.items() if k != "problem"},
        "best": best,
        "prune": pruned.summary,
        "models": models,
        "speed": speed,
        "export": exported,
        "budget": {
            "fitness_evals": sum(r["budget"]["total_evals"] for r in reports),
            "fitness_tokens": sum(r["budget"]["total_tokens"] for r in reports),
            "llm_tokens": sum((r["operator_stats"].get("prompt_tokens", 0) or 0)
                              + (r["operator_stats"].get("completion_tokens", 0) or 0) for r in reports),
            "search_seconds": round(sum(r["budget"]["seconds"].get("total", 0.0) for r in reports), 3),
            "stage_seconds": stage.seconds,
            "total_seconds": round(time.perf_counter() - t_start, 3),
        },
        "warnings": pre.warnings,
        "files": {"config": CONFIG, "environment": ENVIRONMENT, "model": "model" if cfg.output.save_model else None,
                  "gguf": "model.gguf" if exported else None,
                  "recovered": "recovered" if cfg.recover.enabled and cfg.output.save_model else None},
    }
