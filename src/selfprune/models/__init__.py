"""Model loading and per-family adapters."""

from selfprune.models.adapter import ModelAdapter, get_adapter, supported_model_types
from selfprune.models.loading import DEFAULT_MODEL, load_model, resolve_model_path

__all__ = ["ModelAdapter", "get_adapter", "supported_model_types", "DEFAULT_MODEL", "load_model", "resolve_model_path"]
