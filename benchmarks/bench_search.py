"""The search ablation matrix on the default model, at the same number of fitness evaluations.

For each target ratio, importance is scored once; then every *arm* searches on the same fitness
with each search seed, and its best genome is scored on held-out WikiText-2 test text (never the
fitness text). An arm is ``NAME=OPERATOR:INIT[:LLM]``; the default arms separate the start, the
mutation and the LLM:

    uniform, owl                 the fixed baselines (1 evaluation)
    random=random:noise          random search around uniform
    ga-noise=ga:noise            the classical GA: noise start, Gaussian mutation
    ga-levels=ga-levels:seeded   GA from the priors (uniform, OWL, importance), level-switch mutation
    evopress=evopress:seeded     EvoPress's search ((1+lambda), level switches), from the priors, on the shared fitness
    llm-null=llm:seeded:random   the LLM operator with a null LLM (random legal template fills)
    llm-self=llm:seeded:self     the LLM operator with the model itself
    (e.g. llm-135m=llm:seeded:local:PATH for another local model as operator)

Writes ``OUT/results.json`` (every arm and seed: held-out ppl, fitness, budget, LLM stats; every
invocation that made it, with its arguments, versions and date), ``OUT/manifest.json`` (the
commands, versions, dates and machine) and each search's files (transcript.jsonl, report.json,
history.json, and while it runs its resume checkpoint) under ``OUT/r<ratio>/<arm>/s<seed>/``, and
prints mean +- sd per arm and each searching arm against the reference seed by seed (paired.py).
A matrix run in parts (one OUT per core) becomes one record with ``--finalize OUT``: the parts'
rows and search folders merged into OUT, resume checkpoints removed.

    python benchmarks/bench_search.py --ratios 0.3 --seeds 0,1 --max-evals 40 \
        --out benchmarks/results/search/quick-fitness256-r0.3
    python benchmarks/bench_search.py --openai-model NAME --llm-base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_wikitext, machine, portable, search_dir  # noqa: E402
from paired import describe, paired, per_seed  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--ratios", default="0.3,0.5")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                   help="comma list of NAME=OPERATOR:INIT[:LLM] (or a fixed operator name); llm-openai=llm:seeded:openai "
                        "is added when --openai-model is given")
    p.add_argument("--seeds", default="0,1,2", help="search seeds (comma list); the problem is scored once per ratio")
    p.add_argument("--max-evals", type=int, default=40, help="fitness evaluations per searching operator")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--crossover", type=int, default=4)
    p.add_argument("--mutation", type=int, default=4)
    p.add_argument("--llm-share", type=float, default=0.3)
    p.add_argument("--fitness", default="ppl", choices=["ppl", "kl"])
    p.add_argument("--fitness-samples", default="2",
                   help="fitness blocks per selection stage, e.g. 2 or 2,8 (staged: the last stage ranks the best "
                        "offspring on more tokens)")
    p.add_argument("--fitness-seqlen", type=int, default=512)
    p.add_argument("--calib", default="lambada",
                   help="calibration and fitness text (selfprune's --calib): lambada (fiction), wiki-passages (Wikipedia, "
                        "the offline stand-in for WikiText-2 train), or a FILE; never the held-out text")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=32, help="WikiText-2 test windows for held-out perplexity")
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--tasks", default="piqa,arc_easy", help="zero-shot tasks scored on each best genome")
    p.add_argument("--zeroshot-limit", type=int, default=200, help="documents per zero-shot task (0: no zero-shot)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in OUT/results.json (same settings) and run only the missing ones; a "
                        "missing one whose search left a checkpoint continues from it (a finished search is not rerun)")
    p.add_argument("--wikitext", default=default_wikitext(),
                   help="WikiText-2 raw test file (default: $SELFPRUNE_WIKITEXT_TEST, ../shared/data/..., or the hub)")
    p.add_argument("--openai-model", help="model name on an OpenAI-compatible server (adds llm-openai)")
    p.add_argument("--llm-base-url")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default="ga-levels", help="the arm every other searching arm is compared with, seed by seed")
    p.add_argument("--rescore", metavar="RESULTS_JSON[,...]",
                   help="also score the best genomes of these results files (same ratio) on this run's problem: with "
                        "another --calib, this separates what the calibration gives from what the search found")
    p.add_argument("--table", metavar="RESULTS_JSON[,...]",
                   help="print the table of a results file and exit; several files (parts of one matrix run side by "
                        "side, e.g. one per core) are merged, refused when a setting that changes the numbers differs")
    p.add_argument("--finalize", metavar="OUT",
                   help="make OUT one record and exit: the results of its parts (OUT/*/results.json) and their search "
                        "folders merged into OUT, resume checkpoints removed, OUT/manifest.json written")
    p.add_argument("--out", default="bench_search_out", help="folder for each search's files and results.json")
    return p.parse_args(argv)


DEFAULT_ARMS = ("uniform", "owl", "random=random:noise", "ga-noise=ga:noise", "ga-levels=ga-levels:seeded",
                "evopress=evopress:seeded", "llm-null=llm:seeded:random", "llm-self=llm:seeded:self")


# Settings a resumed benchmark must share with the rows it keeps.
SAME_SETTINGS = ("model", "population", "crossover", "mutation", "llm_share", "fitness", "fitness_samples",
                 "fitness_seqlen", "calib", "calib_samples", "calib_seqlen", "eval_windows", "eval_seqlen", "wikitext",
                 "tasks", "zeroshot_limit", "seed", "max_evals")
# Of those, the ones that change only the LLM-operator arms: tables may merge files that differ in them, one
# value per LLM arm (an arm run with another share is another arm, under its own name).
ARM_SETTINGS = ("llm_share",)


# What a setting was before it was recorded: results files from before --calib ran on LAMBADA.
UNRECORDED = {"calib": "lambada"}


def differing_settings(kept: dict, other: dict) -> list[str]:
    """The settings recorded in ``kept`` (or unrecorded there, with a known value) that change the numbers and
    differ in ``other``."""
    value = lambda args, k: args.get(k, UNRECORDED.get(k))  # noqa: E731
    return [k for k in SAME_SETTINGS if (k in kept or k in UNRECORDED) and value(kept, k) != value(other, k)]


def parse_arm(spec: str) -> tuple[str, str, str, str | None]:
    """``NAME=OPERATOR:INIT[:LLM]`` -> (name, operator, init, llm); a bare name is a fixed operator."""
    name, _, rest = spec.partition("=")
    parts = (rest or name).split(":", 2)  # the LLM may hold a colon itself: local:PATH
    return name, parts[0], parts[1] if len(parts) > 1 else "seeded", parts[2] if len(parts) > 2 else None


def timed(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.finalize:
        return finalize(Path(args.finalize))
    if args.table:
        data = merge_results([json.loads(Path(f).read_text()) for f in args.table.split(",") if f])
        # The files' own settings, but the comparison this command asks for.
        print(format_table(data["rows"], data["dense_ppl"], data["speed"],
                           argparse.Namespace(**{**data["args"], "reference": args.reference}),
                           folders=[Path(f).parent for f in args.table.split(",") if f]))
        return 0
    from selfprune.data.eval_text import load_eval_text
    from selfprune.errors import SelfpruneError
    from selfprune.eval.perplexity import perplexity
    from selfprune.eval.zeroshot import zeroshot
    from selfprune.evolution.genome import GenomeSpace
    from selfprune.evolution.llm.backends import (
        LocalBackend,
        OpenAIBackend,
        RandomBackend,
    )
    from selfprune.evolution.checkpoint import read_checkpoint
    from selfprune.evolution.problem import build_search_problem
    from selfprune.evolution.search import search
    from selfprune.models import load_model
    from selfprune.models.adapter import get_adapter
    from selfprune.options import PruneOptions, SearchOptions
    from selfprune.preflight import check_disjoint
    from selfprune.pruning.apply import pruned_view
    from selfprune.versions import versions

    warnings: list[str] = []
    try:  # before the model loads: the fitness text must not be the held-out text
        eval_text = load_eval_text(args.wikitext)
        check_disjoint(args.calib, eval_text, warnings, field="--calib")
    except SelfpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    arms = [parse_arm(a) for a in args.arms.split(",") if a]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    openai_backend = None
    if args.openai_model:
        openai_backend = OpenAIBackend(args.openai_model, base_url=args.llm_base_url)
        arms.append(("llm-openai", "llm", "seeded", "openai"))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, device=device)
    adapter = get_adapter(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eval_kw = dict(seqlen=args.eval_seqlen, max_windows=args.eval_windows)
    dense_ppl = perplexity(model, tokenizer, eval_text, **eval_kw).ppl
    print(f"dense held-out ppl {dense_ppl:.2f}", flush=True)
    rows, speed, invocations = [], {}, []
    results_file = out / "results.json"
    settings = portable(vars(args))
    if args.resume and results_file.exists():
        old = json.loads(results_file.read_text())
        changed = differing_settings(portable(old["args"]), settings)
        if changed:
            sys.exit(f"--resume: {out} was run with other {', '.join(changed)}; use another --out")
        rows, speed = old["rows"], {float(k): v for k, v in old["speed"].items()}
        invocations = invocations_of(old)
        print(f"resuming: {len(rows)} rows kept from {results_file}", flush=True)
    done = {(r["ratio"], r["arm"], r["seed"]) for r in rows}

    invocations.append({"args": settings, "versions": versions(), "date": datetime.now(timezone.utc).isoformat(),
                        "machine": machine()})

    def save():
        record = {"args": settings, "versions": versions(), "dense_ppl": dense_ppl, "speed": speed, "rows": rows,
                  "invocations": invocations}
        results_file.write_text(json.dumps(record, indent=1, default=str))
        write_manifest(out, record)

    for ratio in [float(r) for r in args.ratios.split(",")]:
        t0 = time.perf_counter()
        prune_options = PruneOptions(calib=args.calib, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen)
        search_options = dict(fitness=args.fitness, fitness_samples=[int(x) for x in args.fitness_samples.split(",")],
                              fitness_seqlen=args.fitness_seqlen, population=args.population, crossover=args.crossover,
                              mutation=args.mutation, max_evals=args.max_evals, llm_share=args.llm_share)
        problem = build_search_problem(model, tokenizer, ratio, prune_options, SearchOptions(**search_options),
                                       seed=args.seed, progress=False)
        setup_s = time.perf_counter() - t0
        space = GenomeSpace.from_problem(problem, ratio)
        fit = problem.fitness
        uniform = space.uniform()
        blocks = fit.stage_blocks[-1]

        def dense_pass():
            with torch.no_grad():
                for i in range(0, len(blocks), fit.batch_size):
                    model(blocks[i:i + fit.batch_size], use_cache=False)

        dense_s = timed(dense_pass)
        cand_s = timed(lambda: fit(*uniform.arrays(), stage=fit.num_stages - 1))
        speed[ratio] = {"dense_forward_s": dense_s, "candidate_eval_s": cand_s, "ratio": cand_s / dense_s,
                        "tokens": fit.tokens(fit.num_stages - 1), "importance_setup_s": setup_s}
        print(f"[ratio {ratio}] importance + fitness setup {setup_s:.1f} s; one candidate {cand_s:.3f} s vs dense "
              f"forward {dense_s:.3f} s over {fit.tokens(fit.num_stages - 1)} tokens ({cand_s / dense_s:.2f}x)",
              flush=True)
        gens = max(0, math.ceil((args.max_evals - args.population) / max(1, args.crossover + args.mutation)))

        def score(genome):
            """Held-out perplexity and zero-shot of ``genome`` pruned on this problem."""
            with pruned_view(adapter, fit.plan(*genome.arrays()), problem.scores, fit.bias_compensation):
                held_out = perplexity(model, tokenizer, eval_text, **eval_kw).ppl
                return held_out, zeroshot(model, tokenizer, args.tasks, limit=args.zeroshot_limit) if args.zeroshot_limit else None

        rescore = list(filter(None, (args.rescore or "").split(",")))
        # Parts of one matrix (A/a/results.json, A/b/results.json) share one label, the folder above them.
        origin = Path(os.path.commonpath([Path(f).resolve().parent for f in rescore])).name if rescore else ""
        for f in rescore:  # fixed genomes from other runs, on this problem
            for old in json.loads(Path(f).read_text())["rows"]:
                name = f"{old['arm']}@{origin}"
                if abs(old["ratio"] - ratio) > 1e-9 or old["evals"] <= 1 or (ratio, name, old["seed"]) in done:
                    continue
                genome = space.repair(np.concatenate([old["rates"]["attn"], old["rates"]["mlp"]]))[0]
                held_out, zs = score(genome)
                rows.append({"ratio": ratio, "arm": name, "operator": "rescored", "init": None, "llm": None,
                             "seed": old["seed"], "heldout_ppl": held_out, "fitness": fit(*genome.arrays(), stage=fit.num_stages - 1),
                             "zeroshot_avg": zs["average"] if zs else None, "evals": 1, "fitness_tokens": 0, "wall_s": 0.0,
                             "fitness_s": 0.0, "llm_calls": 0, "fallbacks": 0, "rescored_from": f,
                             "rates": {"attn": list(genome.attn), "mlp": list(genome.mlp)}})
                save()
                print(f"  {name:<10} seed {old['seed']}  held-out ppl {held_out:8.2f} (genome of {f}, this problem)", flush=True)
        # Seeds outside, arms inside: a matrix stopped early holds every arm at the seeds it finished.
        for seed in seeds:
            for name, operator, init, llm in arms:
                if operator in ("uniform", "owl") and seed != seeds[0]:  # a fixed genome is the same for every seed
                    continue
                if (ratio, name, seed) in done:
                    continue
                t0 = time.perf_counter()
                backend = None
                if operator == "llm":
                    llm = llm or "self"
                    if llm.startswith("local:"):
                        backend = LocalBackend.from_path(llm.partition(":")[2])
                    else:
                        backend = {"self": lambda: LocalBackend(model, tokenizer, "self"), "random": RandomBackend,
                                   "openai": lambda: openai_backend}[llm]()
                spec = f"openai:{args.openai_model}" if llm == "openai" else llm
                options = SearchOptions(**search_options, operator=[operator], generations=gens, init=init, llm=spec)
                folder = search_dir(out, ratio, name, seed)
                # A search killed (or finished, its evaluation killed) continues from its checkpoint.
                snap = read_checkpoint(folder) if args.resume else None
                found = search(model, tokenizer, ratio, prune_options, options, seed=seed, progress=False,
                               out_dir=folder, backend=backend, problem=problem, resume=snap is not None)
                res = found.results[operator]
                wall = time.perf_counter() - t0
                held_out, zs = score(res.best.genome)
                rep = res.report
                llm_stats = rep.get("operator_stats") or {}
                rows.append({
                    "ratio": ratio, "arm": name, "operator": operator, "init": init, "llm": llm, "seed": seed,
                    "heldout_ppl": held_out, "fitness": res.best.fitness,
                    "zeroshot_avg": zs["average"] if zs else None,
                    "zeroshot": {t: v[v["metric_for_average"]] for t, v in zs["tasks"].items()} if zs else None,
                    "evals": rep["budget"]["total_evals"], "fitness_tokens": rep["budget"]["total_tokens"],
                    "wall_s": wall,  # of this process only, when the search was resumed
                    "resumed_at_generation": snap["generation"] if snap else None,
                    "fitness_s": sum(v for k, v in rep["budget"]["seconds"].items() if k.startswith("fitness")),
                    "llm_calls": llm_stats.get("calls", 0), "llm_valid": llm_stats.get("valid_rate"),
                    "llm_distinct": llm_stats.get("distinct"), "llm_repeats": llm_stats.get("repeats"),
                    "llm_copies": llm_stats.get("copies"),
                    "llm_tokens": (llm_stats.get("prompt_tokens", 0), llm_stats.get("completion_tokens", 0)),
                    "llm_s": llm_stats.get("seconds", 0.0), "fallbacks": llm_stats.get("fallbacks", 0),
                    "repairs": rep["repairs"], "duplicates": rep["budget"]["duplicates"],
                    "origins": rep["origins"], "best_origin": res.best.origin,
                    "rates": {"attn": list(res.best.genome.attn), "mlp": list(res.best.genome.mlp)},
                })
                save()
                zs_text = f"zero-shot {zs['average']:.3f}  " if zs else ""
                print(f"  {name:<10} seed {seed}  held-out ppl {held_out:8.2f}  {zs_text}fitness {res.best.fitness:8.2f}  "
                      f"evals {rows[-1]['evals']:3d}  best from {res.best.origin:<18} wall {wall:6.1f} s", flush=True)
    save()
    print()
    print(format_table(rows, dense_ppl, speed, args, folders=[out]))
    return 0


def invocations_of(record: dict) -> list[dict]:
    """The invocations a results record lists; a record from before they were listed was one invocation."""
    return record.get("invocations") or [{"args": portable(record["args"]), "versions": record.get("versions")}]


def command_of(args: dict) -> str:
    """The command line that ran with ``args``."""
    skip = {"table", "finalize", "reference"}
    flags = []
    for k, v in args.items():
        if k in skip or v is None or v is False:
            continue
        flags.append(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}"))
    return "python benchmarks/bench_search.py " + " ".join(flags)


def write_manifest(out: Path, record: dict) -> None:
    """OUT/manifest.json: what made the record -- every command, with its versions, date and machine."""
    manifest = {"experiment": out.name, "rows": len(record["rows"]),
                "invocations": [{"command": command_of(i["args"]), **{k: i.get(k) for k in ("date", "machine", "versions")}}
                                for i in record["invocations"]]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")


def _added_on(path: Path) -> str | None:
    """The date git first recorded ``path`` (for records from before invocations were dated)."""
    try:
        dates = subprocess.run(["git", "log", "--diff-filter=A", "--format=%aI", "--", path.name], cwd=path.parent,
                               capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return dates[-1] if dates else None


def finalize(out: Path) -> int:
    """Merge OUT's parts into one record in OUT; remove resume checkpoints."""
    files = ([out / "results.json"] if (out / "results.json").is_file() else []) + sorted(out.glob("*/results.json"))
    if not files:
        print(f"error: no results.json in {out} or its sub-folders", file=sys.stderr)
        return 2
    records = [json.loads(f.read_text()) for f in files]
    merged = merge_results(records)
    invocations = []
    for f, record in zip(files, records):
        for inv in invocations_of(record):
            part = inv.get("part") or (f.parent.name if f.parent != out else None)
            invocations.append({**inv, "date": inv.get("date") or _added_on(f), "part": part})
    for f in files[1:] if files[0].parent == out else files:  # a part's search folders move up beside the record
        for folder in sorted(f.parent.glob("r*/*/s*")):
            target = out / folder.relative_to(f.parent)
            if not target.exists():  # the first part's row and folder are the ones kept
                target.parent.mkdir(parents=True, exist_ok=True)
                folder.rename(target)
        shutil.rmtree(f.parent)
    for checkpoint in out.rglob("checkpoint*.json"):
        checkpoint.unlink()
    speed = {k: v for r in reversed(records) for k, v in r.get("speed", {}).items()}  # each ratio's first measurement
    args = portable({**merged["args"], "out": str(out)})
    record = {**merged, "args": args, "speed": speed, "invocations": invocations}
    record.pop("versions", None)  # per invocation
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    write_manifest(out, record)
    print(f"{out}: {len(record['rows'])} rows from {len(files)} results files, {len(invocations)} invocations")
    return 0


