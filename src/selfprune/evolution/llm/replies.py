"""Tolerant parsing of operator-LLM replies into shapes, moves and crossover choices.

Small models wrap JSON in prose or code fences, use single quotes, trailing commas, percent
signs, strings for numbers, or fractions instead of percent. What can be read is read (and the
coercion counted); what cannot raises ``ReplyError`` with a short reason that is counted too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from selfprune.evolution.genome import GenomeSpace, resample
from selfprune.evolution.operators.types import Move

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN|inf")


class ReplyError(ValueError):
    """A reply that cannot be used; ``reason`` is one of a few short labels."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def extract_json(text: str) -> Any:
    """The first JSON object or array in ``text``, repairing common slips; raises ReplyError."""
    if text is None or not text.strip():
        raise ReplyError("empty")
    cleaned = re.sub(r"```(?:json)?", " ", text)
    decoder = json.JSONDecoder()
    for i, ch in enumerate(cleaned):
        if ch not in "{[":
            continue
        for candidate in (cleaned[i:], _relax(cleaned[i:])):
            try:
                obj, _ = decoder.raw_decode(candidate)
            except ValueError:
                continue
            if isinstance(obj, (dict, list)) and obj:
                return obj
    raise ReplyError("no-json")


def _relax(s: str) -> str:
    s = s.replace("'", '"')
    s = re.sub(r",\s*([}\]])", r"\1", s)  # trailing commas
    s = re.sub(r"([{,]\s*)([A-Za-z_]\w*)(\s*:)", r'\1"\2"\3', s)  # unquoted keys
    return s


def to_number(value: Any, events: list[str]) -> float:
    """A float from a number or a numeric string ("30%", "0.3"); raises ReplyError otherwise."""
    if isinstance(value, bool) or value is None:
        raise ReplyError("wrong-type", repr(value))
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _NUMBER.search(value)
        if m:
            if "coerced" not in events:
                events.append("coerced")
            return float(m.group(0))
    raise ReplyError("wrong-type", repr(value)[:40])


def _numbers(values: Any, events: list[str]) -> list[float]:
    if isinstance(values, (int, float, str)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list) or not values:
        raise ReplyError("wrong-type", repr(values)[:40])
    return [to_number(v, events) for v in values]


