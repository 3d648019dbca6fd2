"""Search operators side by side on the default model, at the same number of fitness evaluations.

For each target ratio: importance is scored once; every operator (uniform, OWL, random, GA,
EvoPress-style (1+lambda), a (1+1)-ES with 24 evaluations as a reference, the LLM operator with
the model itself, and the LLM operator through an OpenAI-compatible server when one is given)
searches on the same fitness; the best genome of each is then scored on held-out WikiText-2 test
text (never the fitness text). Prints one table, plus the time of one candidate evaluation
against one dense forward pass over the same tokens.

    python benchmarks/bench_search.py                       # the defaults below
    python benchmarks/bench_search.py --max-evals 430 --population 30 --crossover 10 --mutation 10
    python benchmarks/bench_search.py --openai-model NAME --llm-base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--ratios", default="0.3,0.5")
    p.add_argument("--operators", default="uniform,owl,random,ga,evopress,es24,llm-self",
                   help="comma list; llm-openai is added when --openai-model is given")
    p.add_argument("--max-evals", type=int, default=40, help="fitness evaluations per searching operator")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--crossover", type=int, default=4)
    p.add_argument("--mutation", type=int, default=4)
    p.add_argument("--llm-share", type=float, default=0.3)
    p.add_argument("--fitness", default="ppl", choices=["ppl", "kl"])
    p.add_argument("--fitness-samples", type=int, default=2)
    p.add_argument("--fitness-seqlen", type=int, default=512)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=8, help="WikiText-2 test windows for held-out perplexity")
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--wikitext", default=_default_wikitext(),
                   help="WikiText-2 raw test file (default: $SELFPRUNE_WIKITEXT_TEST, ../shared/data/..., or the hub)")
    p.add_argument("--openai-model", help="model name on an OpenAI-compatible server (adds llm-openai)")
    p.add_argument("--llm-base-url")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_search_out", help="folder for each search's files and results.json")
    return p.parse_args(argv)


def _default_wikitext() -> str:
    import os

    env = os.environ.get("SELFPRUNE_WIKITEXT_TEST")
    local = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
    return env or (str(local) if local.exists() else "wikitext2")


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
    from selfprune.eval.perplexity import perplexity
    from selfprune.models import load_model
    from selfprune.models.adapter import get_adapter
    from selfprune.pruning.apply import pruned_view
    from selfprune.versions import versions
    from selfprune.evolution.llm.backends import LocalBackend, OpenAIBackend
    from selfprune.evolution.genome import GenomeSpace
    from selfprune.evolution.loop import Search, SearchConfig
    from selfprune.evolution.operators.classic import EvoPressOperator
    from selfprune.evolution.problem import build_search_problem
    from selfprune.evolution.search import search
    from selfprune.options import PruneOptions, SearchOptions

    operators = [o for o in args.operators.split(",") if o]
    openai_backend = None
    if args.openai_model:
        openai_backend = OpenAIBackend(args.openai_model, base_url=args.llm_base_url)
        operators.append("llm-openai")
    model, tokenizer = load_model(args.model)
    adapter = get_adapter(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eval_kw = dict(seqlen=args.eval_seqlen, max_windows=args.eval_windows)
    from selfprune.data.eval_text import load_eval_text

    eval_text = load_eval_text(args.wikitext)
    dense_ppl = perplexity(model, tokenizer, eval_text, **eval_kw).ppl
    rows, speed = [], {}
    for ratio in [float(r) for r in args.ratios.split(",")]:
        t0 = time.perf_counter()
        prune_options = PruneOptions(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen)
        search_options = dict(fitness=args.fitness, fitness_samples=[args.fitness_samples],
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
        for name in operators:
            t0 = time.perf_counter()
            if name == "es24":  # the (1+1)-ES reference: one level-move offspring per generation
                cfg = SearchConfig(population=1, generations=23, crossover=0, mutation=1, max_evals=24, seed=args.seed)
                res = Search(space, fit, EvoPressOperator(), cfg, profiles=problem.profiles,
                             out_dir=out / f"r{ratio}" / name).run()
            else:  # every operator through the search's one entry point, on the problem scored once
                kind = "llm" if name.startswith("llm") else name
                backend = {"llm-self": LocalBackend(model, tokenizer, "self"), "llm-openai": openai_backend}.get(name)
                options = SearchOptions(**search_options, operator=[kind], generations=gens)
                found = search(model, tokenizer, ratio, prune_options, options, seed=args.seed, progress=False,
                               out_dir=out / f"r{ratio}" / name, backend=backend, problem=problem)
                res = found.results[kind]
            wall = time.perf_counter() - t0
            with pruned_view(adapter, fit.plan(*res.best.genome.arrays()), problem.scores, fit.bias_compensation):
                held_out = perplexity(model, tokenizer, eval_text, **eval_kw).ppl
            rep = res.report
            llm = rep.get("operator_stats") or {}
            rows.append({
                "ratio": ratio, "operator": name, "heldout_ppl": held_out, "fitness": res.best.fitness,
                "evals": rep["budget"]["total_evals"], "fitness_tokens": rep["budget"]["total_tokens"],
                "wall_s": wall, "fitness_s": sum(v for k, v in rep["budget"]["seconds"].items() if k.startswith("fitness")),
                "llm_calls": llm.get("calls", 0), "llm_valid": llm.get("valid_rate"),
                "llm_tokens": (llm.get("prompt_tokens", 0), llm.get("completion_tokens", 0)),
                "llm_s": llm.get("seconds", 0.0), "fallbacks": llm.get("fallbacks", 0),
                "repairs": rep["repairs"], "duplicates": rep["budget"]["duplicates"],
                "origins": rep["origins"], "best_origin": res.best.origin,
            })
            print(f"  {name:<10} held-out ppl {held_out:8.1f}  fitness {res.best.fitness:8.1f}  "
                  f"evals {rows[-1]['evals']:3d}  wall {wall:6.1f} s", flush=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "versions": versions(), "dense_ppl": dense_ppl,
                                                  "speed": speed, "rows": rows}, indent=1, default=str))
    print()
    print(format_table(rows, dense_ppl, speed, args))
    return 0


def format_table(rows, dense_ppl, speed, args) -> str:
    lines = [f"dense held-out ppl {dense_ppl:.1f} (WikiText-2 test, {args.eval_windows}x{args.eval_seqlen} tokens); "
             f"fitness: {args.fitness} on {args.fitness_samples}x{args.fitness_seqlen} calibration-side tokens; "
             f"budget {args.max_evals} evaluations per search"]
    head = ("ratio", "operator", "held-out ppl", "x uniform", "evals", "fit. tokens", "wall s", "fitness s",
            "LLM calls", "LLM valid", "LLM tok (p/c)", "LLM s", "fallbacks", "repairs (clip/proj/round)", "dups")
    table = [head]
    uniform = {r["ratio"]: r["heldout_ppl"] for r in rows if r["operator"] == "uniform"}
    for r in rows:
        u = uniform.get(r["ratio"])
        rep = r["repairs"]
        table.append((
            f"{r['ratio']:.1f}", r["operator"], f"{r['heldout_ppl']:.1f}", f"{r['heldout_ppl'] / u:.2f}" if u else "-",
            str(r["evals"]), f"{r['fitness_tokens']:,}", f"{r['wall_s']:.0f}", f"{r['fitness_s']:.0f}",
            str(r["llm_calls"]) if r["llm_calls"] else "-",
            f"{r['llm_valid']:.0%}" if r["llm_valid"] is not None else "-",
            f"{r['llm_tokens'][0]:,}/{r['llm_tokens'][1]:,}" if r["llm_calls"] else "-",
            f"{r['llm_s']:.0f}" if r["llm_calls"] else "-", str(r["fallbacks"]) if r["llm_calls"] else "-",
            f"{rep.get('clipped', 0)}/{rep.get('projected', 0)}/{rep.get('rounded', 0)}", str(r["duplicates"]),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    lines += [fmt(table[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in table[1:]]
    lines.append("")
    for ratio, s in speed.items():
        lines.append(f"ratio {ratio}: one candidate evaluation {s['candidate_eval_s']:.3f} s vs one dense forward "
                     f"{s['dense_forward_s']:.3f} s over {s['tokens']} tokens = {s['ratio']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
