"""Score, plan and remove: the pruning job from a dense model and per-layer rates."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfprune.data.calibration import calibration_text, token_blocks
from selfprune.errors import SelfpruneError
from selfprune.models.adapter import get_adapter
from selfprune.pruning.apply import apply_plan
from selfprune.pruning.checkpoint import save_pruned
from selfprune.pruning.importance import ImportanceScores, compute_importance
from selfprune.pruning.metrics import get_metric
from selfprune.pruning.options import PruneOptions
from selfprune.pruning.plan import PruningPlan, make_plan, prunable_params


def check_ratio(ratio: float) -> float:
    if ratio is None or math.isnan(float(ratio)) or not 0.0 <= float(ratio) < 1.0:
        raise SelfpruneError(f"ratio {ratio} is outside [0, 1): it is the fraction of attention/MLP parameters to remove")
    return float(ratio)


def read_rates(path: str | Path) -> tuple[list[float], list[float]]:
    """Per-layer rates from JSON: a list of numbers, a list of {attn, mlp} objects, or {"rates": ...}."""
    path = Path(path)
    if not path.is_file():
        raise SelfpruneError(f"rates file '{path}' not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SelfpruneError(f"rates file '{path}' is not UTF-8 text; pass a JSON list of per-layer rates") from None
    except json.JSONDecodeError as exc:
        # json's own messages may end in "at" ("Unterminated string starting at"): the position follows it.
        raise SelfpruneError(f"rates file '{path}' is not valid JSON ({exc.msg.removesuffix(' at')} at line "
                             f"{exc.lineno}, column {exc.colno})") from None
    return parse_rates(data, source=f"rates file '{path}'")


def check_rates_layers(rates: tuple[list[float], list[float]], model_path: str | Path) -> None:
    """Per-layer rates (as ``read_rates`` gives) against the layer count in the config.json of the
    local model directory ``model_path``, before the model loads. Silent when that config cannot be
    read (a hub id): the count is checked again once the model has loaded."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        layers = config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(layers, int):
        return
    for what, values in zip(("attention", "MLP"), rates):
        if len(values) != layers:
            raise SelfpruneError(f"--rates gives {len(values)} {what} rates but the model has {layers} layers; "
                                 "pass one rate per layer (rates found for another model do not fit)")


def parse_rates(data, source: str = "rates") -> tuple[list[float], list[float]]:
    if isinstance(data, dict):
        if "attn" in data and "mlp" in data:
            return _numbers(data["attn"], source), _numbers(data["mlp"], source)
        data = data.get("rates")
    if not isinstance(data, list) or not data:
        raise SelfpruneError(
            f"{source}: expected a JSON list of per-layer rates, or of {{\"attn\": a, \"mlp\": m}} objects"
        )
    if all(isinstance(x, dict) for x in data):
        try:
            return _numbers([x["attn"] for x in data], source), _numbers([x["mlp"] for x in data], source)
        except KeyError as exc:
            raise SelfpruneError(f"{source}: every per-layer object needs 'attn' and 'mlp' (missing {exc})") from None
    rates = _numbers(data, source)
    return rates, list(rates)


def _numbers(values, source: str) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SelfpruneError(f"{source}: rates must be numbers")
    for i, v in enumerate(values):
        if not 0.0 <= v <= 1.0:  # also NaN, which JSON readers accept
            raise SelfpruneError(f"{source}: rate {v} for layer {i} is outside [0, 1] "
                                 "(the share of the layer's attention or MLP to remove)")
    return [float(v) for v in values]


@dataclass
class PruneResult:
    model: torch.nn.Module
    tokenizer: object
    plan: PruningPlan
    scores: ImportanceScores | None
    summary: dict = field(default_factory=dict)

    def save(self, out_dir, overwrite: bool = False) -> Path:
        """The pruned checkpoint in ``out_dir`` (new or empty; an earlier pruned model there only
        with ``overwrite``)."""
        return save_pruned(self.model, self.tokenizer, out_dir, extra=self.summary, overwrite=overwrite)


def calibration_blocks(tokenizer, calib: str = "lambada", samples: int = 32, seqlen: int = 256, seed: int = 0):
    """Calibration token blocks, from the first half of the source (the second half feeds fitness)."""
    return token_blocks(tokenizer, calibration_text(calib), samples, seqlen, seed=seed, split="first")


def summarize(plan: PruningPlan, dense_total: int, dense_prunable: int, pruned_prunable: int) -> dict:
    pruned_total = dense_total - dense_prunable + pruned_prunable
    n = len(plan.layers)
    return {
        "params_before": dense_total,
        "params_after": pruned_total,
        "params_removed": dense_total - pruned_total,
        "prunable_before": dense_prunable,
        "prunable_after": pruned_prunable,
        "requested_ratio": (sum(plan.attn_rates) + sum(plan.mlp_rates)) / (2 * n),
        "achieved_ratio_prunable": 1 - pruned_prunable / dense_prunable,
        "achieved_ratio_total": 1 - pruned_total / dense_total,
        "layers": [
            {"heads": lp.num_heads, "kv_heads": lp.num_kv_heads, "mlp": lp.intermediate_size,
             "attn_rate": a, "mlp_rate": m}
            for lp, a, m in zip(plan.layers, plan.attn_rates, plan.mlp_rates)
        ],
    }


def prune_model(
    model,
    tokenizer,
    ratio: float | None = None,
    attn_rates=None,
    mlp_rates=None,
    options: PruneOptions | None = None,
    seed: int = 0,
    scores: ImportanceScores | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` in place at a uniform ``ratio`` or at per-layer rates; return the result."""
    o = options or PruneOptions()
    adapter = get_adapter(model)
    metric = get_metric(o.metric)
    if attn_rates is None:
        ratio = check_ratio(ratio)
        attn_rates = mlp_rates = [ratio] * adapter.num_layers
    elif mlp_rates is None:
        mlp_rates = attn_rates
    compensate = o.compensates()
    torch.manual_seed(seed)
    if scores is None:
        if metric.needs_activations or compensate:
            blocks = calibration_blocks(tokenizer, o.calib, o.calib_samples, o.calib_seqlen, seed)
        else:
            blocks = torch.zeros(1, 2, dtype=torch.long)  # weights alone: a token pair suffices
        scores = compute_importance(adapter, blocks, o.metric, progress=progress)
    plan = make_plan(adapter, scores.head_scores, scores.channel_scores, attn_rates, mlp_rates,
                     attn_granularity=o.attn_granularity, mlp_multiple=o.mlp_multiple)
    dense_total = sum(p.numel() for p in model.parameters())
    dense_prunable = prunable_params(adapter)
    pruned_prunable = prunable_params(adapter, plan, compensate)
    apply_plan(adapter, plan, scores, compensate)
    summary = summarize(plan, dense_total, dense_prunable, pruned_prunable)
    summary.update({**o.model_dump(), "seed": seed, "bias_compensation": compensate})
    return PruneResult(model, tokenizer, plan, scores, summary)
