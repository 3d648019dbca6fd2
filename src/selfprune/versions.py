"""The versions of everything that shapes a result, recorded next to every result file."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("selfprune", "torch", "transformers", "lm_eval", "datasets", "numpy", "pydantic", "matplotlib",
            "openai", "peft", "llama_cpp_python", "ray", "accelerate")


def versions() -> dict[str, str | None]:
    """Python and the installed version of each package that matters (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out
