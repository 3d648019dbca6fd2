"""The operator transcript: an append-only JSON-lines file that a resume truncates back to the
last checkpoint, so a search killed at any moment keeps a transcript that matches its state."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Transcript:
    """JSON lines of every operator call (prompts, replies, what was made of them)."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.lines = 0
        if self.path and self.path.exists():
            self.lines = sum(1 for _ in self.path.open())

    def log(self, record: dict[str, Any]) -> None:
        self.lines += 1
        if self.path is None:  # a search without a folder keeps no transcript
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def truncate(self, lines: int) -> None:
        """Drop what was written after the checkpoint that recorded ``lines``."""
        if self.path is None or not self.path.exists():
            self.lines = 0
            return
        kept = self.path.read_text().splitlines(keepends=True)[:lines]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)
        self.lines = len(kept)
