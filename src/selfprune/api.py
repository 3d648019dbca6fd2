"""The small public API. Each function maps onto one ``selfprune`` subcommand."""

from __future__ import annotations

from selfprune.models.loading import load_model
from selfprune.pruning.pipeline import PruneResult, prune_model


def prune(model, tokenizer=None, ratio: float | None = None, rates=None, **options) -> PruneResult:
    """Prune a model (a MODEL name/path, or an in-memory model with its tokenizer).

    ``ratio`` prunes every layer's attention and MLP by the same fraction; ``rates`` gives per-layer
    rates instead (a list of numbers, or of {"attn": a, "mlp": m}). Other options: ``metric``
    ('wanda-sp', 'flap', 'magnitude'), ``calib``, ``calib_samples``, ``calib_seqlen``, ``seed``,
    ``attn_granularity`` ('head', 'group'), ``mlp_multiple``, ``bias_compensation``.
    """
    from selfprune.pruning.pipeline import parse_rates

    name = model if isinstance(model, str) else None
    if name is not None:
        model, tokenizer = load_model(name)
    attn_rates = mlp_rates = None
    if rates is not None:
        attn_rates, mlp_rates = parse_rates(rates)
    result = prune_model(model, tokenizer, ratio=ratio, attn_rates=attn_rates, mlp_rates=mlp_rates, **options)
    if name is not None:
        result.model.config.selfprune["base_model"] = name  # `selfprune bench` compares against it
    return result


def load_pruned(path: str):
    """Load a pruned checkpoint (or any model) as (model, tokenizer)."""
    return load_model(path)


__all__ = ["prune", "load_pruned", "load_model", "PruneResult"]


def run(model: str | None = None, ratio: float | None = None, out: str | None = None, config=None, **sections):
    """Search, prune, save, evaluate, benchmark and report, like ``selfprune run`` (see selfprune.runner.run)."""
    from selfprune.runner import run as run_all

    return run_all(model, ratio, out, config, **sections)


__all__ += ["run"]
