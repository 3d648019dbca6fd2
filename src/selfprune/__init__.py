"""selfprune: automatic post-training structured pruning of large language models."""

__version__ = "0.1.0"


def __getattr__(name):
    # The public API, imported lazily so that `import selfprune` (and the CLI's --help) stays fast.
    if name in ("prune", "load_pruned", "load_model", "PruneResult"):
        from selfprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'selfprune' has no attribute {name!r}")
