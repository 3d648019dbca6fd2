"""Which fitness generalises: rank a fixed set of candidate genomes by several fitness settings and
by held-out WikiText-2 perplexity, and see which fitness picks what held-out text would pick.

A search keeps what its fitness ranks best, so a fitness is as good as its agreement with held-out
text on the candidates a search meets. The candidates (one ratio, one importance scoring) are the
priors (uniform, OWL, importance shapes), noise around uniform, random walks of level switches
from the priors, and the best genomes that earlier searches found with the default fitness (from
``bench_search.py`` results files): the very genomes that overfit, if any do.

Every candidate is pruned once (a view of the dense weights) and scored, from the same forward
passes, on 8 fitness blocks of 512 LAMBADA tokens (second half of the calibration source, as the
search uses): per token the NLL and the KL to the dense model. Smaller fitness settings are
prefixes of that: n blocks of s tokens is the first s positions of the first n blocks (causal
attention makes them exactly an s-token block). Then each setting is compared with the held-out
perplexity (WikiText-2 test, never seen by pruning or fitness):

- Spearman's rho between the setting and held-out log perplexity over all candidates;
- the held-out perplexity of the setting's best candidate and the mean over its top five: what a
  search ranking by it would keep;
- the setting's agreement with itself on other tokens (rho between blocks 0-1 and 2-3 at the same
  size): how much of its ranking is noise of the few tokens.

``--finalists K`` asks what a last selection stage on more tokens would change where it acts: the
top K genomes of each finished search's final population (its ``checkpoint.json``) join the
candidates, and for every setting the script reports, per search, the held-out perplexity of the
finalist that setting ranks first, against the search's own pick (ranked by the search's fitness)
and the best finalist held-out text would pick.

``--prior-from RESULTS_JSON...`` runs no model: it re-scores the candidates of earlier runs with a
smoothness prior over depth, fitness + lambda x roughness (the rates' total variation between
adjacent layers), and reports the same agreement, picks and re-ranking for each lambda.

    python benchmarks/bench_fitness.py --ratio 0.3 --out benchmarks/results/fitness/r0.3.json
    python benchmarks/bench_fitness.py --prior-from benchmarks/results/fitness/r0.3.json \
        benchmarks/results/fitness/r0.5.json --out benchmarks/results/fitness/smoothness.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_wikitext, search_dir  # noqa: E402

SETTINGS = [(obj, n, s) for obj in ("ppl", "kl") for n, s in ((2, 256), (2, 512), (4, 512), (8, 256), (8, 512))]
PRIOR_SETTINGS = ("lambada:ppl_2x512", "lambada:ppl_8x512")  # the search's default fitness and its staged last stage
PRIOR_LAMBDAS = (0.0, 0.3, 1.0, 3.0, 10.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--noise", type=int, default=12, help="candidates drawn as noise around uniform")
    p.add_argument("--walks", type=int, default=12, help="candidates drawn as level-switch walks from the priors")
    p.add_argument("--winners", nargs="*", default=None,
                   help="bench_search results.json files whose best genomes join the candidates "
                        "(default: benchmarks/results/search/*/results.json)")
    p.add_argument("--finalists", type=int, default=0,
                   help="also the top K genomes of each search's final population, re-ranked per search")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--wikitext", default=None, help="WikiText-2 raw test file (default as bench_search.py)")
    p.add_argument("--in-domain", action="store_true",
                   help="also score fitness on the first half of WikiText-2 test (a diagnostic of the domain gap)")
    p.add_argument("--fitness-texts", default="",
                   help="comma list of other calibration sources (e.g. wiki-passages) to score fitness on too: 8 x 512 "
                        "tokens of each one's second half, drawn as the search draws its fitness blocks")
    p.add_argument("--heldout-extra", default=None, metavar="TEXT",
                   help="a second held-out text of another domain (coqa, or a FILE), to see whether a fitness text "
                        "that agrees with WikiText-2 only matches its domain")
    p.add_argument("--heldout-extra-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior-from", nargs="+", metavar="RESULTS_JSON",
                   help="no model: re-score the candidates of these bench_fitness results with a smoothness prior")
    p.add_argument("--lambdas", default=",".join(str(x) for x in PRIOR_LAMBDAS),
                   help="weights of the smoothness prior (per-token log ppl per unit of mean rate change)")
    p.add_argument("--out", default="bench_fitness.json")
    return p.parse_args(argv)


def ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    return r


def spearman(a, b) -> float:
    ra, rb = ranks(np.asarray(a, dtype=float)), ranks(np.asarray(b, dtype=float))
    return float(np.corrcoef(ra, rb)[0, 1])


def roughness(attn, mlp) -> float:
    """Total variation over depth: the mean |rate(l+1) - rate(l)| of adjacent layers, attention and
    MLP averaged (0 for a constant shape)."""
    return float((np.abs(np.diff(attn)).mean() + np.abs(np.diff(mlp)).mean()) / 2)


def setting_summary(rows: list[dict], key: str, heldout: str = "heldout_ppl") -> dict:
    """How a setting's ranking agrees with held-out text: rho, its best candidate, its top five; and the rho
    with a second held-out text of another domain where the rows have one."""
    held = np.log([r[heldout] for r in rows])
    vals = np.array([r[key] for r in rows])
    order = np.argsort(vals, kind="stable")
    out = {"spearman_heldout": spearman(vals, held),
           "top1_heldout_ppl": float(np.exp(held[order[0]])), "top1": rows[order[0]]["name"],
           "top5_mean_heldout_ppl": float(np.exp(held[order[:5]]).mean())}
    if heldout == "heldout_ppl" and "heldout_extra_ppl" in rows[0]:
        extra = setting_summary(rows, key, "heldout_extra_ppl")
        out.update({f"extra_{k}": v for k, v in extra.items() if k != "top1"})
    return out


def smoothness_prior(results: dict, keys, lambdas) -> list[dict]:
    """Every (setting, lambda): setting + lambda x roughness, summarised as a setting is, and
    re-ranking each search's finalists when the results hold them."""
    rows = [dict(r) for r in results["candidates"]]
    index = {r["name"]: i for i, r in enumerate(rows)}
    finalists = {name: [index[n] for n in names] for name, names in results.get("finalists", {}).items()}
    rough = [roughness(r["attn"], r["mlp"]) for r in rows]
    out = []
    for key in keys:
        for lam in lambdas:
            prior_key = f"{key}+{lam:g}tv"
            for r, tv in zip(rows, rough):
                r[prior_key] = r[key] + lam * tv
            entry = {"setting": key, "lambda": lam, "candidates": len(rows), **setting_summary(rows, prior_key)}
            if finalists:
                entry["rerank"] = rerank(finalists, rows, [prior_key])[0]
            out.append(entry)
    return out


