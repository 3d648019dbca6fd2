"""``selfprune eval MODEL_OR_DIR``: perplexity and zero-shot accuracy, as a table and as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfprune.atomic import atomic_write_json
from selfprune.errors import SelfpruneError
from selfprune.versions import versions

# Eval fields only a run uses: the dense model evaluated beside the pruned one.
EVAL_ONLY_IN_RUN = ("eval.dense",)


def register(subparsers) -> None:
    from selfprune.cli.options import PLACEMENT, add_option_flags, section_paths

    p = subparsers.add_parser(
        "eval",
        help="perplexity and zero-shot accuracy of a model or pruned checkpoint",
        description="Evaluate a model (a directory, a pruned checkpoint, a .gguf file, a hub id, or 'default'): perplexity on "
        "WikiText-2 or a text file, and zero-shot accuracy through lm-evaluation-harness. The options and their "
        "defaults are those of a run's eval section and of selfprune.evaluate(), a quick check; --protocol papers "
        "is the papers' protocol (the whole WikiText-2 test set at 2048 and 128 tokens, the seven tasks with all "
        "their documents: --ppl wikitext2 --seqlen 2048 --more-seqlens 128 --max-windows none --tasks all "
        "--limit none), and flags given beside it override it.",
    )
    p.add_argument("model", metavar="MODEL_OR_DIR")
    paths = [x for x in section_paths("eval") if x not in EVAL_ONLY_IN_RUN]
    add_option_flags(p, paths + PLACEMENT, grouped=False)
    p.add_argument("--protocol", choices=["papers"],
                   help="start from a named protocol; flags given beside it override its fields. papers: "
                        "--ppl wikitext2 --seqlen 2048 --more-seqlens 128 --max-windows none --tasks all --limit none")
    p.add_argument("--json", metavar="FILE", help="write the results, protocol and versions here")
    p.set_defaults(handler=run_eval)


def add_trust_flag(p) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code that the model ships (named by its config's auto_map); selfprune's pruned "
                        "checkpoints never need it")


def run_eval(args: argparse.Namespace) -> int:
    import sys

    from selfprune.cli.options import overrides_from, placement_from
    from selfprune.config import section_options
    from selfprune.eval.options import PAPERS_PROTOCOL
    from selfprune.eval.suite import EvalSuite
    from selfprune.eval.zeroshot import parse_tasks
    from selfprune.preflight import resolve_eval_text

    # Check everything that needs no model first, so mistakes fail in a second.
    given = overrides_from(args)
    base = dict(PAPERS_PROTOCOL) if args.protocol == "papers" else {}
    options = section_options("eval", {**base, **given.get("eval", {})})
    tasks = parse_tasks(options.tasks, options.task_source) if options.tasks else []
    warnings: list[str] = []
    text = resolve_eval_text(options.ppl, warnings) if options.ppl else None
    for warning in warnings:  # e.g. the offline text scored in place of WikiText-2
        print(f"note: {warning}", file=sys.stderr)
    if args.json:
        check_writable(args.json)
    place = placement_from(given)

    import torch

    from selfprune.models import load_model

    device = place["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, **{**place, "device": None if place["device_map"] else device})
    result = EvalSuite(options, text, tasks)(model, tokenizer)
    report = {"model": args.model, "device": device, "options": options.model_dump(), "versions": versions()}
    if result["perplexity"] is not None:
        report["perplexity"] = result["perplexity"]  # at --seqlen
        by_seqlen = result.get("perplexity_by_seqlen") or {str(options.seqlen): result["perplexity"]}
        if result.get("perplexity_by_seqlen"):
            report["perplexity_by_seqlen"] = by_seqlen
        for r in by_seqlen.values():
            p = r["protocol"]
            print(f"perplexity {r['ppl']:.3f}  ({p['source']}; seqlen {p['seqlen']}, stride {p['stride']}, "
                  f"{p['windows']} windows, {p['tokens_scored']} tokens scored, {p['dtype']})")
    if result["zeroshot"] is not None:
        report["zeroshot"] = result["zeroshot"]
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
