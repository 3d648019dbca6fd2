"""The options of evaluation: quality (``selfprune eval``) and speed (``selfprune bench``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from selfprune.eval.zeroshot import SOURCES as TASK_SOURCES
from selfprune.eval.zeroshot import TASKS
from selfprune.options import Options, bad, comma_list

# The protocol of the pruning papers: perplexity on the whole WikiText-2 test set at 2048 tokens
# (SliceGPT, SparseGPT, EvoPress) and at 128 (LLM-Pruner, FLAP), and the seven zero-shot tasks
# with all their documents. ``EvalOptions.papers()`` and ``selfprune eval --protocol papers``.
PAPERS_PROTOCOL = {"ppl": "wikitext2", "seqlen": 2048, "more_seqlens": [128], "max_windows": None, "stride": None,
                   "tasks": list(TASKS), "limit": None}


class EvalOptions(Options):
    """Quality of the dense and pruned models (as ``selfprune eval``)."""

    ppl: str | None = Field("auto", description="perplexity text: wikitext2 (hub), coqa (offline stories), a text "
                            "FILE, auto (wikitext2 when it can be loaded, else coqa, said so), or null (skip)")
    seqlen: int = Field(512, ge=2, description="tokens per perplexity window")
    more_seqlens: list[int] = Field([], description="also score perplexity at these window lengths; the papers' "
                                    "protocol adds 128 to 2048")
    max_windows: int | None = Field(8, ge=1, description="score only the first N windows (null: the whole text)")
    stride: int | None = Field(None, ge=1, description="window stride (default: seqlen, no overlap)")
    tasks: list[str] = Field(["piqa", "arc_easy"], description="zero-shot tasks (lm-eval), or 'all'; none or [] skips zero-shot")
    limit: int | None = Field(50, ge=1, description="documents per zero-shot task (null: all; not comparable to papers)")
    task_source: Literal[TASK_SOURCES] = Field("offline", description="offline task data or lm-eval's hub datasets")
    batch_size: int | None = Field(None, ge=1, description="batch size: perplexity windows (default: 2048 tokens' "
                                   "worth) and lm-eval (default 16)")
    dense: bool = Field(True, description="also evaluate the dense model, for the comparison table")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, v):
        if v is None:  # --tasks none
            return []
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        return list(TASKS) if v == ["all"] else v

    @field_validator("more_seqlens", mode="before")
    @classmethod
    def _seqlens(cls, v):
        if v is None:  # --more-seqlens none
            return []
        if isinstance(v, int):
            return [v]
        return comma_list(v, int, "window lengths like 128 or 128,4096")

    @model_validator(mode="after")
    def _consistent(self):
        if self.stride is not None and self.stride > self.seqlen:
            raise bad("stride", f"{self.stride} is longer than seqlen {self.seqlen}")
        for n in self.more_seqlens:
            if n < 2:
                raise bad("more_seqlens", f"{n} is too short; use at least 2 (papers use 128 or 2048)")
            if n == self.seqlen:
                raise bad("more_seqlens", f"{n} repeats seqlen; list only the other window lengths")
        if len(set(self.more_seqlens)) < len(self.more_seqlens):
            raise bad("more_seqlens", f"{', '.join(map(str, self.more_seqlens))} names a length twice")
        short = [n for n in self.more_seqlens if self.stride is not None and self.stride > n]
        if short:
            raise bad("stride", f"{self.stride} is longer than the window length {min(short)} in more_seqlens")
        if self.task_source == "offline":
            unknown = [t for t in self.tasks if t not in TASKS]
            if unknown:
                raise bad("tasks", f"unknown offline task(s) {', '.join(unknown)}; known offline tasks: "
                                   f"{', '.join(TASKS)} (other lm-eval tasks need task_source: hub)")
        return self

    @classmethod
    def papers(cls, **overrides) -> EvalOptions:
        """The papers' protocol (``PAPERS_PROTOCOL``) with some fields overridden, e.g.
        ``EvalOptions.papers(ppl="wiki.test.raw", limit=500)``."""
        return cls(**{**PAPERS_PROTOCOL, **overrides})

    @property
    def seqlens(self) -> list[int]:
        """Every perplexity window length: ``seqlen`` first, then ``more_seqlens``."""
        return [self.seqlen, *self.more_seqlens]


class BenchOptions(Options):
    """Speed of the dense and pruned models side by side (as ``selfprune bench``)."""

    enabled: bool = Field(True, description="measure speed at all")
    shapes: list[tuple[int, int]] = Field([(1, 128), (1, 512)], description="prefill (batch, sequence) shapes")
    decode_batches: list[int] = Field([1], min_length=1, description="decode batch sizes")
    prompt_len: int = Field(32, ge=1, description="prompt tokens before decoding")
    decode_tokens: int = Field(32, ge=1, description="greedy tokens decoded per measurement")
    warmup: int = Field(1, ge=0, description="untimed runs per model and shape")
    repeats: int = Field(3, ge=1, description="timed runs per model and shape (median kept)")

    @field_validator("shapes", mode="before")
    @classmethod
    def _shapes(cls, v):
        # "1x128,8x128" on the command line
        if isinstance(v, str):
            try:
                shapes = [tuple(int(n) for n in s.lower().split("x")) for s in v.split(",") if s.strip()]
            except ValueError:
                shapes = []
            if not shapes or any(len(s) != 2 for s in shapes):
                raise ValueError(f"shapes '{v}' is not a list of BxS pairs like 1x128,8x128")
            return shapes
        return v

    @field_validator("decode_batches", mode="before")
    @classmethod
    def _ints(cls, v):
        return comma_list(v, int, "batch sizes like 1 or 1,8")

    @model_validator(mode="after")
    def _consistent(self):
        if not self.shapes or any(b < 1 or s < 1 for b, s in self.shapes):
            raise bad("shapes", "needs at least one shape with positive batch and sequence")
        if any(b < 1 for b in self.decode_batches):
            raise bad("decode_batches", "must be positive")
        return self
