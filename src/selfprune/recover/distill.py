"""The recovery loop: distil a pruned model back toward its dense teacher on held-apart text.

Methods:

- ``kd`` (default): KL(teacher || student) on the logits, every parameter updated (AdamW).
- ``lora-kd``: the same loss, trained through LoRA adapters on the pruned linear layers; the
  adapters are merged before the model is returned, so the result has the pruned shapes.
- ``lm``: plain next-token loss on the recovery text; needs no teacher.

The step count is ``ceil(tokens / (batch * grad_accum * seqlen))``; the learning rate warms up
linearly and decays on a cosine to ``min_lr_ratio`` of its peak. A held-out check (KL to the
teacher and the student's next-token loss on recovery blocks that are never trained on) runs
before, periodically and after. With a ``state_dir`` the full training state is saved every
``save_every`` steps and at the end, and ``resume=True`` continues a killed run exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from selfprune import __version__
from selfprune.errors import SelfpruneError
from selfprune.recover import inputs, lora
from selfprune.recover.data import RecoveryData, load_recovery_data
from selfprune.recover.losses import kd_loss, lm_loss
from selfprune.recover import state as state_io
from selfprune.recover.options import RecoverOptions

ADAM_BETAS = (0.9, 0.95)


@dataclass
class RecoverResult:
    """The recovered model (pruned shapes, updated weights), its tokenizer and the run's summary."""

    model: torch.nn.Module
    tokenizer: object
    summary: dict
    pruning_summary: dict | None = None
    state_dir: Path | None = None
    keep_state: bool = False

    def save(self, out_dir, overwrite: bool = False) -> Path:
        """Write a selfprune checkpoint (atomically) whose summary file also holds this run's summary;
        an earlier recovered model in ``out_dir`` is replaced only with ``overwrite``."""
        from selfprune.outputs import RECOVERED_MODEL
        from selfprune.pruning.checkpoint import save_pruned

        out = inputs.check_out_dir(out_dir, overwrite=overwrite)
        summary = {**(self.pruning_summary or {}), "recovery": self.summary}
        try:
            path = save_pruned(self.model, self.tokenizer, out, extra=summary, overwrite=overwrite, kind=RECOVERED_MODEL)
        except OSError as exc:
            raise SelfpruneError(f"could not write the recovered checkpoint to '{out}': {exc.strerror or exc}") from None
        if self.state_dir is not None and not self.keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)  # the run is complete and written
        return path


def _lr_factor(opts: RecoverOptions) -> Callable[[int], float]:
    steps, warmup, floor = opts.steps, opts.warmup_steps, opts.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _forward(model, ids, amp_dtype, device):
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with ctx:
        return model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def heldout_check(model, teacher, blocks: torch.Tensor, batch: int, device, amp_dtype=None) -> dict:
    """Mean KL(teacher || student) per token (temperature 1) and the student's next-token NLL and ppl."""
    was_training = model.training
    model.eval()
    kl_sum = nll_sum = 0.0
    kl_n = nll_n = 0
    for i in range(0, len(blocks), batch):
        ids = blocks[i : i + batch].to(device)
        s = _forward(model, ids, amp_dtype, device)
        nll_sum += float(lm_loss(s, ids)) * ids[:, 1:].numel()
        nll_n += ids[:, 1:].numel()
        if teacher is not None:
            kl_sum += float(kd_loss(s, _forward(teacher, ids, amp_dtype, device))) * ids.numel()
            kl_n += ids.numel()
        del s
    model.train(was_training)
    nll = nll_sum / nll_n
    out = {"nll": nll, "ppl": math.exp(nll)}
    if teacher is not None:
        out["kl"] = kl_sum / kl_n
    return out


@torch.no_grad()
def _teacher_reference(teacher, blocks, batch, device, amp_dtype) -> dict:
    nll_sum, n = 0.0, 0
    for i in range(0, len(blocks), batch):
        ids = blocks[i : i + batch].to(device)
        nll_sum += float(lm_loss(_forward(teacher, ids, amp_dtype, device), ids)) * ids[:, 1:].numel()
        n += ids[:, 1:].numel()
    return {"nll": nll_sum / n, "ppl": math.exp(nll_sum / n)}


