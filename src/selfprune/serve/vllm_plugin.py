"""vLLM general plugin: registers the pruned architectures with vLLM's model registry.

vLLM calls ``register`` at start-up in every one of its processes (entry point group
``vllm.general_plugins``). The model class is named by a string, so vLLM imports it only in the
processes that build a model.
"""

from __future__ import annotations

from selfprune.serve import ARCHITECTURES, tensor_parallel_error

MODEL_CLASS = "selfprune.serve.vllm_models:SelfPrunedForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    for arch in ARCHITECTURES:
        if arch not in ModelRegistry.get_supported_archs():  # vLLM may call this more than once
            ModelRegistry.register_model(arch, MODEL_CLASS)
    _register_config_check()


def _register_config_check() -> None:
    # A layer that tensor parallelism cannot split is then reported while vLLM checks its
    # configuration, before any worker starts. The table is vLLM-internal: without it the model
    # still refuses when it is built, with the same message, only later.
    try:
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig
    except ImportError:
        return

    class SelfPrunedConfigCheck(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config) -> None:
            layers = vllm_config.model_config.hf_config.selfprune["layers"]
            error = tensor_parallel_error(layers, vllm_config.parallel_config.tensor_parallel_size)
            if error:
                raise ValueError(error)

    for arch in ARCHITECTURES:
        MODELS_CONFIG_MAP.setdefault(arch, SelfPrunedConfigCheck)
