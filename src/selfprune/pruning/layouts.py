"""The grouped-query attention layouts a pruned layer may have.

A valid layout keeps ``k`` of the KV groups and the same number ``m`` of query heads in each kept
group, so every query head keeps its key/value head and the layer stays a standard GQA block.
``head`` granularity allows every (k, m); ``group`` keeps whole groups only.
"""

from __future__ import annotations

from selfprune.errors import SelfpruneError

GRANULARITIES = ("head", "group")


def attention_layouts(adapter, granularity: str = "head") -> list[tuple[int, int]]:
    """All valid (kept KV groups, heads per group) layouts of ``adapter``'s model, (0, 0) meaning
    attention removed."""
    if granularity not in GRANULARITIES:
        raise SelfpruneError(f"unknown attention granularity '{granularity}'; choose one of {', '.join(GRANULARITIES)}")
    per_group = range(1, adapter.heads_per_group + 1) if granularity == "head" else [adapter.heads_per_group]
    return [(0, 0)] + [(k, m) for k in range(1, adapter.num_kv_heads + 1) for m in per_group]
