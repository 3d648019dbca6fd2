"""The architecture a pruned checkpoint names in its config.json: ``SelfPruned<Base>`` (e.g.
``SelfPrunedLlamaForCausalLM``), the class its remote code defines for transformers and the one
the vLLM plugin (``selfprune.serve``, ``pip install selfprune[vllm]``) registers. vLLM without the
plugin stops with its "architectures [...] are not supported" error, which lists the config's
architectures: the second entry there says what to install."""

from __future__ import annotations

import json
import os
from pathlib import Path

from selfprune.errors import SelfpruneError
from selfprune.models.families import BY_MODEL_TYPE, FAMILIES

ARCHITECTURE_PREFIX = "SelfPruned"
# Not a class: printed by vLLM, in its list of the checkpoint's architectures, when it lacks the plugin.
VLLM_HINT = "to serve with vLLM: pip install selfprune[vllm]"
ARCHITECTURES = tuple(ARCHITECTURE_PREFIX + f.causal_lm_class for f in FAMILIES)
UPGRADE_COMMAND = "selfprune upgrade DIR"


def architecture_for(config: dict) -> str:
    """The architecture a pruned checkpoint with this config.json names (``SelfPruned<Base>``)."""
    if not config.get("selfprune"):
        raise SelfpruneError("this config.json carries no pruning record: it is not a checkpoint selfprune pruned")
    model_type = config.get("model_type")
    family = BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise SelfpruneError(f"pruned checkpoint of unsupported model type '{model_type}': "
                             f"selfprune serves {', '.join(sorted(BY_MODEL_TYPE))}")
    return ARCHITECTURE_PREFIX + family.causal_lm_class


def architectures_for(config: dict) -> list[str]:
    """The ``architectures`` value of a pruned checkpoint's config.json."""
    return [architecture_for(config), VLLM_HINT]


def needs_upgrade(config: dict) -> bool:
    """True for a pruned checkpoint written before checkpoints named their own architecture."""
    return bool(config.get("selfprune")) and architecture_for(config) not in (config.get("architectures") or [])


def mark_architecture(checkpoint: str | os.PathLike) -> bool:
    """Rewrite ``checkpoint``/config.json to name the pruned architecture; False if it already did."""
    from selfprune.atomic import atomic_write_text

    path = Path(checkpoint).expanduser() / "config.json"
    if not path.is_file():
        raise SelfpruneError(f"'{checkpoint}' holds no config.json; pass the folder of a pruned checkpoint")
    config = json.loads(path.read_text())
    if not needs_upgrade(config):
        architecture_for(config)  # a dense model's config is an error, not "already up to date"
        return False
    config["architectures"] = architectures_for(config)
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True