def print_prior_table(name: str, entries: list[dict]) -> None:
    print(f"\n{name}: {entries[0]['candidates']} candidates")
    reranks = "rerank" in entries[0]
    print("| fitness | lambda | Spearman rho vs held-out | held-out of its best | mean of its top 5 |"
          + (" finalist pick (mean) | better / worse than the search's |" if reranks else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|---:|" if reranks else ""))
    for e in entries:
        line = (f"| {e['setting']} | {e['lambda']:g} | {e['spearman_heldout']:.2f} | {e['top1_heldout_ppl']:.1f} | "
                f"{e['top5_mean_heldout_ppl']:.1f} |")
        if reranks:
            r = e["rerank"]
            line += f" {r['pick_heldout_mean']:.1f} | {r['better']} / {r['worse']} of {r['searches']} |"
        print(line)


def prior_main(args) -> int:
    from selfprune.versions import versions

    lambdas = [float(x) for x in args.lambdas.split(",")]
    out = {"args": vars(args), "versions": versions(), "files": {},
           "prior": "fitness + lambda x mean |rate(l+1) - rate(l)| over adjacent layers, attention and MLP averaged"}
    for f in args.prior_from:
        results = json.loads(Path(f).read_text())
        if "candidates" not in results:
            raise SystemExit(f"{f} is not a bench_fitness results file (it has no candidates)")
        entries = smoothness_prior(results, PRIOR_SETTINGS, lambdas)
        out["files"][f] = {"ratio": results["args"]["ratio"], "entries": entries}
        print_prior_table(f"{f} (ratio {results['args']['ratio']})", entries)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


def candidates(space, problem, args, rng) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], dict[str, list[int]]]:
    """The candidate genomes, and the finalists of each search by candidate index (best first)."""
    from selfprune.evolution.operators.seeds import level_switches, prior_shapes, random_vector

    genomes: list[tuple[str, np.ndarray, np.ndarray]] = []
    index: dict[tuple, int] = {}  # genome key -> candidate index: one candidate per genome

    def add(name: str, vec) -> int:
        g = space.repair(np.asarray(vec, dtype=float))[0]
        if g.key not in index:
            index[g.key] = len(genomes)
            genomes.append((name, np.asarray(g.attn), np.asarray(g.mlp)))
        return index[g.key]

    priors = prior_shapes(space, problem.profiles)
    for name, vec in priors:
        add(name, vec)
    for i in range(args.noise):
        add(f"noise-{i}", random_vector(space, rng))
    for i in range(args.walks):
        name, vec = priors[i % len(priors)]
        steps = int(rng.integers(2, 16))
        add(f"walk-{name}-{steps}", level_switches(np.asarray(vec), space, rng, steps)[0])
    files = args.winners if args.winners is not None else sorted(
        str(p) for p in (Path(__file__).resolve().parent / "results" / "search").glob("*/results.json"))
    finalists: dict[str, list[int]] = {}
    for f in files:
        data = json.loads(Path(f).read_text())
        for row in data["rows"]:
            if abs(row["ratio"] - args.ratio) > 1e-9 or row["arm"] in ("uniform", "owl"):
                continue
            tag = f"{row['arm']}-s{row['seed']}"
            add(f"winner-{tag}", np.concatenate([row["rates"]["attn"], row["rates"]["mlp"]]))
            if args.finalists:
                ckpt = search_dir(Path(f).parent, row["ratio"], row["arm"], row["seed"]) / "checkpoint.json"
                if not ckpt.is_file():
                    raise SystemExit(f"--finalists needs {ckpt} (the search's final population); it is missing")
                population = json.loads(ckpt.read_text())["population"][: args.finalists]  # sorted best first
                finalists[f"{Path(f).parent.name}/{tag}"] = [
                    add(f"final-{tag}-{k}", ind["genome"]["vector"]) for k, ind in enumerate(population)]
    return genomes, finalists


