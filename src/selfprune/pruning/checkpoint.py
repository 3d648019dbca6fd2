"""Pruned checkpoints: a standard safetensors directory plus the modeling file that rebuilds it.

The config keeps the base ``model_type`` and adds ``selfprune`` (each layer's head count, KV-head
count, MLP width, output biases) and an ``auto_map`` entry, so both ``selfprune`` and stock
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` load it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from selfprune.atomic import atomic_directory
from selfprune.errors import SelfpruneError
from selfprune.models.remote_code import modeling_selfprune
from selfprune.outputs import PRUNED_MODEL, check_out_dir, write_marker
from selfprune.pruning.architecture import mark_architecture

REMOTE_CODE_FILE = "modeling_selfprune.py"


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool = False, kind: str = PRUNED_MODEL) -> Path:
    """Check that ``out_dir`` can take a checkpoint before any slow work starts: new, empty, or a
    ``kind`` selfprune wrote there earlier (replaced only with ``overwrite``)."""
    return check_out_dir(out_dir, kind, overwrite=overwrite)


def save_pruned(model, tokenizer, out_dir: str | os.PathLike, extra: dict | None = None, overwrite: bool = False,
                kind: str = PRUNED_MODEL) -> Path:
    """Write the pruned ``model`` (and tokenizer) to ``out_dir`` atomically: all or nothing; an
    earlier checkpoint there stays until the new one is complete."""
    if not getattr(model.config, "selfprune", None):
        raise SelfpruneError("this model carries no pruning record; prune it with selfprune before saving")
    out = prepare_out_dir(out_dir, overwrite, kind)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        mark_architecture(tmp)  # after save_pretrained, which writes the base class: vLLM picks the plugin by it
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.copy(modeling_selfprune.__file__, tmp / REMOTE_CODE_FILE)
        if extra:
            (tmp / "selfprune_summary.json").write_text(json.dumps(extra, indent=2))
        write_marker(tmp, kind)
    return out