def _as_fraction(values: list[float]) -> np.ndarray:
    """Percent when any magnitude exceeds 1.5, else fractions (NaN kept for repair to count)."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size and np.abs(finite).max() > 1.5:
        arr = arr / 100.0
    return arr


def parse_shape(text: str, space: GenomeSpace, points: int) -> tuple[np.ndarray, list[str]]:
    """A reply of control points over depth, ``{"attn": [...], "mlp": [...]}`` or
    ``{"rates": [...]}`` (joint), in percent or fractions -> a decision vector (unrepaired)."""
    events: list[str] = []
    obj = extract_json(text)
    attn = mlp = None
    if isinstance(obj, dict):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        attn = next((lowered[k] for k in ("attn", "attention", "att") if k in lowered), None)
        mlp = next((lowered[k] for k in ("mlp", "ffn", "ff") if k in lowered), None)
        if attn is None and mlp is None:
            joint = next((lowered[k] for k in ("rates", "rate", "joint", "points") if k in lowered), None)
            if joint is None:
                joint = next((v for v in obj.values() if isinstance(v, list)), None)
            if joint is None:
                raise ReplyError("wrong-type", "no list of rates")
            attn = mlp = joint
    else:
        attn = mlp = obj
    if attn is None or mlp is None:
        events.append("partial")
        attn = mlp = attn if attn is not None else mlp
    a = _as_fraction(_numbers(attn, events))
    m = _as_fraction(_numbers(mlp, events))
    if len(a) != points or len(m) != points:
        events.append("resized")
    L = space.num_layers
    if space.joint:
        return resample((resample(a, L) + resample(m, L)) / 2, L), events
    return np.concatenate([resample(a, L), resample(m, L)]), events


_KEYS_FROM = ("from", "src", "source", "take_from")
_KEYS_TO = ("to", "dst", "dest", "target", "put_on")
_KEYS_PCT = ("pct", "percent", "amount", "points", "delta")


def parse_moves(text: str, num_layers: int, max_moves: int) -> tuple[list[Move], list[str]]:
    """``{"moves": [{"from": i, "to": j, "part": "mlp", "pct": 5}, ...]}`` (or a bare list of
    such objects or of ``[i, j, pct]`` triples) -> moves; bad entries are dropped and counted."""
    events: list[str] = []
    obj = extract_json(text)
    if isinstance(obj, dict):
        items = obj.get("moves", obj.get("edits", [obj]))
    else:
        items = obj
    if not isinstance(items, list):
        items = [items]
    if items and all(isinstance(x, (int, float, str)) for x in items):
        items = [items]  # a single [i, j, pct]
    moves: list[Move] = []
    for item in items:
        try:
            moves.append(_one_move(item, num_layers, events))
        except ReplyError:
            if "bad-move" not in events:
                events.append("bad-move")
    if not moves:
        raise ReplyError("no-valid-move")
    if len(moves) > max_moves:
        events.append("too-many-moves")
        moves = moves[:max_moves]
    return moves, events


def _one_move(item: Any, num_layers: int, events: list[str]) -> Move:
    part = "both"
    if isinstance(item, dict):
        low = {str(k).lower(): v for k, v in item.items()}
        src = next((low[k] for k in _KEYS_FROM if k in low), None)
        dst = next((low[k] for k in _KEYS_TO if k in low), None)
        pct = next((low[k] for k in _KEYS_PCT if k in low), 5)
        part = str(low.get("part", low.get("block", "both"))).lower()
    elif isinstance(item, list) and len(item) in (3, 4):
        src, dst = item[0], item[1]
        pct = item[-1]
        if len(item) == 4:
            part = str(item[2]).lower()
    else:
        raise ReplyError("wrong-type")
    if src is None or dst is None:
        raise ReplyError("wrong-type")
    src_f, dst_f, pct_f = to_number(src, events), to_number(dst, events), to_number(pct, events)
    if not all(math.isfinite(x) for x in (src_f, dst_f, pct_f)):
        raise ReplyError("nonfinite")
    src_i, dst_i = int(round(src_f)), int(round(dst_f))
    if not (0 <= src_i < num_layers and 0 <= dst_i < num_layers) or src_i == dst_i:
        raise ReplyError("bad-layer")
    if 0 < abs(pct_f) < 1:  # written as a fraction
        pct_f *= 100
    if pct_f < 0:  # a negative amount is the same move reversed
        src_i, dst_i, pct_f = dst_i, src_i, -pct_f
    if not 0 < pct_f <= 50:
        raise ReplyError("bad-amount")
    part = "attn" if part.startswith("att") else "mlp" if part.startswith(("mlp", "ff")) else "both"
    return Move(src_i, dst_i, pct_f / 100.0, part)


def parse_crossover(text: str, num_candidates: int, segments: int) -> tuple[int, int, str, list[str]]:
    """``{"a": 1, "b": 3, "take": "ABBAB"}`` -> (index a, index b, pattern) with 0-based indices."""
    events: list[str] = []
    obj = extract_json(text)
    if not isinstance(obj, dict):
        raise ReplyError("wrong-type")
    low = {str(k).lower(): v for k, v in obj.items()}
    try:
        a = int(round(to_number(low.get("a", low.get("parent_a")), events))) - 1
        b = int(round(to_number(low.get("b", low.get("parent_b")), events))) - 1
    except (ReplyError, OverflowError, ValueError):
        raise ReplyError("wrong-type", "parents") from None
    if not (0 <= a < num_candidates and 0 <= b < num_candidates) or a == b:
        raise ReplyError("bad-parent")
    take = low.get("take", low.get("pattern", ""))
    if isinstance(take, list):
        take = "".join(str(t) for t in take)
    pattern = "".join(ch for ch in str(take).upper() if ch in "AB")
    if not pattern:
        raise ReplyError("wrong-type", "take")
    if len(pattern) != segments:
        events.append("resized")
        pattern = "".join(pattern[int(i * len(pattern) / segments)] for i in range(segments))
    return a, b, pattern, events
