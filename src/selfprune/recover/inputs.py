"""The models recovery works on: the pruned student, its dense teacher, and the checks between them.

Every check here runs before any training, so a mistake costs seconds and writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from selfprune.errors import SelfpruneError
from selfprune.models.loading import load_model, resolve_model_path
from selfprune.outputs import RECOVERED_MODEL, same_path
from selfprune.pruning.checkpoint import prepare_out_dir


def pruning_record(model) -> dict | None:
    return getattr(model.config, "selfprune", None) or None


def _dense_error(name: str) -> SelfpruneError:
    return SelfpruneError(
        f"'{name}' is a dense model (its config has no 'selfprune' entry); recover takes a checkpoint written by "
        "`selfprune prune` and distils it back toward the dense model it came from"
    )


def load_student(pruned: str | os.PathLike, dtype=None, device: str | None = None):
    """(model, tokenizer, pruning summary or None) of a pruned checkpoint; a dense model is refused."""
    name = str(pruned)
    path = resolve_model_path(name)
    config = Path(path) / "config.json"
    if config.exists() and "selfprune" not in json.loads(config.read_text()):
        raise _dense_error(name)  # before loading: a dense model may be large
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model, tokenizer = load_model(name, device=device, **kwargs)
    if not pruning_record(model):
        raise _dense_error(name)
    summary_file = Path(path) / "selfprune_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    return model, tokenizer, summary


def teacher_name(student, teacher) -> str | None:
    """The teacher to load: the one given, or the dense model the checkpoint records."""
    if teacher is not None and not isinstance(teacher, (str, os.PathLike)):
        return None
    if teacher is not None:
        return str(teacher)
    return (pruning_record(student) or {}).get("base_model")


def require_teacher_name(student, teacher) -> str:
    name = teacher_name(student, teacher)
    if not name:
        raise SelfpruneError(
            "this checkpoint does not record the dense model it was pruned from; pass --teacher MODEL "
            "(the dense model), or use --method lm, which needs no teacher"
        )
    return name


def check_tokenizers(student, student_tokenizer, teacher, teacher_tokenizer) -> None:
    """Distillation compares next-token distributions id by id: both models must share one vocabulary."""
    s_vocab = student.get_output_embeddings().weight.shape[0]
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    if s_vocab != t_vocab:
        raise SelfpruneError(
            f"the teacher predicts over {t_vocab} tokens and the pruned model over {s_vocab}: their tokenizers "
            "differ; pass the dense model the checkpoint was pruned from as --teacher"
        )
    if student_tokenizer is not None and teacher_tokenizer is not None:
        if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise SelfpruneError(
                "the teacher's tokenizer differs from the pruned model's (the same ids mean different tokens); "
                "pass the dense model the checkpoint was pruned from as --teacher"
            )


def load_teacher(name: str, dtype=None, device: str | None = None, trust_remote_code: bool = False):
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return load_model(name, device=device, trust_remote_code=trust_remote_code, **kwargs)


def check_out_dir(out: str | os.PathLike, pruned: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """A folder the recovered checkpoint can be written to: new, empty, or an earlier recovered model
    (with ``overwrite``); never the pruned checkpoint it starts from."""
    if pruned is not None and same_path(out, pruned):
        raise SelfpruneError(f"--out '{out}' is the pruned checkpoint itself; write the recovered model elsewhere")
    return prepare_out_dir(out, overwrite, RECOVERED_MODEL)
