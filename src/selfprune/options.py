"""The base of every options class, and where each one lives.

Each job's options sit in the package they configure -- ``PruneOptions`` in ``pruning/options.py``,
``SearchOptions`` in ``evolution/options.py``, ``EvalOptions`` and ``BenchOptions`` in
``eval/options.py``, ``RecoverStageOptions`` in ``recover/options.py``, ``OutputOptions`` in
``config.py`` -- so importing one package never loads another's. They are typed, frozen objects:
the one place each option, its default and its allowed names are declared. The command-line flags
are generated from their fields (``selfprune.cli.options``) and the API takes these objects, so a
default or a name list cannot differ between a command, the config file and the Python API.
``from selfprune.options import PruneOptions`` still works: the names resolve on first use.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel, ConfigDict

FIELD_TAG = "\x1f"  # separates the blamed field from the message in a validator's error


def bad(field: str, message: str) -> ValueError:
    """A contradiction found by a validator, tagged with the field to blame."""
    return ValueError(f"{FIELD_TAG}{field}{FIELD_TAG}{message}")


def comma_list(value, cast, example: str):
    """"2,8" on the command line -> [2, 8]; other values pass to the field's own validation."""
    if not isinstance(value, str):
        return value
    try:
        return [cast(s) for s in value.split(",")]
    except ValueError:
        raise ValueError(f"'{value}' is not a comma-separated list of {example}") from None


def names(values) -> tuple[str, ...]:
    return tuple(values)


class Options(BaseModel):
    # No option takes inf or nan: inf passes one-sided bounds (gt=0) and nan every hand-written range check.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Where each options class lives; resolved on first use so that this module imports no package.
_HOMES = {
    "PruneOptions": "selfprune.pruning.options",
    "SearchOptions": "selfprune.evolution.options",
    "EvalOptions": "selfprune.eval.options",
    "BenchOptions": "selfprune.eval.options",
    "RecoverStageOptions": "selfprune.recover.options",
    "OutputOptions": "selfprune.config",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
