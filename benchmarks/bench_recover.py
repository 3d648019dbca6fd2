"""Recovery on the default model: WikiText-2 perplexity and zero-shot accuracy before and after.

For one pruning genome (a uniform ratio, or per-layer rates such as a search's best.json): the
dense model and the training-free pruned model are evaluated, then each recovery run
(METHOD:TOKENS, each from the same pruned checkpoint) is trained on LAMBADA passages and
evaluated the same way. Evaluation: WikiText-2 raw test, the first --ppl-windows windows of
--ppl-seqlen tokens (never seen by pruning or recovery), and lm-eval zero-shot on --tasks (first
--limit documents each). The results JSON is rewritten after every run and a rerun skips what it
holds, and each recovery keeps a resumable state, so a killed benchmark continues where it was.

    python benchmarks/bench_recover.py --name uniform30 --ratio 0.3
    python benchmarks/bench_recover.py --name searched30 --rates SEARCH_DIR/best.json
    python benchmarks/bench_recover.py --name uniform30 --sweep kd:3e-5,1e-4,3e-4 --runs ''  # lr on held-out KL
    python benchmarks/bench_recover.py --table benchmarks/results/recover/*.json            # markdown table
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_wikitext  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "recover"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", help="name of this genome's results (file NAME.json)")
    p.add_argument("--ratio", type=float, help="uniform pruning ratio")
    p.add_argument("--rates", help="per-layer rates JSON (e.g. a search's best.json)")
    p.add_argument("--runs", default="kd:50k,kd:200k,lora-kd:200k", help="METHOD:TOKENS,... recovery runs")
    p.add_argument("--sweep", default="", help="METHOD:LR1,LR2,... short runs scored on held-out KL only")
    p.add_argument("--sweep-tokens", default="50k")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ppl-windows", type=int, default=32)
    p.add_argument("--ppl-seqlen", type=int, default=512)
    p.add_argument("--tasks", default="piqa,arc_easy")
    p.add_argument("--limit", type=int, default=200, help="zero-shot documents per task")
    p.add_argument("--wikitext", default=default_wikitext())
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "selfprune-bench-recover"),
                   help="folder for pruned and recovered checkpoints and resumable states (default: in the temp folder)")
    p.add_argument("--out", help="results JSON (default benchmarks/results/recover/NAME.json)")
    p.add_argument("--baseline-from", metavar="JSON",
                   help="take the dense and training-free results from this results file (same genome and protocol) "
                        "once it has them, instead of evaluating again: lets two runs of one genome go in parallel")
    p.add_argument("--table", nargs="*", metavar="JSON", help="print the markdown table of these results and exit")
    return p.parse_args(argv)


def evaluate(model, tokenizer, text, args) -> dict:
    from selfprune.eval.perplexity import perplexity
    from selfprune.eval.zeroshot import zeroshot

    start = time.perf_counter()
    ppl = perplexity(model, tokenizer, text, seqlen=args.ppl_seqlen, max_windows=args.ppl_windows)
    zs = zeroshot(model, tokenizer, args.tasks, limit=args.limit) if args.limit else None
    return {"perplexity": ppl.to_dict(), "zeroshot": zs, "eval_time_s": time.perf_counter() - start}


def _save(path: Path, results: dict) -> None:
    from selfprune.atomic import atomic_write_json

    atomic_write_json(path, results)


def _brief(summary: dict) -> dict:
    """The recovery summary without the per-step curve (kept, but thinned to 50 points)."""
    curve = summary["loss_curve"]
    step = max(1, len(curve) // 50)
    return {**summary, "loss_curve": curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])}


def run(args) -> None:
    import torch

    from selfprune.api import prune
    from selfprune.cli.recover import parse_tokens
    from selfprune.data.eval_text import load_eval_text
    from selfprune.models import load_model
    from selfprune.recover import RecoverOptions, recover
    from selfprune.versions import versions

    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.ratio is None) == (args.rates is None) or not args.name:
        sys.exit("give --name and exactly one of --ratio or --rates")
    out = Path(args.out) if args.out else RESULTS / f"{args.name}.json"
    work = Path(args.work) / args.name
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update({
        "name": args.name,
        "genome": {"ratio": args.ratio} if args.ratio is not None else
                  {"rates_file": args.rates, "rates": json.loads(Path(args.rates).read_text()).get("rates")},
        "config": {k: v for k, v in vars(args).items() if k not in ("table",)},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    })
    text = load_eval_text(args.wikitext)
    results["eval_protocol"] = {"wikitext": text.describe(), "ppl_seqlen": args.ppl_seqlen,
                                "ppl_windows": args.ppl_windows, "tasks": args.tasks, "limit": args.limit}

    if args.baseline_from:
        other = Path(args.baseline_from)
        while not (other.exists() and "pruned" in json.loads(other.read_text())):
            time.sleep(30)
        base = json.loads(other.read_text())
        if base["eval_protocol"] != results["eval_protocol"] or base["genome"] != results["genome"]:
            sys.exit(f"{other} has another genome or evaluation protocol")
        results.update({k: base[k] for k in ("dense", "pruned")})
    if "dense" not in results:
        dense, tokenizer = load_model("default")
        results["dense"] = evaluate(dense, tokenizer, text, args)
        results["dense"]["params"] = sum(p.numel() for p in dense.parameters())
        _save(out, results)
        del dense
    print(f"dense: ppl {results['dense']['perplexity']['ppl']:.2f}", flush=True)

    pruned_dir = work / "pruned"
    if not (pruned_dir / "config.json").exists():
        start = time.perf_counter()
        kwargs = {"ratio": args.ratio} if args.ratio is not None else {"rates": json.loads(Path(args.rates).read_text())}
        prune("default", seed=args.seed, progress=False, **kwargs).save(pruned_dir)
        results["prune_time_s"] = time.perf_counter() - start
    if "pruned" not in results:
        model, tokenizer = load_model(str(pruned_dir))
        results["pruned"] = evaluate(model, tokenizer, text, args)
        results["pruned"]["params"] = sum(p.numel() for p in model.parameters())
        _save(out, results)
    print(f"pruned: ppl {results['pruned']['perplexity']['ppl']:.2f}", flush=True)

    def options(method, tokens, **extra):
        return RecoverOptions(method=method, tokens=tokens, seqlen=args.seqlen, batch=args.batch, seed=args.seed,
                              save_every=25, resume=True, **extra)

    results.setdefault("sweep", {})
    for spec in filter(None, args.sweep.split(";")):
        method, lrs = spec.split(":")
        for lr in lrs.split(","):
            key = f"{method}:{args.sweep_tokens}:lr={lr}"
            if key in results["sweep"]:
                continue
            o = options(method, parse_tokens(args.sweep_tokens), lr=float(lr), eval_every=0,
                        state_dir=str(work / f"state-{key.replace(':', '-')}"))
            r = recover(str(pruned_dir), options=o, exclude_texts=[text.text])
            results["sweep"][key] = {"heldout": r.summary["heldout"], "train_time_s": r.summary["train_time_s"]}
            if r.state_dir:
                import shutil

                shutil.rmtree(r.state_dir, ignore_errors=True)
            _save(out, results)
            print(f"sweep {key}: held-out KL {r.summary['heldout']['after']['kl']:.4f}", flush=True)

    results.setdefault("runs", {})
    for spec in filter(None, args.runs.split(",")):
        method, tokens = spec.split(":")
        key = f"{method}:{tokens}"
        if key in results["runs"]:
            continue
        start = time.perf_counter()
        o = options(method, parse_tokens(tokens), state_dir=str(work / f"state-{method}-{tokens}"))
        r = recover(str(pruned_dir), options=o, exclude_texts=[text.text])
        entry = {"recovery": _brief(r.summary), **evaluate(r.model, r.tokenizer, text, args)}
        r.save(work / f"recovered-{method}-{tokens}")  # the written checkpoint; also removes the state
        entry["wall_time_s"] = time.perf_counter() - start
        results["runs"][key] = entry
        _save(out, results)
        print(f"{key}: ppl {entry['perplexity']['ppl']:.2f}, train {r.summary['train_time_s']:.0f} s", flush=True)
    print(table([out]))


def _acc(entry, task):
    zs = entry.get("zeroshot")
    if not zs or task not in zs["tasks"]:
        return ""
    row = zs["tasks"][task]
    return f"{100 * row[row['metric_for_average']]:.1f}"


def table(paths) -> str:
    from selfprune.report.tables import markdown_table

    rows = []
    for path in paths:
        res = json.loads(Path(path).read_text())
        tasks = res["eval_protocol"]["tasks"].split(",")
        dense_ppl, pruned_ppl = res["dense"]["perplexity"]["ppl"], res["pruned"]["perplexity"]["ppl"]

        def row(label, entry, tokens="", method="", train="", kl="", heldout_ppl=""):
            ppl = entry["perplexity"]["ppl"]
            gap = "" if entry is res["dense"] else f"{(pruned_ppl - ppl) / (pruned_ppl - dense_ppl):.0%}"
            return [res["name"], label, method, tokens, f"{ppl:.2f}", gap, *[_acc(entry, t) for t in tasks],
                    kl, heldout_ppl, train]

        rows.append(row("dense", res["dense"]))
        rows.append(row("pruned, no recovery", res["pruned"]))
        for key, entry in res.get("runs", {}).items():
            rec = entry["recovery"]
            before, after = rec["heldout"]["before"], rec["heldout"]["after"]
            rows.append(row("recovered", entry, tokens=f"{rec['training']['tokens_trained']:,}", method=rec["method"],
                            train=f"{rec['train_time_s'] / 60:.1f}",
                            kl=f"{before['kl']:.3f} -> {after['kl']:.3f}" if "kl" in after else "",
                            heldout_ppl=f"{before['ppl']:.1f} -> {after['ppl']:.1f}"))
    header = ["genome", "model", "method", "tokens", "WikiText-2 ppl", "ppl gap closed",
              *[f"{t} acc_norm %" for t in tasks], "held-out KL", "held-out ppl", "train min"]
    return markdown_table(header, rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.table is not None:
        print(table(args.table or sorted(RESULTS.glob("*.json"))))
        return
    run(args)


if __name__ == "__main__":
    main()
