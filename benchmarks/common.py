"""What the benchmarks share: where the WikiText-2 test file is found, where a search's files lie,
and how a machine's paths are written into a committed record."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_wikitext() -> str:
    """``$SELFPRUNE_WIKITEXT_TEST``, else ``../shared/data/wikitext-2-raw/wiki.test.raw`` beside the
    repository, else ``wikitext2`` (the hub)."""
    env = os.environ.get("SELFPRUNE_WIKITEXT_TEST")
    if env:
        return env
    local = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
    return str(local) if local.exists() else "wikitext2"


def search_dir(out: str | Path, ratio: float, arm: str, seed: int) -> Path:
    """Where bench_search.py writes one search's files (checkpoint, transcript, report) under its OUT."""
    return Path(out) / f"r{ratio}" / arm / f"s{seed}"


def portable_path(path: str) -> str:
    """``path`` as a record may hold it: relative to the repository (``../shared/...`` beside it), else its
    name alone -- never this machine's absolute path."""
    p = Path(path)
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        try:
            return prefix + str(p.resolve().relative_to(base))
        except ValueError:
            continue
    return p.name


_ABSOLUTE = re.compile(r"(^|[=:,\s])(/(?!/)[^\s,]+)")  # not the // of a URL


def portable(value):
    """Every absolute path inside ``value`` (strings, lists, dicts; also inside arm specs such as
    ``llm:seeded:local:/x/m.gguf``) made portable."""
    if isinstance(value, str):
        return _ABSOLUTE.sub(lambda m: m.group(1) + portable_path(m.group(2)), value)
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    return value


def machine() -> dict:
    """What ran a benchmark, without naming the host."""
    return {"system": platform.system(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
