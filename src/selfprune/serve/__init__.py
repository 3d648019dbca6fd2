"""Serving pruned checkpoints: the architecture a checkpoint names, and the vLLM model plugin.

A pruned checkpoint's config.json names its own architecture, ``SelfPruned<Base>`` (for example
``SelfPrunedLlamaForCausalLM``): the class its remote code defines for transformers and the class
the vLLM plugin (``selfprune.serve.vllm_plugin``, installed with ``pip install selfprune[vllm]``)
registers. vLLM without the plugin stops with its "architectures [...] are not supported" error,
which lists the config's architectures: the second entry there says what to install.

Only ``vllm_models`` (and ``vllm_plugin.register``, which vLLM calls) import vllm.
"""

from __future__ import annotations

from selfprune.pruning.architecture import (ARCHITECTURE_PREFIX, ARCHITECTURES, UPGRADE_COMMAND, VLLM_HINT,  # noqa: F401
                                            architecture_for, architectures_for, mark_architecture, needs_upgrade)


def _splits(heads: int, kv_heads: int, width: int, tp: int) -> bool:
    # vLLM shards query heads and MLP channels over the ranks; KV heads are sharded when there are at
    # least as many as ranks, else replicated, which needs the rank count to be a multiple of them.
    if heads and not (kv_heads % tp == 0 if kv_heads >= tp else tp % kv_heads == 0):
        return False
    return heads % tp == 0 and width % tp == 0


def tensor_parallel_error(layers: list[dict], tp: int) -> str | None:
    """Why tensor parallelism of ``tp`` cannot split these pruned layers, or None when it can."""
    bad = [(i, s) for i, s in enumerate(layers)
           if not _splits(int(s["num_heads"]), int(s["num_kv_heads"]), int(s["intermediate_size"]), tp)]
    if not bad:
        return None
    shown = "; ".join(f"layer {i}: heads {s['num_heads']}, KV heads {s['num_kv_heads']}, "
                      f"MLP width {s['intermediate_size']}" for i, s in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    fits = [n for n in range(1, tp) if tensor_parallel_error(layers, n) is None]
    fix = f"serve it with --tensor-parallel-size {' or '.join(map(str, fits))}"
    if any(int(s["intermediate_size"]) % tp for _, s in bad):
        fix += f", or prune it again with --mlp-multiple {tp}"
    return f"tensor parallelism of {tp} cannot split this pruned model ({shown}{more}): {fix}"
