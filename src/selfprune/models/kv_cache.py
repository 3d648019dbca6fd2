"""The KV cache under either of its transformers names: ``cache`` since transformers 5.2x,
``past_key_values`` before (selfprune supports both; vLLM's pins and older GPU images hold the older)."""

from __future__ import annotations

import inspect


def cache_of(out):
    """The KV cache a forward pass returned."""
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def cache_kwarg(model) -> str:
    """The keyword ``model``'s forward (and ``generate``) takes a KV cache by."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
