"""What the benchmarks share: where the WikiText-2 test file is found."""

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