def merge_results(parts: list[dict]) -> dict:
    """One results dict from parts of a matrix with the same settings (rows of the same arm and seed: the first).
    Parts may differ in an LLM-arm setting (``ARM_SETTINGS``) as long as each LLM arm has one value of it."""
    first = parts[0]
    for part in parts[1:]:
        changed = [k for k in differing_settings(part["args"], first["args"]) if k not in ARM_SETTINGS]
        if changed:
            sys.exit(f"--table: the results files differ in {', '.join(changed)}; they are not one matrix")
    rows, seen, arm_values = [], set(), {}
    for part in parts:
        arm_setting = {k: part["args"].get(k) for k in ARM_SETTINGS}  # what this file's LLM arms ran with
        value = tuple(arm_setting.values())
        for r in part["rows"]:
            llm = r.get("operator") == "llm"
            if llm and arm_values.setdefault((r["ratio"], r["arm"]), value) != value:
                sys.exit(f"--table: arm {r['arm']} ran with {', '.join(ARM_SETTINGS)} "
                         f"{arm_values[(r['ratio'], r['arm'])]} in one file and {value} in another; "
                         "run one of them under another arm name")
            if (r["ratio"], r["arm"], r["seed"]) not in seen:
                seen.add((r["ratio"], r["arm"], r["seed"]))
                rows.append({**r, **arm_setting} if llm else r)
    seeds = sorted({r["seed"] for r in rows})
    args = {**first["args"], "seeds": ",".join(map(str, seeds))}
    for k in ARM_SETTINGS:
        if len({p["args"].get(k) for p in parts}) > 1:
            args[k] = "per arm"
    return {**first, "rows": rows, "args": args}


