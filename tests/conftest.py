"""Shared fixtures: the real default model (converted once per machine) and tiny random models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WIKITEXT_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(scope="session")
def wikitext_test_path() -> Path:
    path = Path(os.environ.get("SELFPRUNE_WIKITEXT_TEST", WIKITEXT_TEST))
    if not path.exists():
        pytest.skip(f"WikiText-2 test file not found at {path} (set SELFPRUNE_WIKITEXT_TEST)")
    return path


@pytest.fixture(scope="session")
def load_benchmark():
    """A script under benchmarks/ imported as a module (they are scripts, not a package)."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from selfprune.models.loading import default_model_dir as convert

    return str(convert())


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    """(model, tokenizer) of the default model. Session-scoped: tests must not modify it in place."""
    from selfprune.models import load_model

    torch.manual_seed(0)
    return load_model(default_model_dir)


def tiny_config(family: str):
    """A tiny randomly initialisable config of ``family`` with GQA (4 query heads in 2 KV groups)."""
    import transformers as tf

    common = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
    )
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "mistral":
        return tf.MistralConfig(**common)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "qwen3":
        return tf.Qwen3Config(**common)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, sliding_window=32, layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]


@pytest.fixture
def tiny_model():
    """Factory: a tiny random model of a family, with non-zero biases where the family has them."""
    from transformers import AutoModelForCausalLM

    def make(family: str, seed: int = 0):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)  # make biases and norms matter
        return model.eval()

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(default_model_dir, tmp_path_factory):
    """Factory: a tiny random Llama (``tiny_config`` with ``overrides``) saved with the default
    model's tokenizer, its embeddings sized to it, so a command loads, calibrates and scores it in
    a moment. The same overrides give the same folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    made: dict[tuple, str] = {}

    def make(**overrides) -> str:
        key = tuple(sorted(overrides.items()))
        if key not in made:
            tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
            config = tiny_config("llama")
            for name, value in {"vocab_size": len(tokenizer), **overrides}.items():
                setattr(config, name, value)
            torch.manual_seed(0)
            path = tmp_path_factory.mktemp("tiny") / "model"
            AutoModelForCausalLM.from_config(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
            made[key] = str(path)
        return made[key]

    return make
