"""All-or-nothing writes: a directory or file appears complete, or not at all."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_directory(target: str | os.PathLike):
    """Yield a temporary directory beside ``target``; on success it replaces ``target``.

    The old ``target`` stays until the new one is complete: the two are swapped in one atomic
    exchange (Linux), or the old one is renamed aside first. A killed process leaves ``target``
    complete (old or new) plus a hidden ``.name.tmp-*`` or ``.name.old-*`` folder, which the next
    write of ``target`` cleans up (restoring the old folder if the kill fell between two renames).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))
    try:
        yield tmp
        normal_permissions(tmp)
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):  # target now holds the new folder, ``new`` the old one
        shutil.rmtree(new, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-{os.getpid()}-"))
    os.replace(target, old)  # a kill from here to the next line is undone by restore_interrupted
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def restore_interrupted(target: str | os.PathLike) -> None:
    """Clean up after a killed ``atomic_directory`` of ``target``: put back an old folder that was
    renamed aside but not replaced, and delete unfinished or superseded temporary folders (those of
    live processes are left alone)."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for kind in ("old", "tmp"):  # the old folder first: it is the complete one
        for path in sorted(target.parent.glob(f".{glob.escape(target.name)}.{kind}-*")):
            if not path.is_dir() or _alive(path.name.split("-")[-2] if path.name.count("-") >= 2 else ""):
                continue
            if kind == "old" and not target.exists():
                os.replace(path, target)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: str) -> bool:
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def normal_permissions(root: Path) -> None:
    """Temporary folders and files are created private (0700/0600); a finished output is an
    ordinary folder, readable as the umask allows."""
    umask = _umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and a rename: a reader (or a
    resume after a kill) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as JSON, written like ``atomic_write_text``."""
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=True, default=str))
