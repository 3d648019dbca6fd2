"""Read a model directory for export: its config, each layer's kept sizes, and its weights.

A pruned checkpoint records each layer's sizes in ``config.json`` (``selfprune.layers``); a dense
Hugging Face directory is read as a checkpoint in which every layer keeps everything, so the dense
baseline and the pruned model go through the same export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from selfprune.errors import SelfpruneError


@dataclass(frozen=True)
class LayerShape:
    """What one decoder layer keeps. ``0`` heads or width: that block is removed."""

    heads: int
    kv_heads: int
    ffn: int


class ModelSource:
    """A model directory (dense or pruned) whose tensors are read one at a time, as float32."""

    def __init__(self, path: str | Path, model_types: tuple[str, ...] | None = None):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            what = "is a file" if self.path.exists() else "does not exist"
            raise SelfpruneError(f"'{self.path}' {what}; pass a pruned checkpoint directory (or a dense model directory)")
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise SelfpruneError(f"'{self.path}' is not a model directory (no config.json); pass a pruned checkpoint directory")
        try:
            self.config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SelfpruneError(f"cannot read {config_file}: {exc}") from None
        if not isinstance(self.config, dict) or "model_type" not in self.config:
            raise SelfpruneError(f"{config_file} has no model_type; it is not a Hugging Face model config")
        self.model_type = self.config["model_type"]
        if model_types is not None and self.model_type not in model_types:
            raise SelfpruneError(f"model type '{self.model_type}' is not exported to GGUF; supported: {', '.join(model_types)}")
        self.record = self.config.get("selfprune") or None  # None: a dense model
        self._index = self._index_tensors()
        self.num_layers = int(self.get_config("num_hidden_layers"))
        self.hidden = int(self.get_config("hidden_size"))
        self.num_heads = int(self.get_config("num_attention_heads"))
        self.num_kv_heads = int(self.config.get("num_key_value_heads") or self.num_heads)
        self.head_dim = int(self.config.get("head_dim") or self.hidden // self.num_heads)
        self.intermediate = int(self.get_config("intermediate_size"))
        self.layers = self._layer_shapes()

    @property
    def pruned(self) -> bool:
        return self.record is not None

    def get_config(self, key: str):
        if key not in self.config:
            raise SelfpruneError(f"{self.path / 'config.json'} has no '{key}'")
        return self.config[key]

    def _index_tensors(self) -> dict[str, Path]:
        from safetensors import safe_open

        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise SelfpruneError(f"'{self.path}' holds no *.safetensors weights; save the model with safetensors")
        index: dict[str, Path] = {}
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():
                        index[key] = file
            except Exception as exc:  # a truncated or foreign file
                raise SelfpruneError(f"cannot read weights file {file}: {exc}") from None
        return index

    def _layer_shapes(self) -> list[LayerShape]:
        if self.record is None:
            return [LayerShape(self.num_heads, self.num_kv_heads, self.intermediate)] * self.num_layers
        specs = self.record.get("layers")
        if not isinstance(specs, list) or len(specs) != self.num_layers:
            raise SelfpruneError(
                f"{self.path / 'config.json'}: the selfprune record lists "
                f"{len(specs) if isinstance(specs, list) else 'no'} layers, the model has {self.num_layers}"
            )
        try:
            return [LayerShape(int(s["num_heads"]), int(s["num_kv_heads"]), int(s["intermediate_size"])) for s in specs]
        except (KeyError, TypeError, ValueError):
            raise SelfpruneError(f"{self.path / 'config.json'}: malformed selfprune layer record") from None

    def has(self, name: str) -> bool:
        return name in self._index

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The tensor ``name`` as float32; with ``shape``, check it (a mismatch is a broken checkpoint)."""
        from safetensors import safe_open

        if name not in self._index:
            raise SelfpruneError(f"'{self.path}' lacks the tensor {name}; the checkpoint is incomplete")
        with safe_open(str(self._index[name]), framework="pt") as f:
            t = f.get_tensor(name).to(torch.float32)
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise SelfpruneError(
                f"tensor {name} has shape {tuple(t.shape)}, the config says {tuple(shape)}; the checkpoint is inconsistent"
            )
        return t

    def optional(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        return self.tensor(name, shape) if self.has(name) else None

    def names(self) -> list[str]:
        return sorted(self._index)
