"""``selfprune recover PRUNED_DIR --out DIR``: distil a pruned checkpoint back toward its dense model."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from selfprune.errors import SelfpruneError

_TOKENS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*")


def parse_tokens(text: str) -> int:
    """"200000", "200k", "1.5M" -> a token count (argparse type)."""
    match = _TOKENS.fullmatch(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a token count like 200000, 200k or 1M")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[match.group(2).lower()]
    return int(round(float(match.group(1)) * scale))


def register(subparsers) -> None:
    from selfprune.cli.eval import add_trust_flag
    from selfprune.recover.options import DEFAULT_LR, METHODS, PRECISIONS, RecoverOptions

    d = RecoverOptions()
    p = subparsers.add_parser(
        "recover",
        help="distil a pruned checkpoint back toward its dense model (KD, LoRA-KD or next-token loss)",
        description="Train a pruned checkpoint on text disjoint from evaluation (LAMBADA passages by default), by "
        "logit distillation from the dense model it was pruned from (recorded in the checkpoint). The output is "
        "a selfprune checkpoint with a 'recovery' record (data, budget, held-out loss before and after).",
    )
    p.add_argument("pruned", metavar="PRUNED_DIR", help="a checkpoint written by `selfprune prune`")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the recovered checkpoint")
    p.add_argument("--teacher", metavar="MODEL", help="the dense teacher (default: the model the checkpoint was pruned from)")
    p.add_argument("--method", choices=METHODS, default=d.method,
                   help="kd: logit distillation, all weights (default); lora-kd: the same through LoRA adapters, "
                        "merged at the end; lm: next-token loss, no teacher")
    p.add_argument("--tokens", type=parse_tokens, default=d.tokens, metavar="N",
                   help=f"training tokens, e.g. 200k or 1M (default {d.tokens:,})")
    p.add_argument("--seqlen", type=int, default=d.seqlen, help=f"tokens per training sequence (default {d.seqlen})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"sequences per forward pass (default {d.batch})")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, metavar="K",
                   help="forward passes per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: " + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items()) + ")")
    p.add_argument("--warmup", type=float, default=d.warmup, help=f"warm-up fraction of the steps (default {d.warmup})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default 0)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="distillation temperature (default 1)")
    p.add_argument("--data", default=d.data, metavar="lambada|FILE|HUB_ID",
                   help="recovery text: lambada (offline, default), wiki-passages (offline), wikitext2-train, c4, a text "
                        "FILE, or a hub dataset id (train split, 'owner/name[:config]'); never the evaluation text")
    p.add_argument("--heldout-blocks", type=int, default=d.heldout_blocks, metavar="N",
                   help=f"recovery blocks held out for the periodic check (default {d.heldout_blocks})")
    p.add_argument("--eval-every", type=int, default=None, metavar="STEPS",
                   help="steps between held-out checks (default: up to 10, costing ~10%% of the training; 0: before and after only)")
    p.add_argument("--save-every", type=int, default=50, metavar="STEPS",
                   help="steps between saved training states for --resume (default 50; 0: only at the end)")
    p.add_argument("--state-dir", metavar="DIR", help="where the resumable state lives (default: OUT.state); "
                   "removed once the checkpoint is written")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its saved state")
    p.add_argument("--keep-state", action="store_true", help="keep the state directory after the checkpoint is written")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (data order, initialisation)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda or cuda:1 (default: cuda when present)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="auto: bf16 autocast on a GPU (fp16 where bf16 is missing), fp32 on CPU (default)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory for large models, slower")
    p.add_argument("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha:g})")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help="LoRA dropout (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the summary (protocol, curves, versions) here")
    add_trust_flag(p)
    p.set_defaults(handler=run_recover)


def options_from_args(args: argparse.Namespace):
    from selfprune.recover.options import RecoverOptions

    state_dir = args.state_dir or str(Path(args.out).expanduser()) + ".state"
    return RecoverOptions(
        method=args.method, tokens=args.tokens, seqlen=args.seqlen, batch=args.batch, grad_accum=args.grad_accum,
        lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay, temperature=args.temperature,
        data=args.data, heldout_blocks=args.heldout_blocks, eval_every=args.eval_every, save_every=args.save_every,
        state_dir=state_dir, resume=args.resume, keep_state=args.keep_state, seed=args.seed, device=args.device,
        precision=args.precision, gradient_checkpointing=args.gradient_checkpointing, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
    ).validate()


def run_recover(args: argparse.Namespace) -> int:
    from selfprune.cli.bench import recorded_baseline
    from selfprune.cli.eval import check_writable
    from selfprune.models.loading import check_remote_code, resolve_model_path
    from selfprune.recover import inputs
    from selfprune.recover.data import check_source

    # Everything that needs no model first: a mistake fails in a second and writes nothing.
    options = options_from_args(args)
    path = resolve_model_path(args.pruned)
    config = Path(path) / "config.json"
    if config.exists():
        import json

        if "selfprune" not in json.loads(config.read_text()):
            raise SelfpruneError(
                f"'{args.pruned}' is a dense model (its config has no 'selfprune' entry); recover takes a checkpoint "
                "written by `selfprune prune` and distils it back toward the dense model it came from"
            )
    check_source(args.data)
    inputs.check_out_dir(args.out, args.pruned)
    if args.json:
        check_writable(args.json)
    # Neither model loads if one of them would run code that is not trusted.
    check_remote_code(path, args.trust_remote_code, args.pruned)
    teacher = args.teacher or recorded_baseline(path)
    if teacher and Path(teacher).expanduser().is_dir():
        check_remote_code(resolve_model_path(teacher), args.trust_remote_code, teacher)

    from selfprune.recover.distill import recover

    result = recover(args.pruned, teacher=args.teacher, options=options, trust_remote_code=args.trust_remote_code)
    out = result.save(args.out)
    print(format_summary(result.summary))
    if args.json:
        from selfprune.atomic import atomic_write_json

        atomic_write_json(Path(args.json).expanduser(), {"pruned": args.pruned, "out": str(out), **result.summary})
        print(f"wrote {args.json}")
    print(f"saved to {out}")
    return 0


def format_summary(summary: dict) -> str:
    from selfprune.report.tables import text_table

    h = summary["heldout"]
    rows = []
    if h.get("teacher"):
        rows.append(["teacher (dense)", "", f"{h['teacher']['nll']:.4f}", f"{h['teacher']['ppl']:.2f}"])
    for name in ("before", "after"):
        m = h[name]
        rows.append([f"pruned, {name}", f"{m['kl']:.4f}" if "kl" in m else "", f"{m['nll']:.4f}", f"{m['ppl']:.2f}"])
    t = summary["training"]
    speed = f", {summary['tokens_per_s']:.0f} tokens/s" if summary.get("tokens_per_s") else ""
    return (
        f"held-out recovery text ({summary['data']['heldout_tokens']:,} tokens of {summary['data']['source']}):\n"
        + text_table(["model", "KL to teacher", "NLL", "ppl"], rows)
        + f"\n{summary['method']}: {t['tokens_trained']:,} tokens in {t['steps']} steps "
        f"(lr {t['lr']:g}, seqlen {t['seqlen']}, {t['precision']} on {t['device']}), "
        f"{summary['train_time_s']:.0f} s{speed}"
    )
