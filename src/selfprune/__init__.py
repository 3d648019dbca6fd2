"""selfprune: automatic post-training structured pruning of large language models."""

__version__ = "0.1.0"

_API = ("prune", "search", "evaluate", "run", "load_pruned", "load_model", "PruneResult",
        "PruneOptions", "SearchOptions", "EvalOptions")


def __getattr__(name):
    # The public API, imported lazily so that `import selfprune` (and the CLI's --help) stays fast.
    # No subpackage shares these names, so `selfprune.prune(...)` stays the function.
    if name in _API:
        from selfprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'selfprune' has no attribute {name!r}")