def _options(options: RecoverOptions | None, overrides: dict) -> RecoverOptions:
    """``options`` (or the defaults) with ``overrides``, checked as a whole: a mistake is one line naming the field."""
    base = options.model_dump() if options is not None else {}
    return RecoverOptions.checked(**{**base, **overrides})


def _param_groups(params: list[tuple[str, torch.nn.Parameter]], weight_decay: float):
    decay = [p for _, p in params if p.ndim >= 2]
    other = [p for _, p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _recovery_record(summary: dict, previous: dict | None) -> dict:
    """The compact protocol kept in the checkpoint's config (the full summary goes to the JSON)."""
    t, d = summary["training"], summary["data"]
    record = {
        "method": summary["method"],
        "teacher": summary["teacher"],
        "data": {k: d[k] for k in ("source", "origin", "text_sha256", "stream_tokens", "seqlen", "heldout_tokens")},
        "tokens": t["tokens_trained"],
        "steps": t["steps"],
        "seqlen": t["seqlen"],
        "batch": t["batch"],
        "grad_accum": t["grad_accum"],
        "lr": t["lr"],
        "seed": t["seed"],
        "precision": t["precision"],
        "lora": t["lora"],
        "heldout_before": summary["heldout"]["before"],
        "heldout_after": summary["heldout"]["after"],
        "selfprune_version": __version__,
    }
    if previous:
        record["previous"] = previous
    return record


def recover(
    pruned,
    tokenizer=None,
    teacher=None,
    teacher_tokenizer=None,
    options: RecoverOptions | None = None,
    callback: Callable[[dict], None] | None = None,
    exclude_texts=(),
    trust_remote_code: bool = False,
    **overrides,
) -> RecoverResult:
    """Distil a pruned model back toward its dense teacher; return the recovered model and a summary.

    ``pruned``: a pruned checkpoint directory, an in-memory pruned model (with ``tokenizer``), or a
    ``PruneResult``. An in-memory model is trained in place (pass a copy to keep the original).
    ``teacher``: a MODEL name/path or an in-memory dense model (with ``teacher_tokenizer`` to check
    the vocabularies); default: the dense model the checkpoint records. ``options`` or keyword
    overrides: see :class:`RecoverOptions`. ``callback(record)`` runs after every optimizer step.
    ``exclude_texts``: evaluation texts the recovery data must not overlap (checked line by line).
    """
    wall_start = time.perf_counter()
    opts = _options(options, overrides)
    if opts.method == "lora-kd":
        lora.check_available()
    student = _student(pruned, tokenizer)
    state_dir, saved = _saved_state(opts)
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype = _autocast_dtype(opts.precision, device)
    teacher_model, teacher_label = _teacher(opts, student, teacher, teacher_tokenizer, device, amp_dtype,
                                            trust_remote_code)
    data: RecoveryData = load_recovery_data(student.tokenizer, opts.data, opts.seqlen, opts.heldout_blocks, opts.seed,
                                            exclude_texts, tokens_needed=opts.steps * opts.tokens_per_step)
    student.model.to(device)
    run = _setup(opts, student.model, data, device, amp_dtype, saved, state_dir)
    after = _train(run, teacher_model, data, callback)

    if opts.method == "lora-kd":
        recovered = lora.merge_lora(run.model)
        lora_targets = lora.target_modules(recovered)
    else:
        recovered, lora_targets = student.model, None
    if opts.gradient_checkpointing:
        recovered.gradient_checkpointing_disable()
    recovered.eval()
    summary = _summary(run, student.name, recovered, teacher_model, teacher_label, data, after, lora_targets,
                       wall_start)
    record = recovered.config.selfprune
    record["recovery"] = _recovery_record(summary, record.get("recovery"))
    return RecoverResult(recovered, student.tokenizer, summary, student.pruning_summary, state_dir, opts.keep_state)


@dataclass
class _Student:
    """The pruned model to recover, its tokenizer, how to name it, and its pruning summary."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    pruning_summary: dict | None = None


def _student(pruned, tokenizer) -> _Student:
    """A checkpoint directory, an in-memory pruned model or a ``PruneResult`` as the student."""
    pruning_summary = None
    if hasattr(pruned, "model") and hasattr(pruned, "plan"):  # a PruneResult
        pruned, tokenizer, pruning_summary = pruned.model, tokenizer or pruned.tokenizer, pruned.summary
    if isinstance(pruned, (str, os.PathLike)):
        model, tokenizer, pruning_summary = inputs.load_student(pruned)
        return _Student(model, tokenizer, str(pruned), pruning_summary)
    if not inputs.pruning_record(pruned):
        raise SelfpruneError("the model given is dense (its config has no 'selfprune' entry); recover takes a "
                             "model pruned by selfprune")
    if tokenizer is None:
        raise SelfpruneError("pass the tokenizer of the in-memory pruned model")
    return _Student(pruned, tokenizer, "in-memory model", pruning_summary)


def _saved_state(opts: RecoverOptions) -> tuple[Path | None, dict | None]:
    """The state directory and the state an unfinished run left there (only with ``resume``)."""
    state_dir = Path(opts.state_dir).expanduser() if opts.state_dir else None
    saved = state_io.load_state(state_dir) if state_dir is not None else None
    if saved is not None and not opts.resume:
        raise SelfpruneError(f"'{state_dir}' holds the state of an unfinished recovery run; pass --resume to continue "
                             "it, or delete that directory to start over")
    if opts.resume and saved is None:
        print(f"selfprune: no saved recovery state in '{state_dir}'; starting from step 0", file=sys.stderr)
    return state_dir, saved


def _teacher(opts: RecoverOptions, student: _Student, teacher, teacher_tokenizer, device, amp_dtype,
             trust_remote_code: bool):
    """(teacher model on ``device`` in eval mode, its label), or (None, None) when the method needs none."""
    if not (opts.uses_teacher() or teacher is not None):
        return None, None
    if teacher is None or isinstance(teacher, (str, os.PathLike)):
        label = inputs.require_teacher_name(student.model, teacher)
        # On a GPU the teacher only runs forward passes: keep it in the autocast dtype (half the memory).
        model, teacher_tokenizer = inputs.load_teacher(label, dtype=amp_dtype, device=str(device),
                                                       trust_remote_code=trust_remote_code)
    else:
        model, label = teacher, "in-memory model"
    inputs.check_tokenizers(student.model, student.tokenizer, model, teacher_tokenizer)
    model.to(device).eval()
    return model, label


@dataclass
class _Run:
    """A recovery run set up: the trained model (the student, or its LoRA wrapper), the optimizer and its
    schedule, where it starts (step 0 or a saved state) and what it has recorded so far."""

    opts: RecoverOptions
    model: torch.nn.Module
    trainable: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    device: torch.device
    amp_dtype: torch.dtype | None
    identity: dict
    state_dir: Path | None
    resumed: bool
    start_step: int = 0
    history: dict = dataclasses.field(default_factory=lambda: {"loss": [], "heldout": []})
    train_time_before: float = 0.0
    train_start: float = 0.0
    teacher_ref: dict | None = None
    step_seconds: float = 0.0  # optimizer steps only, without the held-out checks
    train_seconds: float = 0.0  # this process's training, the held-out checks included

    def snapshot(self, step: int) -> None:
        state_io.save_state(self.state_dir, {
            "step": step, "identity": self.identity, "trainable": state_io.trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": state_io.rng_state(), "history": self.history,
            "teacher_reference": self.teacher_ref,
            "train_time_s": self.train_time_before + time.perf_counter() - self.train_start,
        })

    def heldout(self, teacher, data: RecoveryData, step: int) -> dict:
        return {"step": step, "tokens": step * self.opts.tokens_per_step,
                **heldout_check(self.model, teacher, data.heldout, self.opts.batch, self.device, self.amp_dtype)}


def _setup(opts: RecoverOptions, student, data: RecoveryData, device, amp_dtype, saved: dict | None,
           state_dir: Path | None) -> _Run:
    """The model to train (LoRA adapters or every parameter), the optimizer and schedule, restored from
    ``saved`` when resuming (whose settings must be this run's)."""
    identity = {
        "method": opts.method, "tokens": opts.tokens, "seqlen": opts.seqlen, "batch": opts.batch,
        "grad_accum": opts.grad_accum, "lr": opts.peak_lr, "warmup": opts.warmup, "min_lr_ratio": opts.min_lr_ratio,
        "weight_decay": opts.weight_decay, "grad_clip": opts.grad_clip, "temperature": opts.temperature,
        "seed": opts.seed, "data_sha256": data.protocol["text_sha256"], "heldout_blocks": opts.heldout_blocks,
        "lora": [opts.lora_r, opts.lora_alpha, opts.lora_dropout] if opts.method == "lora-kd" else None,
        "start_weights": state_io.weights_fingerprint(student),
    }
    if saved is not None:
        state_io.check_identity(saved["identity"], identity, state_dir)

    _seed_everything(opts.seed)
    if opts.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if opts.method == "lora-kd":
        model = lora.add_lora(student, opts.lora_r, opts.lora_alpha, opts.lora_dropout)
    else:
        model = student
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(_param_groups(named, opts.weight_decay), lr=opts.peak_lr, betas=ADAM_BETAS)
    run = _Run(opts, model, [p for _, p in named], optimizer,
               torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(opts)),
               torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), device, amp_dtype, identity,
               state_dir, resumed=saved is not None)
    if saved is not None:
        state_io.load_trainable_state(model, saved["trainable"])
        optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        run.scaler.load_state_dict(saved["scaler"])
        state_io.set_rng_state(saved["rng"])
        run.start_step, run.history = saved["step"], saved["history"]
        run.train_time_before, run.teacher_ref = saved["train_time_s"], saved["teacher_reference"]
    return run


