"""Dense SmolLM2-135M against uniform wanda-sp pruning at 30% and 50%: quality and speed in one table.

Prints one table: parameters, WikiText-2 perplexity, average zero-shot accuracy (first N documents
per task), and the measured prefill and decode speed-ups next to the ideal (dense params / pruned
params) with their ratio. Speed is measured with all models interleaved in one run (warm-up,
medians). Run from the project root:

    python benchmarks/bench_eval.py --wikitext ../shared/data/wikitext-2-raw/wiki.test.raw
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from selfprune.api import prune
from selfprune.eval.perplexity import perplexity
from selfprune.eval.speed import speed
from selfprune.eval.zeroshot import zeroshot
from selfprune.models import load_model
from selfprune.report.tables import format_speed_table, text_table
from selfprune.versions import versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wikitext", default="wikitext2", help="'wikitext2' (hub) or a path to wiki.test.raw")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--mlp-multiple", type=int, default=1, help="round pruned MLP widths to this multiple")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--ppl-windows", type=int, default=8, help="first N WikiText-2 windows (None: all)")
    ap.add_argument("--limit", type=int, default=10, help="zero-shot documents per task (0: skip zero-shot)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--json", help="write everything measured here")
    args = ap.parse_args()
    torch.manual_seed(0)

    dense, tokenizer = load_model("default")
    models = {"dense": dense}
    for ratio in [float(r) for r in args.ratios.split(",")]:
        start = time.perf_counter()
        pruned = prune(copy.deepcopy(dense), tokenizer, ratio=ratio, metric="wanda-sp", seed=0,
                       mlp_multiple=args.mlp_multiple, progress=False)
        print(f"pruned {ratio:.0%} in {time.perf_counter() - start:.0f} s", flush=True)
        models[f"wanda-sp {ratio:.0%}"] = pruned.model

    quality = {}
    for name, model in models.items():
        ppl = perplexity(model, tokenizer, args.wikitext, seqlen=args.seqlen, max_windows=args.ppl_windows)
        zs = zeroshot(model, tokenizer, "all", limit=args.limit) if args.limit else None
        quality[name] = {"perplexity": ppl.to_dict(), "zeroshot": zs}
        print(f"{name}: ppl {ppl.ppl:.2f}" + (f", zero-shot average {zs['average']:.4f}" if zs else ""), flush=True)

    timing = speed(models, warmup=args.warmup, repeats=args.repeats, decode_tokens=args.decode_tokens)
    print()
    print(summary_table(quality, timing, args))
    print()
    print(format_speed_table(timing))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "quality": quality, "speed": timing, "versions": versions()}, fh,
                      indent=2, default=str)


def summary_table(quality: dict, timing: dict, args) -> str:
    rows, comp = timing["models"], timing["comparison"]
    shapes = list(next(iter(rows.values()))["prefill_ms"])
    batches = list(next(iter(rows.values()))["decode_tok_s"])
    header = ["model", "params (M)", "ideal x", "ppl", f"0-shot avg (limit {args.limit})"] + \
             [f"prefill {s} x (/ideal)" for s in shapes] + [f"decode b{b} x (/ideal)" for b in batches]
    lines = []
    for name, q in quality.items():
        c = comp[name]
        zs = q["zeroshot"]
        lines.append([name, f"{rows[name]['params'] / 1e6:.1f}", f"{c['ideal']:.2f}", f"{q['perplexity']['ppl']:.2f}",
                      f"{100 * zs['average']:.1f}" if zs else "-"]
                     + [f"{c['prefill_speedup'][s]:.2f} ({c['prefill_vs_ideal'][s]:.2f})" for s in shapes]
                     + [f"{c['decode_speedup'][b]:.2f} ({c['decode_vs_ideal'][b]:.2f})" for b in batches])
    p = next(iter(quality.values()))["perplexity"]["protocol"]
    note = (f"ppl: WikiText-2 test, seqlen {p['seqlen']}, first {p['windows']} windows ({p['tokens_scored']} tokens), "
            f"{p['dtype']}; speed: {timing['protocol']['device']}, {timing['protocol']['threads']} threads, "
            f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up")
    return text_table(header, lines) + "\n" + note


if __name__ == "__main__":
    main()
