"""selfprune: automatic post-training structured pruning of large language models."""

__version__ = "0.1.0"
