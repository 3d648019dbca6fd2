"""The evaluation a run asks for, on one model: perplexity and zero-shot accuracy as configured."""

from __future__ import annotations

import contextlib
from typing import Any

from selfprune.eval.options import EvalOptions


class EvalSuite:
    """Perplexity on ``eval_text`` (None: skipped) and zero-shot on ``tasks``; ``steps`` sizes a
    progress bar. ``out["perplexity"]`` is at ``seqlen``; with ``more_seqlens``,
    ``out["perplexity_by_seqlen"]`` maps every length, ``seqlen`` included, as a string ("2048") to
    its result (the key is absent without ``more_seqlens``). ``quiet_libraries`` is a context
    manager that keeps lm-eval's output off screen."""

    def __init__(self, options: EvalOptions, eval_text: Any = None, tasks: list[str] | None = None,
                 quiet_libraries=contextlib.nullcontext):
        self.options, self.eval_text, self.tasks = options, eval_text, list(tasks or [])
        self.quiet_libraries = quiet_libraries
        self.steps = int(eval_text is not None) + int(bool(self.tasks))

    def __call__(self, model, tokenizer, bar=None) -> dict:
        e = self.options
        out: dict[str, Any] = {"perplexity": None, "zeroshot": None}
        if self.eval_text is not None:
            from selfprune.eval.perplexity import perplexity

            _note(bar, "perplexity")
            by_seqlen = {str(n): perplexity(model, tokenizer, self.eval_text, seqlen=n, max_windows=e.max_windows,
                                            stride=e.stride, batch_size=e.batch_size).to_dict()
                         for n in e.seqlens}
            out["perplexity"] = by_seqlen[str(e.seqlen)]
            if e.more_seqlens:
                out["perplexity_by_seqlen"] = by_seqlen
            _step(bar)
        if self.tasks:
            from selfprune.eval.zeroshot import zeroshot

            _note(bar, "zero-shot")
            with self.quiet_libraries():
                out["zeroshot"] = zeroshot(model, tokenizer, self.tasks, limit=e.limit, batch_size=e.batch_size or 16,
                                           source=e.task_source)
            _step(bar)
        return out


def _note(bar, text: str) -> None:
    if bar is not None:
        bar.set_postfix_str(text)


def _step(bar) -> None:
    if bar is not None:
        bar.update(1)