def by_arm(rows) -> dict[tuple, list[dict]]:
    """Rows grouped by (ratio, arm), in the order they first appear."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["ratio"], r["arm"]), []).append(r)
    return groups


def summarize(rows) -> list[dict]:
    """Mean and sd over seeds per (ratio, arm), with held-out ppl relative to uniform."""
    out = []
    uniform = {r["ratio"]: r["heldout_ppl"] for r in rows if r["arm"] == "uniform"}
    for key, group in by_arm(rows).items():
        ppl = [r["heldout_ppl"] for r in group]
        fit = [r["fitness"] for r in group]
        zs = [r["zeroshot_avg"] for r in group if r.get("zeroshot_avg") is not None]
        u = uniform.get(key[0])
        out.append({
            "ratio": key[0], "arm": key[1], "seeds": len(group), "heldout_mean": statistics.mean(ppl),
            "heldout_sd": statistics.stdev(ppl) if len(ppl) > 1 else 0.0, "x_uniform": statistics.mean(ppl) / u if u else None,
            "fitness_mean": statistics.mean(fit),
            "zeroshot_mean": statistics.mean(zs) if zs else None,
            "zeroshot_sd": statistics.stdev(zs) if len(zs) > 1 else 0.0, "evals": max(r["evals"] for r in group),
            "wall_s": statistics.mean(r["wall_s"] for r in group),
            "llm_distinct": sum(r["llm_distinct"] or 0 for r in group) if group[0]["llm_calls"] else None,
            "llm_dropped": sum((r["llm_repeats"] or 0) + (r["llm_copies"] or 0) for r in group) if group[0]["llm_calls"] else None,
            "fallbacks": sum(r["fallbacks"] for r in group) if group[0]["llm_calls"] else None,
        })
    return out


def paired_comparisons(rows, reference: str) -> list[str]:
    """Each searching arm against the reference arm on the seeds both ran (same problem and start per seed):
    paired statistics over the seed pairs (paired.py)."""
    groups = by_arm(rows)
    lines = []
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        ref = per_seed(rows, ratio, reference)
        for (arm_ratio, arm), group in groups.items():
            # Fixed arms (uniform, owl: one evaluation) are the same genome in every seed; only searches are compared.
            if arm_ratio != ratio or arm == reference or not any(r["evals"] > 1 for r in group):
                continue
            stats = paired(per_seed(rows, ratio, arm), ref)
            if stats:
                lines.append(f"ratio {ratio}: {arm} vs {reference}: {describe(stats)}")
    return lines


def origin_credit(rows) -> list[str]:
    """Where each arm's improvements came from, summed over its seeds: per kind of offspring (an origin ending in
    crossover or mutate), how often it made a generation's new best, out of how many it had evaluated, and the share
    that survived into the population. Only for arms with more than one kind of offspring."""
    lines = []
    for key, group in by_arm(rows).items():
        group = [r for r in group if r.get("origins")]
        totals: dict[str, dict[str, int]] = {}
        for r in group:
            for origin, c in r["origins"].items():
                if origin.endswith(("crossover", "mutate")):
                    t = totals.setdefault(origin, {"evaluated": 0, "survived": 0, "best": 0})
                    for field in t:
                        t[field] += c[field]
        if len(totals) < 2:
            continue
        parts = [f"{origin} {t['best']} of {t['evaluated']} ({100 * t['best'] / t['evaluated']:.1f}%, "
                 f"{100 * t['survived'] / t['evaluated']:.0f}% survived)"
                 for origin, t in sorted(totals.items(), key=lambda kv: -kv[1]["best"]) if t["evaluated"]]
        lines.append(f"ratio {key[0]}: {key[1]} ({len(group)} seeds), generation bests by offspring kind: " + ", ".join(parts))
    return lines


def operator_choices(rows, folders) -> list[str]:
    """What the LLM operator's replies chose, read from each search's transcript under one of ``folders`` (the
    benchmark OUTs). Crossover: how often the parents were the two candidates listed first (the two best; also the
    prompt example's ``"a": 1, "b": 2``) and the most common segment pattern. Mutation: how often a reply was the
    prompt's example move itself, and how many moves the replies made."""
    from selfprune.evolution.llm.operator import canonical_json, prompt_example

    lines = []
    for key, group in by_arm(rows).items():
        if group[0].get("operator") != "llm":
            continue
        seeds, pairs, best_two, in_example_order, patterns = 0, 0, 0, 0, {}
        mutations, example_moves, move_counts = 0, 0, {}
        for r in group:
            path = next((p for p in (search_dir(f, r["ratio"], r["arm"], r["seed"]) / "transcript.jsonl"
                                     for f in folders) if p.is_file()), None)
            if path is None:
                continue
            seeds += 1
            for line in path.read_text().splitlines():
                call = json.loads(line)
                kind = call.get("kind")
                if kind not in ("crossover", "mutate"):
                    continue
                example = prompt_example(call.get("prompt", ""))
                for reply in call["replies"]:
                    try:
                        choice = json.loads(reply)
                        if kind == "crossover":
                            a, b, take = choice["a"], choice["b"], str(choice["take"])
                        else:
                            moves = list(choice["moves"])
                    except (ValueError, KeyError, TypeError):
                        continue  # unparsable replies are counted by the search itself
                    if kind == "crossover":
                        pairs += 1
                        best_two += {a, b} == {1, 2}
                        in_example_order += (a, b) == (1, 2)
                        patterns[take] = patterns.get(take, 0) + 1
                    else:
                        mutations += 1
                        example_moves += canonical_json(choice) == example
                        move_counts[len(moves)] = move_counts.get(len(moves), 0) + 1
        head = f"ratio {key[0]}: {key[1]} ({seeds} seeds)"
        if pairs:
            top, count = max(patterns.items(), key=lambda kv: kv[1])
            lines.append(f"{head}, crossover replies: parents the two best in {best_two} of {pairs} "
                         f"({100 * best_two / pairs:.0f}%; {100 * in_example_order / pairs:.0f}% as the example, a 1 and "
                         f"b 2), most common segments {top} ({100 * count / pairs:.0f}%)")
        if mutations:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(move_counts.items()))
            lines.append(f"{head}, mutation replies: the prompt's example move itself in {example_moves} of {mutations} "
                         f"({100 * example_moves / mutations:.0f}%); replies by number of moves {counts}")
    return lines