def _train(run: _Run, teacher, data: RecoveryData, callback) -> dict:
    """The optimizer steps from ``run.start_step``, held-out checks and saved states on the way; returns the
    held-out check after the last step."""
    opts, device, amp_dtype = run.opts, run.device, run.amp_dtype
    steps, per_step, checks_every = opts.steps, opts.tokens_per_step, opts.checks_every()
    run.train_start = time.perf_counter()
    if not run.resumed:
        if teacher is not None:
            run.teacher_ref = _teacher_reference(teacher, data.heldout, opts.batch, device, amp_dtype)
        run.history["heldout"].append(run.heldout(teacher, data, 0))

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=run.start_step, desc=f"recover ({opts.method})", unit="step",
               disable=not opts.progress, dynamic_ncols=True)
    last = run.history["heldout"][-1] if run.history["heldout"] else {}
    last_saved = run.start_step
    try:
        for step in range(run.start_step, steps):
            step_start = time.perf_counter()
            record = _step(run, teacher, data, step)
            run.step_seconds += time.perf_counter() - step_start
            run.history["loss"].append(record)
            done = record["step"]
            if checks_every and done % checks_every == 0 and done < steps:
                last = run.heldout(teacher, data, done)
                run.history["heldout"].append(last)
            postfix = {"loss": f"{record['loss']:.4f}",
                       "tok/s": f"{(done - run.start_step) * per_step / run.step_seconds:.0f}"}
            if last:
                postfix["heldout"] = f"{last.get('kl', last['nll']):.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if run.state_dir is not None and opts.save_every and done % opts.save_every == 0 and done < steps:
                run.snapshot(done)
                last_saved = done
            if callback is not None:
                callback(record)
    except KeyboardInterrupt:
        if run.state_dir is not None and last_saved:
            print(f"\nselfprune: the state of step {last_saved} is saved in '{run.state_dir}'; rerun the same "
                  "command with --resume to continue from there", file=sys.stderr)
        raise
    finally:
        bar.close()

    after = run.heldout(teacher, data, steps)
    if not run.history["heldout"] or run.history["heldout"][-1]["step"] != steps:
        run.history["heldout"].append(after)
    run.train_seconds = time.perf_counter() - run.train_start
    if run.state_dir is not None:
        run.snapshot(steps)  # a kill between here and the saved checkpoint loses nothing
    return after


