"""The search's checkpoint on disk: its format, reading it back (a torn or unreadable file falls back
to the one before it) and writing it so that a kill at any moment leaves one that resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from selfprune.atomic import atomic_write_json
from selfprune.errors import SelfpruneError

CHECKPOINT = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"  # the checkpoint before the last one: what a torn write falls back to
CHECKPOINT_VERSION = 2
_KEYS = ("version", "config", "space", "operator", "setup", "generation", "population", "history", "origins", "moves",
         "next_id", "stalled", "wall", "rng", "budget", "repairs", "evaluator", "operator_state", "transcript_lines")


# A resume may extend these; everything else must match the checkpoint.
_EXTENDABLE = ("generations", "max_evals", "max_tokens")


def fixed_settings(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _EXTENDABLE}


def _readable(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint at ``path``, or None and why it cannot be used."""
    try:
        snap = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"not valid JSON ({type(exc).__name__})"
    if not isinstance(snap, dict):
        return None, "not a checkpoint"
    if snap.get("version") != CHECKPOINT_VERSION:
        return None, f"written by another selfprune version (checkpoint format {snap.get('version')!r})"
    missing = [k for k in _KEYS if k not in snap]
    if missing:
        return None, f"incomplete (no {', '.join(missing[:3])})"
    return snap, ""


def read_checkpoint(folder: str | Path, quiet: bool = False) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` (None when there is none); an unreadable one falls back to the
    previous one beside it, said so (unless ``quiet``: a check before the resume itself), and
    without either it is one clear SelfpruneError."""
    folder = Path(folder)
    ckpt, prev = folder / CHECKPOINT, folder / PREVIOUS
    if not ckpt.exists() and not prev.exists():
        return None
    snap, why = _readable(ckpt)
    if snap is not None:
        return snap
    older, why_prev = _readable(prev)
    if older is not None:
        if not quiet:
            print(f"{ckpt} is {why}; resuming from {prev} (one generation earlier)", flush=True)
        return older
    raise SelfpruneError(f"cannot resume: {ckpt} is {why} and {prev.name} is {why_prev}; "
                         "use a new --out folder")


def setup_mismatch(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first setting both record with different values, as "name: saved -> now"."""
    for key in sorted(set(saved) & set(now)):
        a, b = saved[key], now[key]
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            return f"{key} {_show(a)}, now {_show(b)}"
    return None


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def write_checkpoint(folder: Path, snap: dict[str, Any]) -> None:
    """``snap`` as the current checkpoint in ``folder``, the one before it kept as the previous."""
    current = folder / CHECKPOINT
    # Keep the last good one: a torn or corrupted write falls back to it. A current file that is
    # itself unreadable (the one a resume fell back from) must not replace the good previous one.
    # A rename, not a copy: a kill before the new write leaves no current file, and a resume then
    # falls back to the previous one, as it does for a torn one.
    if _readable(current)[0] is not None:
        os.replace(current, folder / PREVIOUS)
    atomic_write_json(current, snap)
