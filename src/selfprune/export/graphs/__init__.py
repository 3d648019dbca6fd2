"""How each model family maps onto a llama.cpp graph, layer by layer, exactly; one module per graph.

llama.cpp takes per-layer head, KV-head and FFN-width arrays only in some graphs; the ones used here:

* ``deci`` (Llama-3.1-Nemotron) for Llama, Mistral and Qwen2: per-layer sizes, optional q/k/v,
  attn_output and ffn biases. A layer with ``n_head == 0`` skips attention (output zero); a layer
  with ``n_ff == 0`` skips the *whole rest of the layer*, attention output included, so it is only
  exact when the attention is gone too. llama.cpp derives the head size from layer 0, so layer 0
  must keep at least one head.
* ``openelm`` for Qwen3: per-layer sizes, fused QKV, per-head q/k RMSNorm; no biases, no removed
  blocks, and the output matrix is always the token embedding (tied).
* ``gemma3`` for Gemma 3: the same sizes in every layer, no biases.

A removed block whose constant output cannot be expressed by leaving it out is written as a
*constant block*: one head (or one FFN channel) with all-zero weights, whose output is exactly its
output bias (zero when there is none). That costs one head's (one channel's) compute per such
layer and keeps the function exact. Anything else a pruned model needs but the graph lacks is
refused with a SelfpruneError that names it.
"""

from __future__ import annotations

from selfprune.errors import SelfpruneError
from selfprune.export.graphs.base import Target
from selfprune.export.graphs.deci import DeciTarget
from selfprune.export.graphs.gemma3 import Gemma3Target
from selfprune.export.graphs.openelm import OpenElmTarget
from selfprune.export.source import ModelSource
from selfprune.models.families import BY_MODEL_TYPE, FAMILIES

GRAPHS: dict[str, type[Target]] = {cls.arch: cls for cls in (DeciTarget, OpenElmTarget, Gemma3Target)}
# The model types that export: those whose family names a llama.cpp graph.
MODEL_TYPES = tuple(t for f in FAMILIES if f.gguf_arch in GRAPHS for t in f.model_types)


def target_for(src: ModelSource) -> Target:
    """The llama.cpp graph this model exports to, checked; or a SelfpruneError saying why not."""
    family = BY_MODEL_TYPE.get(src.model_type)
    if family is None or family.gguf_arch not in GRAPHS:
        raise SelfpruneError(f"model type '{src.model_type}' is not exported to GGUF; supported: {', '.join(MODEL_TYPES)}")
    return GRAPHS[family.gguf_arch](src)
