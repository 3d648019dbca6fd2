"""Recovery options: what shapes a recovery run, checked before anything is loaded (no torch import here),
and the recovery stage of ``selfprune run``.

``RecoverOptions`` is the one place each option, its default, its allowed values and its description
are declared: ``selfprune recover``'s flags are generated from its fields, and ``RecoverStageOptions``
(a run's ``recover:`` section) takes a few of its fields as they are."""

from __future__ import annotations

import copy
import math
import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from selfprune.errors import SelfpruneError
from selfprune.options import FIELD_TAG, Options, bad

DEFAULT_SOURCE = "lambada"
METHODS = ("kd", "lora-kd", "lm")
# Peak learning rates: usual fine-tuning values, not swept here (docs/recover.md). Full updates
# take a small step; LoRA's adapters start at zero and take a larger one.
DEFAULT_LR = {"kd": 1e-4, "lora-kd": 1e-3, "lm": 1e-4}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_TOKENS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*")


def token_count(text: str) -> int:
    """"200000", "200k", "1.5M" -> a token count; ValueError for anything else."""
    match = _TOKENS.fullmatch(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a token count like 200000, 200k or 1M")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[match.group(2).lower()]
    return round(float(match.group(1)) * scale)


# A token count: a number, or text like "200k" or "1M" (a flag, a config file).
Tokens = Annotated[int, BeforeValidator(lambda v: token_count(v) if isinstance(v, str) else v)]


class RecoverOptions(Options):
    """Everything that shapes a recovery run (the defaults suit a CPU; raise ``tokens`` on a GPU).

    Checked when built: a bad value raises pydantic's ``ValidationError`` naming the field;
    ``RecoverOptions.checked(**values)`` raises a one-line ``SelfpruneError`` instead."""

    method: Literal[METHODS] = Field("kd", description="kd: logit distillation, all weights; lora-kd: the same "
                                     "through LoRA adapters, merged at the end; lm: next-token loss, no teacher")
    tokens: Tokens = Field(200_000, ge=1, description="training tokens, e.g. 200k or 1M, rounded up to whole steps")
    seqlen: int = Field(512, ge=2, description="tokens per training sequence")
    batch: int = Field(4, ge=1, description="sequences per forward pass")
    grad_accum: int = Field(1, ge=1, description="forward passes per optimizer step")
    lr: float | None = Field(None, gt=0, description="peak learning rate (default: the method's: "
                             + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items()) + ")")
    warmup: float = Field(0.05, ge=0, lt=1, description="fraction of the steps with a linear warm-up, in [0, 1)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine decays to this fraction of the peak "
                                "learning rate, in [0, 1]")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, on matrices only")
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 turns clipping off")
    temperature: float = Field(1.0, gt=0, description="distillation temperature")
    data: str = Field(DEFAULT_SOURCE, description="recovery text: lambada (offline), wiki-passages (offline), "
                      "wikitext2-train, c4, a text FILE, or a hub dataset id (train split, 'owner/name[:config]'); "
                      "never the evaluation text")
    heldout_blocks: int = Field(8, ge=1, description="recovery blocks held out for the periodic check")
    eval_every: int | None = Field(None, ge=0, description="steps between held-out checks (default: up to 10, "
                                   "costing ~10% of the training; 0: before and after only)")
    save_every: int = Field(50, ge=0, description="steps between saved training states for resume (needs "
                            "state_dir; 0: only at the end)")
    state_dir: str | None = Field(None, description="where the resumable training state lives, removed once the "
                                  "result is saved (default: OUT.state for selfprune recover; none, no state, "
                                  "for the API)")
    resume: bool = Field(False, description="continue an interrupted run from its saved state (needs state_dir)")
    keep_state: bool = Field(False, description="keep the state directory after the result is saved")
    seed: int = Field(0, description="random seed (data order, initialisation)")
    device: str | None = Field(None, description="torch device, e.g. cuda or cuda:1 (default: cuda when present, "
                               "else cpu)")
    precision: Literal[PRECISIONS] = Field("auto", description="auto: bf16 autocast on a GPU (fp16 where bf16 is "
                                           "missing), fp32 on CPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                         "memory for large models, ~30% slower")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout, in [0, 1)")
    progress: bool = Field(True, description="show a progress bar")

    @model_validator(mode="after")
    def _consistent(self):
        if self.resume and not self.state_dir:
            raise bad("state_dir", "resume needs the state directory of the run to continue")
        return self

    @classmethod
    def checked(cls, **values) -> RecoverOptions:
        """The options, or a ``SelfpruneError`` naming every bad field in one line."""
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise SelfpruneError(f"unknown recovery option(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(cls.model_fields))}")
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SelfpruneError("invalid recovery options: " + describe(exc)) from None

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.grad_accum * self.seqlen

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup * self.steps)

    def checks_every(self) -> int:
        """Steps between held-out checks: as given, or at most 10 per run costing ~10% of the training.

        A check is two forward passes (student, teacher) over the held-out tokens; a step is about
        four passes' worth (teacher forward, student forward and backward) over its tokens.
        """
        if self.eval_every is not None:
            return self.eval_every
        heldout_tokens = self.heldout_blocks * self.seqlen
        checks = min(10, int(0.2 * self.steps * self.tokens_per_step / heldout_tokens))
        return self.steps // checks if checks >= 1 else 0

    def uses_teacher(self) -> bool:
        return self.method in ("kd", "lora-kd")


def describe(exc: ValidationError) -> str:
    """'field 'warmup': Input should be less than 1 (got 1.5); ...': every bad field of one options class."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"] if not isinstance(x, int))
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith(FIELD_TAG):
            _, field, msg = msg.split(FIELD_TAG, 2)
        given = err.get("input")
        shown = "" if isinstance(given, (dict, list)) or err["type"].startswith("value_error") else f" (got {given!r})"
        parts.append(f"field '{field or 'options'}': {msg}{shown}")
    return "; ".join(parts)


def _same(name: str):
    """``RecoverOptions``' field ``name``: its default, constraints and description, declared once."""
    return copy.deepcopy(RecoverOptions.model_fields[name])


class RecoverStageOptions(Options):
    """Distillation of the pruned model toward the dense one after the training-free result is
    measured (as ``selfprune recover``); off unless asked for. The other fields are ``RecoverOptions``'s."""

    enabled: bool = Field(False, description="distil the pruned model toward the dense one and report it beside "
                          "the pruned one (DIR/recovered)")
    method: Literal[METHODS] = _same("method")
    tokens: Tokens = _same("tokens")
    seqlen: int = _same("seqlen")
    batch: int = _same("batch")
    lr: float | None = _same("lr")
    data: str = _same("data")

    def to_recover_options(self, **settings) -> RecoverOptions:
        return RecoverOptions.checked(**self.model_dump(exclude={"enabled"}), **settings)
