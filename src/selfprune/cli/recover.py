"""``selfprune recover PRUNED_DIR --out DIR``: distil a pruned checkpoint back toward its dense model."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfprune.errors import SelfpruneError

# Flags whose placeholder says more than the field's name.
METAVARS = {"tokens": "N", "grad_accum": "K", "data": "lambada|FILE|HUB_ID", "heldout_blocks": "N",
            "eval_every": "STEPS", "save_every": "STEPS", "state_dir": "DIR"}


def parse_tokens(text: str) -> int:
    """"200000", "200k", "1.5M" -> a token count (argparse type)."""
    from selfprune.recover.options import token_count

    try:
        return token_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers) -> None:
    from selfprune.cli.eval import add_trust_flag
    from selfprune.cli.options import add_model_flags
    from selfprune.recover.options import RecoverOptions

    p = subparsers.add_parser(
        "recover",
        help="distil a pruned checkpoint back toward its dense model (KD, LoRA-KD or next-token loss)",
        description="Train a pruned checkpoint on text disjoint from evaluation (LAMBADA passages by default), by "
        "logit distillation from the dense model it was pruned from (recorded in the checkpoint). The output is "
        "a selfprune checkpoint with a 'recovery' record (data, budget, held-out loss before and after). The "
        "options and their defaults are those of selfprune.recover.RecoverOptions.",
    )
    p.add_argument("pruned", metavar="PRUNED_DIR", help="a checkpoint written by `selfprune prune`")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the recovered checkpoint")
    p.add_argument("--teacher", metavar="MODEL", help="the dense teacher (default: the model the checkpoint was pruned from)")
    add_model_flags(p, RecoverOptions, METAVARS)
    p.add_argument("--json", metavar="FILE", help="also write the summary (protocol, curves, versions) here")
    add_trust_flag(p)
    p.set_defaults(handler=run_recover)


def options_from_args(args: argparse.Namespace):
    """The ``RecoverOptions`` of the flags (the state in OUT.state unless --state-dir), or one line naming
    every bad flag."""
    from pydantic import ValidationError

    from selfprune.cli.options import values_from
    from selfprune.config import describe_errors
    from selfprune.recover.options import RecoverOptions

    values = values_from(args, RecoverOptions)
    values["state_dir"] = values.get("state_dir") or str(Path(args.out).expanduser()) + ".state"
    try:
        return RecoverOptions(**values)
    except ValidationError as exc:
        raise SelfpruneError(describe_errors(exc, flags=True)) from None


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
    check_source(options.data)
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
