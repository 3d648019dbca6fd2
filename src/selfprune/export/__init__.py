"""Export pruned checkpoints to other runtimes' formats (GGUF for llama.cpp)."""

from __future__ import annotations


def export_gguf(pruned_dir, out_path, outtype: str = "f16") -> dict:
    """See :func:`selfprune.export.gguf.export_gguf`."""
    from selfprune.export.gguf import export_gguf as _export

    return _export(pruned_dir, out_path, outtype)


__all__ = ["export_gguf"]
