"""Recovery: distil a pruned model back toward the dense model it came from.

``recover(pruned, ...)`` trains the pruned model (logit distillation by default, LoRA or plain
next-token loss on request) on text disjoint from evaluation and returns a
:class:`RecoverResult`, whose ``save(dir)`` writes a selfprune checkpoint with a ``recovery``
record in its config. ``options`` holds the settings, ``data`` the text and its protocol,
``distill`` the loop, ``state`` the resumable state, ``lora`` the adapters.
"""

from selfprune.recover.options import DEFAULT_LR, METHODS, RecoverOptions


def __getattr__(name):
    # The loop imports torch; keep `import selfprune.recover.options` (the CLI's --help) light.
    if name in ("recover", "RecoverResult"):
        from selfprune.recover import distill

        return getattr(distill, name)
    raise AttributeError(f"module 'selfprune.recover' has no attribute {name!r}")


__all__ = ["recover", "RecoverOptions", "RecoverResult", "METHODS", "DEFAULT_LR"]
