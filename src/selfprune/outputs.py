"""Output folders: what a command may write into, and how it says that it wrote a folder.

A command writes only into a folder that is new, empty, or one it wrote itself, recognised by the
marker file ``selfprune-output.json`` (its kind: pruned model, recovered model, search, run).
Replacing one of its own folders needs ``--overwrite``; a folder that holds anything else (a
model, notes, another command's output) is never deleted or written into.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from selfprune.errors import SelfpruneError

MARKER = "selfprune-output.json"

PRUNED_MODEL = "pruned model"
RECOVERED_MODEL = "recovered model"
SEARCH = "search"
RUN = "run"


def marker_kind(folder: Path) -> str | None:
    """The kind of selfprune output ``folder`` holds, or None when it is not one."""
    kind = read_marker(folder).get("kind")
    if isinstance(kind, str):
        return kind
    return _earlier_kind(folder)


def _earlier_kind(folder: Path) -> str | None:
    """Outputs of selfprune versions that wrote no marker, recognised by their own files."""
    config = _json(folder / "config.json")
    if isinstance(config, dict) and {"command", "config", "versions"} <= set(config):
        return SEARCH
    # A search's checkpoint, in the folder or an operator's own folder (the API writes no marker).
    if any(next(folder.glob(f"{depth}{name}"), None) for depth in ("", "*/") for name in _CHECKPOINTS):
        return SEARCH
    if isinstance(config, dict) and "selfprune" in config and (folder / "modeling_selfprune.py").is_file():
        summary = _json(folder / "selfprune_summary.json")
        return RECOVERED_MODEL if isinstance(summary, dict) and "recovery" in summary else PRUNED_MODEL
    if all((folder / name).is_file() for name in ("results.json", "config.yaml", "environment.json")):
        return RUN
    return None


_CHECKPOINTS = ("checkpoint.json", "checkpoint.prev.json")


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_marker(folder: Path) -> dict:
    data = _json(folder / MARKER)
    return data if isinstance(data, dict) else {}


def write_marker(folder: Path, kind: str, **fields) -> None:
    """Say that ``folder`` is a ``kind`` this selfprune wrote (``complete`` tells a finished run)."""
    from selfprune.atomic import atomic_write_json
    from selfprune.versions import versions

    atomic_write_json(folder / MARKER, {"kind": kind, "selfprune": versions().get("selfprune"),
                                        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields})


def check_out_dir(out_dir: str | os.PathLike, kind: str, overwrite: bool = False, flag: str = "--out",
                  own_ok: bool = False) -> Path:
    """``out_dir`` if the command may write a ``kind`` there, else one SelfpruneError line.

    New or empty folders are fine; a folder holding a ``kind`` this selfprune wrote needs
    ``overwrite`` (or ``own_ok``, for a command that continues its own folder, e.g. a resume).
    Anything else is refused whatever the flags, and nothing in it is touched."""
    from selfprune.atomic import restore_interrupted

    out = Path(out_dir).expanduser()
    restore_interrupted(out)
    if out.exists() and not out.is_dir():
        raise SelfpruneError(f"{flag} '{out}' is a file; pass a folder (new or empty)")
    check_writable(out, flag)
    if not out.exists() or not any(out.iterdir()):
        return out
    found = marker_kind(out)
    if found is None:
        what = "a model" if (out / "config.json").exists() else "files selfprune did not write"
        raise SelfpruneError(f"{flag} '{out}' holds {what}; nothing in it is touched: pass a new or empty folder")
    if found != kind:
        raise SelfpruneError(f"{flag} '{out}' holds a selfprune {found}, not a {kind}; pass a new or empty folder")
    if not (overwrite or own_ok):
        resume = "--resume to continue it, " if kind in (SEARCH, RUN) else ""
        raise SelfpruneError(f"{flag} '{out}' already holds a {kind}; pass {resume}--overwrite to replace it "
                             "(the old one stays until the new one is complete), or a new folder")
    return out


def check_writable(out: Path, flag: str = "--out") -> None:
    """Fail now, not after the work, when ``out`` cannot be created or written."""
    parent = out if out.is_dir() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SelfpruneError(f"cannot write {flag} '{out}': '{parent}' is not a folder")
    try:  # a real probe: os.access says yes to root on read-only mounts
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".selfprune-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SelfpruneError(f"cannot write {flag} '{out}': {exc.strerror or exc} in '{parent}'") from None


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def staging_dir(final: Path) -> Path:
    """Where ``--overwrite`` builds a new search or run while the old one stays in place."""
    return final.parent / f".{final.name}.next"
