"""The small public API; each function maps onto one ``selfprune`` subcommand.

Options are the typed objects of ``selfprune.options`` (``PruneOptions``, ``SearchOptions``,
``EvalOptions``); their fields may also be given as keywords, e.g. ``prune(m, ratio=0.3,
metric="flap")``. Defaults live in those objects only.
"""

from __future__ import annotations

import logging

from selfprune.eval.options import EvalOptions
from selfprune.eval.suite import EvalSuite
from selfprune.eval.zeroshot import parse_tasks
from selfprune.evolution.options import SearchOptions
from selfprune.evolution.search import search as run_search
from selfprune.models.adapter import get_adapter
from selfprune.models.loading import load_model
from selfprune.preflight import resolve_eval_text
from selfprune.pruning.options import PruneOptions
from selfprune.pruning.pipeline import PruneResult, parse_rates, prune_model
from selfprune.pruning.plan import validate_rates
from selfprune.runner import run as run_all


def _model(model, tokenizer, device, dtype="float32", device_map=None, trust_remote_code=False):
    """(model, tokenizer, name): a MODEL name/path is loaded; an in-memory model is used as is."""
    if isinstance(model, str):
        loaded, tok = load_model(model, device=device, dtype=dtype, device_map=device_map,
                                 trust_remote_code=trust_remote_code)
        return loaded, tok, model
    return model, tokenizer, None


def prune(model, tokenizer=None, ratio: float | None = None, rates=None, options: PruneOptions | None = None,
          seed: int = 0, device: str | None = None, rates_source: str = "rates", progress: bool = True,
          dtype: str = "float32", device_map: str | dict | None = None, trust_remote_code: bool = False,
          **fields) -> PruneResult:
    """Prune a model (a MODEL name/path, or an in-memory model with its tokenizer).

    ``ratio`` prunes every layer's attention and MLP by the same fraction; ``rates`` gives per-layer
    rates instead (a list of numbers, of {"attn": a, "mlp": m}, or an (attn, mlp) pair of lists).
    ``trust_remote_code``: run the Python code a MODEL ships (see ``load_model``).
    """
    options = options or PruneOptions(**fields)
    model, tokenizer, name = _model(model, tokenizer, device, dtype, device_map, trust_remote_code)
    attn_rates = mlp_rates = None
    if rates is not None:
        pair = isinstance(rates, tuple) and len(rates) == 2 and all(isinstance(r, list) for r in rates)
        attn_rates, mlp_rates = rates if pair else parse_rates(rates, rates_source)
        n = get_adapter(model).num_layers
        attn_rates = validate_rates(attn_rates, n, f"{rates_source} (attention)")
        mlp_rates = validate_rates(mlp_rates, n, f"{rates_source} (MLP)")
    result = prune_model(model, tokenizer, ratio=ratio, attn_rates=attn_rates, mlp_rates=mlp_rates, options=options,
                         seed=seed, progress=progress)
    if name is not None:
        result.summary["model"] = name
        result.model.config.selfprune["base_model"] = name  # `selfprune bench` compares against it
    return result


def search(model, ratio: float, tokenizer=None, prune: PruneOptions | None = None,
           options: SearchOptions | None = None, seed: int = 0, out_dir=None, resume: bool = False,
           progress: bool = True, device: str | None = None, dtype: str = "float32",
           device_map: str | dict | None = None, trust_remote_code: bool = False, **fields):
    """Search per-layer rates (see ``selfprune search``); returns a ``SearchOutcome`` whose
    ``best.best.genome.to_rates()`` is what ``prune(rates=...)`` takes."""
    options = options or SearchOptions(**fields)
    model, tokenizer, _ = _model(model, tokenizer, device, dtype, device_map, trust_remote_code)
    return run_search(model, tokenizer, ratio, prune, options, seed=seed, out_dir=out_dir, resume=resume,
                      progress=progress, trust_remote_code=trust_remote_code)


def evaluate(model, tokenizer=None, options: EvalOptions | None = None, device: str | None = None,
             dtype: str = "float32", device_map: str | dict | None = None, trust_remote_code: bool = False,
             **fields) -> dict:
    """Perplexity and zero-shot accuracy of a model or checkpoint (see ``selfprune eval``)."""
    options = options or EvalOptions(**fields)
    text = None
    if options.ppl:
        warnings: list[str] = []
        text = resolve_eval_text(options.ppl, warnings)
        for warning in warnings:  # e.g. the offline text scored in place of WikiText-2
            logging.getLogger("selfprune").warning(warning)
    tasks = parse_tasks(options.tasks, options.task_source) if options.tasks else []
    model, tokenizer, _ = _model(model, tokenizer, device, dtype, device_map, trust_remote_code)
    return EvalSuite(options, text, tasks)(model, tokenizer)


def load_pruned(path: str, device: str | None = None, dtype: str = "float32", device_map: str | dict | None = None,
                trust_remote_code: bool = False):
    """Load a pruned checkpoint (or any model) as (model, tokenizer).

    A pruned checkpoint is built by the installed selfprune code, never by its own modeling file;
    ``trust_remote_code`` is only for other models that ship code."""
    return load_model(path, device=device, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code)


def run(model: str | None = None, ratio: float | None = None, out: str | None = None, config=None, **sections):
    """Search, prune, save, evaluate, benchmark and report, like ``selfprune run`` (see runner.run)."""
    return run_all(model, ratio, out, config, **sections)


__all__ = ["prune", "search", "evaluate", "run", "load_pruned", "load_model", "PruneResult",
           "PruneOptions", "SearchOptions", "EvalOptions"]