def rerank(finalists: dict[str, list[int]], rows: list[dict], keys: list[str]) -> list[dict]:
    """Per fitness setting: the held-out ppl of the finalist it ranks first in each search, beside
    the search's own pick (its first finalist) and the best finalist on held-out text."""
    own = [rows[idx[0]]["heldout_ppl"] for idx in finalists.values()]
    oracle = [min(rows[i]["heldout_ppl"] for i in idx) for idx in finalists.values()]
    out = []
    for key in keys:
        picks = {name: min(idx, key=lambda i: rows[i][key]) for name, idx in finalists.items()}
        chosen = [rows[picks[name]]["heldout_ppl"] for name in finalists]
        out.append({"setting": key, "searches": len(finalists),
                    "pick_heldout_mean": float(np.mean(chosen)), "own_pick_heldout_mean": float(np.mean(own)),
                    "best_finalist_heldout_mean": float(np.mean(oracle)),
                    "better": sum(c < o - 1e-9 for c, o in zip(chosen, own)),
                    "worse": sum(c > o + 1e-9 for c, o in zip(chosen, own)),
                    "picks": {name: rows[i]["name"] for name, i in picks.items()}})
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prior_from:
        return prior_main(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    from selfprune.data.calibration import calibration_text, token_blocks
    from selfprune.data.eval_text import load_eval_text
    from selfprune.eval.perplexity import perplexity
    from selfprune.evolution.genome import GenomeSpace
    from selfprune.evolution.problem import build_search_problem
    from selfprune.models import load_model
    from selfprune.options import PruneOptions, SearchOptions
    from selfprune.pruning.apply import pruned_view
    from selfprune.versions import versions

    model, tokenizer = load_model(args.model)
    prune = PruneOptions(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen)
    problem = build_search_problem(model, tokenizer, args.ratio, prune, SearchOptions(fitness_samples=[8], fitness_seqlen=512),
                                   seed=args.seed, progress=False)
    fit = problem.fitness
    space = GenomeSpace.from_problem(problem, args.ratio)
    wiki = load_eval_text(args.wikitext or default_wikitext())
    cut = wiki.text.index("\n", len(wiki.text) // 2) + 1
    eval_text = dataclasses.replace(wiki, text=wiki.text[cut:], join=wiki.join + "; second half")  # held out
    sources = {"lambada": fit.stage_blocks[0]}  # the search's own fitness blocks (calibration source, 2nd half)
    for name in filter(None, args.fitness_texts.split(",")):  # usable fitness texts, drawn as the search would
        sources[name] = token_blocks(tokenizer, calibration_text(name), 8, 512, seed=args.seed + 1, split="second")
    if args.in_domain:  # a diagnostic, not a usable default: fitness text from the evaluation's domain
        sources["wikitext-1st-half"] = token_blocks(tokenizer, wiki.text[:cut], 8, 512, seed=args.seed + 1)
    dense_logprobs = {src: torch.cat(fit.dense_logprobs(blocks)) for src, blocks in sources.items()}
    eval_kw = dict(seqlen=args.eval_seqlen, max_windows=args.eval_windows)
    dense_heldout = perplexity(model, tokenizer, eval_text, **eval_kw).ppl
    extra_text = load_eval_text(args.heldout_extra) if args.heldout_extra else None
    extra_kw = dict(seqlen=args.eval_seqlen, max_windows=args.heldout_extra_windows)
    cands, finalists = candidates(space, problem, args, np.random.default_rng(args.seed))
    print(f"{len(cands)} candidates at ratio {args.ratio}; dense held-out ppl {dense_heldout:.2f}", flush=True)

    rows = []
    for name, attn, mlp in cands:
        row = {"name": name, "attn": [float(x) for x in attn], "mlp": [float(x) for x in mlp]}
        with torch.no_grad(), pruned_view(fit.adapter, fit.plan(attn, mlp), problem.scores, fit.bias_compensation):
            for src, blocks in sources.items():
                t0 = time.perf_counter()
                nll, kl = [], []
                for i in range(0, len(blocks), fit.batch_size):
                    batch = blocks[i:i + fit.batch_size]
                    logp = model(batch, use_cache=False).logits[:, :-1].float().log_softmax(-1)
                    nll.append(-logp.gather(-1, batch[:, 1:].unsqueeze(-1)).squeeze(-1))
                    dense = dense_logprobs[src][i:i + fit.batch_size].float()
                    kl.append((dense.exp() * (dense - logp)).sum(-1))
                row[f"{src}_seconds_8x512"] = time.perf_counter() - t0
                nll, kl = torch.cat(nll).numpy(), torch.cat(kl).numpy()  # [8, 511] per-token values
                for obj, n, s in SETTINGS:
                    vals = nll if obj == "ppl" else kl
                    row[f"{src}:{obj}_{n}x{s}"] = float(vals[:n, :s - 1].mean())
                    if n == 2:  # the same size on other tokens, for the setting's agreement with itself
                        row[f"{src}:{obj}_{n}x{s}_alt"] = float(vals[2:4, :s - 1].mean())
            row["heldout_ppl"] = perplexity(model, tokenizer, eval_text, **eval_kw).ppl
            if extra_text is not None:
                row["heldout_extra_ppl"] = perplexity(model, tokenizer, extra_text, **extra_kw).ppl
        rows.append(row)
        print(f"  {name:<28} held-out {row['heldout_ppl']:8.2f}  " + "  ".join(
            f"{src} ppl 2x256 {math.exp(row[f'{src}:ppl_2x256']):7.2f} 8x512 {math.exp(row[f'{src}:ppl_8x512']):7.2f}"
            for src in sources), flush=True)

    best_possible = min(r["heldout_ppl"] for r in rows)
    summary = []
    for src, (obj, n, s) in ((src, st) for src in sources for st in SETTINGS):
        key = f"{src}:{obj}_{n}x{s}"
        entry = {"setting": key, "source": src, "objective": obj, "blocks": n, "seqlen": s, "tokens": n * s,
                 **setting_summary(rows, key)}
        if n == 2:
            entry["self_agreement"] = spearman([r[key] for r in rows], [r[f"{key}_alt"] for r in rows])
        summary.append(entry)
    out = {"args": vars(args), "versions": versions(), "dense_heldout_ppl": dense_heldout,
           "best_candidate_heldout_ppl": best_possible, "uniform_heldout_ppl": rows[0]["heldout_ppl"],
           "heldout": {"source": args.wikitext or default_wikitext(), "part": "second half (from the first line "
                       "break after the middle)", **eval_kw},
           "heldout_extra": {**extra_text.describe(), **extra_kw} if extra_text is not None else None,
           "fitness_data": {"lambada": {"source": prune.calib, "split": "second half", "blocks": 8, "seqlen": 512,
                                        "sha256": problem.setup.fitness_sha256},
                            "wikitext-1st-half": "WikiText-2 test before the held-out part (with --in-domain)",
                            **{name: {"source": name, "split": "second half", "blocks": 8, "seqlen": 512}
                               for name in sources if name not in ("lambada", "wikitext-1st-half")}},
           "summary": summary, "candidates": rows}
    if finalists:
        out["finalists"] = {name: [rows[i]["name"] for i in idx] for name, idx in finalists.items()}
        out["rerank"] = rerank(finalists, rows, [e["setting"] for e in summary])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print()
    print(f"held-out: best candidate {best_possible:.2f}, uniform {rows[0]['heldout_ppl']:.2f}, dense {dense_heldout:.2f}")
    extra = extra_text is not None
    print("| fitness text | fitness | tokens | Spearman rho vs held-out | self-agreement | held-out of its best | mean of its top 5 |"
          + (f" rho vs {args.heldout_extra} | {args.heldout_extra} of its best |" if extra else ""))
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if extra else ""))
    for e in summary:
        agree = f"{e['self_agreement']:.2f}" if "self_agreement" in e else ""
        print(f"| {e['source']} | {e['objective']} {e['blocks']}x{e['seqlen']} | {e['tokens']} | {e['spearman_heldout']:.2f} | {agree} | "
              f"{e['top1_heldout_ppl']:.1f} | {e['top5_mean_heldout_ppl']:.1f} |"
              + (f" {e['extra_spearman_heldout']:.2f} | {e['extra_top1_heldout_ppl']:.1f} |" if extra else ""))
    if finalists:
        n = len(finalists)
        print(f"\nre-ranking the top {args.finalists} finalists of each of {n} searches (held-out ppl, mean over searches):")
        print("| fitness text | fitness | its pick | the search's pick | best finalist | better / worse than the search's pick |")
        print("|---|---|---:|---:|---:|---:|")
        for e, r in zip(summary, out["rerank"]):
            print(f"| {e['source']} | {e['objective']} {e['blocks']}x{e['seqlen']} | {r['pick_heldout_mean']:.1f} | "
                  f"{r['own_pick_heldout_mean']:.1f} | {r['best_finalist_heldout_mean']:.1f} | {r['better']} / {r['worse']} of {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