def _step(run: _Run, teacher, data: RecoveryData, step: int) -> dict:
    """One optimizer step over ``grad_accum`` micro-batches; its record (loss, learning rate, gradient norm)."""
    opts, device, amp_dtype = run.opts, run.device, run.amp_dtype
    ids_all = data.batch(step, opts.batch * opts.grad_accum)
    lr_now = run.scheduler.get_last_lr()[0]
    loss_value = 0.0
    for micro in range(opts.grad_accum):
        ids = ids_all[micro * opts.batch : (micro + 1) * opts.batch].to(device)
        logits = _forward(run.model, ids, amp_dtype, device)
        if opts.uses_teacher():
            with torch.no_grad():
                target = _forward(teacher, ids, amp_dtype, device)
            loss = kd_loss(logits, target, opts.temperature)
        else:
            loss = lm_loss(logits, ids)
        run.scaler.scale(loss / opts.grad_accum).backward()
        loss_value += loss.detach().item() / opts.grad_accum
        del logits, loss
    run.scaler.unscale_(run.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.trainable, opts.grad_clip or float("inf")))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    done = step + 1
    return {"step": done, "tokens": done * opts.tokens_per_step, "loss": loss_value, "lr": lr_now,
            "grad_norm": grad_norm}


def _summary(run: _Run, student_name: str, recovered, teacher, teacher_label, data: RecoveryData, after: dict,
             lora_targets, wall_start: float) -> dict:
    """What the run did and measured: its inputs, the training protocol, held-out checks and timings."""
    opts, steps, per_step = run.opts, run.opts.steps, run.opts.tokens_per_step
    trained_now = (steps - run.start_step) * per_step
    from selfprune.versions import versions

    return {
        "method": opts.method,
        "student": student_name,
        "teacher": teacher_label,
        "params": {
            "student": sum(p.numel() for p in recovered.parameters()),
            "trainable": sum(p.numel() for p in run.trainable),
            "teacher": sum(p.numel() for p in teacher.parameters()) if teacher is not None else None,
        },
        "data": data.protocol,
        "training": {
            "tokens_requested": opts.tokens,
            "tokens_trained": steps * per_step,
            "steps": steps,
            "tokens_per_step": per_step,
            "epochs": steps * opts.batch * opts.grad_accum / len(data.train),
            "seqlen": opts.seqlen,
            "batch": opts.batch,
            "grad_accum": opts.grad_accum,
            "lr": opts.peak_lr,
            "schedule": f"linear warm-up {opts.warmup_steps} steps, cosine to {opts.min_lr_ratio} x peak",
            "optimizer": f"AdamW betas {ADAM_BETAS}, weight decay {opts.weight_decay} (matrices)",
            "grad_clip": opts.grad_clip,
            "loss": {"kd": f"KL(teacher || student), temperature {opts.temperature}, every position",
                     "lora-kd": f"KL(teacher || student), temperature {opts.temperature}, every position",
                     "lm": "next-token cross-entropy"}[opts.method],
            "trained_parameters": "LoRA adapters (merged at the end)" if opts.method == "lora-kd" else "all",
            "lora": {"r": opts.lora_r, "alpha": opts.lora_alpha, "dropout": opts.lora_dropout,
                     "targets": lora_targets} if opts.method == "lora-kd" else None,
            "seed": opts.seed,
            "device": str(run.device),
            "precision": str(run.amp_dtype).replace("torch.", "") + " autocast" if run.amp_dtype else "fp32",
            "gradient_checkpointing": opts.gradient_checkpointing,
            "eval_every": opts.checks_every(),
            "save_every": opts.save_every,
            "resumed_from_step": run.start_step if run.resumed else None,
        },
        "heldout": {"teacher": run.teacher_ref, "before": _metrics(run.history["heldout"][0]),
                    "after": _metrics(after)},
        "loss_curve": run.history["loss"],
        "heldout_curve": run.history["heldout"],
        "train_time_s": run.train_time_before + run.train_seconds,
        "wall_time_s": time.perf_counter() - wall_start,
        "tokens_per_s": trained_now / run.step_seconds if run.step_seconds > 0 else None,  # optimizer steps only
        "versions": versions(),
    }


def _metrics(check: dict) -> dict:
    return {k: v for k, v in check.items() if k not in ("step", "tokens")}