def format_table(rows, dense_ppl, speed, args, folders=()) -> str:
    lines = [f"dense held-out ppl {dense_ppl:.2f} (WikiText-2 test, {args.eval_windows}x{args.eval_seqlen} tokens); "
             f"fitness: {args.fitness} on {args.fitness_samples}x{args.fitness_seqlen} tokens of "
             f"{getattr(args, 'calib', UNRECORDED['calib'])} (calibration source, second half); "
             f"budget {args.max_evals} evaluations per search; seeds {args.seeds}; "
             f"LLM operator's share of offspring {getattr(args, 'llm_share', '-')}"]
    head = ("ratio", "arm", "seeds", "held-out ppl (mean +- sd)", "x uniform", "zero-shot avg % (mean +- sd)",
            "fitness (mean)", "evals", "wall s",
            "LLM distinct", "LLM dropped", "fallbacks")
    table = [head]
    for r in summarize(rows):
        llm = r["llm_distinct"] is not None
        table.append((
            f"{r['ratio']:.1f}", r["arm"], str(r["seeds"]), f"{r['heldout_mean']:.1f} +- {r['heldout_sd']:.1f}",
            f"{r['x_uniform']:.2f}" if r["x_uniform"] else "-",
            f"{100 * r['zeroshot_mean']:.1f} +- {100 * r['zeroshot_sd']:.1f}" if r["zeroshot_mean"] is not None else "-",
            f"{r['fitness_mean']:.1f}", str(r["evals"]),
            f"{r['wall_s']:.0f}", str(r["llm_distinct"]) if llm else "-", str(r["llm_dropped"]) if llm else "-",
            str(r["fallbacks"]) if llm else "-",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    lines += [fmt(table[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in table[1:]]
    lines.append("")
    if getattr(args, "zeroshot_limit", 0):
        lines.append(f"zero-shot: mean acc_norm of {args.tasks}, first {args.zeroshot_limit} documents each")
    lines += paired_comparisons(rows, getattr(args, "reference", "ga-levels"))
    lines += origin_credit(rows)
    lines += operator_choices(rows, folders)
    for ratio, s in speed.items():
        lines.append(f"ratio {ratio}: one candidate evaluation {s['candidate_eval_s']:.3f} s vs one dense forward "
                     f"{s['dense_forward_s']:.3f} s over {s['tokens']} tokens = {s['ratio']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
