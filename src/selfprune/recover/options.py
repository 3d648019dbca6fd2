"""Recovery options: what shapes a recovery run, checked before anything is loaded (no torch import here),
and the recovery stage of ``selfprune run``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from pydantic import Field

from selfprune.errors import SelfpruneError
from selfprune.options import Options

DEFAULT_SOURCE = "lambada"
METHODS = ("kd", "lora-kd", "lm")
# Peak learning rates: usual fine-tuning values, not swept here (docs/recover.md). Full updates
# take a small step; LoRA's adapters start at zero and take a larger one.
DEFAULT_LR = {"kd": 1e-4, "lora-kd": 1e-3, "lm": 1e-4}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class RecoverOptions:
    """Everything that shapes a recovery run (the defaults suit a CPU; raise ``tokens`` on a GPU)."""

    method: str = "kd"
    tokens: int = 200_000  # training tokens (rounded up to whole steps)
    seqlen: int = 512
    batch: int = 4  # sequences per forward pass
    grad_accum: int = 1  # forward passes per optimizer step
    lr: float | None = None  # peak learning rate; None: DEFAULT_LR[method]
    warmup: float = 0.05  # fraction of steps with a linear warm-up
    min_lr_ratio: float = 0.1  # the cosine decays to this fraction of the peak
    weight_decay: float = 0.0  # on matrices only
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    temperature: float = 1.0  # distillation temperature
    data: str = DEFAULT_SOURCE  # lambada, wiki-passages, wikitext2-train, c4, a text file, or a hub dataset id
    heldout_blocks: int = 8  # recovery blocks held out for the periodic check
    eval_every: int | None = None  # steps between held-out checks; None: see checks_every; 0: before/after only
    save_every: int = 0  # steps between saved states (needs state_dir); 0: only at the end
    state_dir: str | None = None  # where the resumable state lives; None: no state is saved
    resume: bool = False  # continue from the state in state_dir
    keep_state: bool = False  # keep state_dir after the result is saved
    seed: int = 0
    device: str | None = None  # None: cuda when present, else cpu
    precision: str = "auto"  # auto: bf16 autocast on a GPU (fp16 where bf16 is missing), fp32 on CPU
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    progress: bool = True

    def validate(self) -> "RecoverOptions":
        # inf and nan slip past the range checks below (nan fails every comparison).
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SelfpruneError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if self.method not in METHODS:
            raise SelfpruneError(f"unknown recovery method '{self.method}'; choose one of {', '.join(METHODS)}")
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise SelfpruneError(f"--tokens must be a positive number of training tokens, got {self.tokens}")
        for name in ("seqlen", "batch", "grad_accum", "heldout_blocks", "lora_r"):
            if getattr(self, name) < (2 if name == "seqlen" else 1):
                raise SelfpruneError(f"--{name.replace('_', '-')} must be at least {2 if name == 'seqlen' else 1}, "
                                     f"got {getattr(self, name)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise SelfpruneError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise SelfpruneError("warmup must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.temperature <= 0 or not 0 <= self.lora_dropout < 1:
            raise SelfpruneError("weight_decay and grad_clip must be >= 0, temperature > 0, lora_dropout in [0, 1)")
        if (self.eval_every is not None and self.eval_every < 0) or self.save_every < 0:
            raise SelfpruneError("--eval-every and --save-every must be 0 or more")
        if self.precision not in PRECISIONS:
            raise SelfpruneError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        if self.resume and not self.state_dir:
            raise SelfpruneError("resume needs the state directory of the run to continue (state_dir)")
        return self

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


class RecoverStageOptions(Options):
    """Distillation of the pruned model toward the dense one after the training-free result is
    measured (as ``selfprune recover``); off unless asked for. Defaults are ``RecoverOptions``'s."""

    enabled: bool = Field(False, description="distil the pruned model toward the dense one and report it beside "
                          "the pruned one (DIR/recovered)")
    method: Literal[METHODS] = Field(RecoverOptions.method, description="kd: logit distillation, all "
                                             "parameters; lora-kd: LoRA adapters, merged at save; lm: next-token loss")
    tokens: int = Field(RecoverOptions.tokens, ge=1, description="training tokens")
    seqlen: int = Field(RecoverOptions.seqlen, ge=2, description="tokens per training sequence")
    batch: int = Field(RecoverOptions.batch, ge=1, description="sequences per step")
    lr: float | None = Field(None, gt=0, description="peak learning rate (default: the method's)")
    data: str = Field(RecoverOptions.data, description="training text: lambada, a text FILE or a hub dataset id "
                      "(never the evaluation text)")

    def to_recover_options(self, **settings) -> RecoverOptions:
        fields = self.model_dump(exclude={"enabled"})
        return RecoverOptions(**fields, **settings).validate()
