"""What the benchmarks share: where the WikiText-2 test file is found, and where a search's files lie."""

from __future__ import annotations

import os
from pathlib import Path


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
