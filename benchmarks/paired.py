"""Paired statistics over seeds: two arms of one experiment share each seed's start and problem, so
they are compared seed by seed, never as two independent samples.

For each seed both arms ran, the log of the ratio of their held-out perplexities; reported: n, the
wins, the geometric mean ratio with a percentile bootstrap interval over the seed pairs, and the
exact one-sided sign test (the probability of at least that many wins if either arm were as likely
to win a pair). With n = 3 the smallest possible sign-test p is 0.125: three seeds cannot be
decisive alone, only pooled over settings.

    python benchmarks/paired.py --arm llm-self --reference ga-levels \
        benchmarks/results/search/paper-r0.3 benchmarks/results/search/paper-r0.5 \
        --json benchmarks/results/search/paired-llm-self-vs-ga-levels.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

BOOTSTRAP = 10_000


def sign_test(wins: int, n: int) -> float:
    """P(at least ``wins`` successes in ``n`` fair coin flips); ties count as losses."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def paired(arm: dict[int, float], reference: dict[int, float], seed: int = 0) -> dict | None:
    """``arm`` against ``reference`` (seed -> held-out ppl) on the seeds both ran; ``None`` under 2 pairs."""
    seeds = sorted(set(arm) & set(reference))
    if len(seeds) < 2:
        return None
    logs = [math.log(arm[s] / reference[s]) for s in seeds]
    return summarize(logs, seeds=seeds, seed=seed)


def summarize(logs: list[float], seeds: list | None = None, seed: int = 0) -> dict:
    """n, wins, geometric mean ratio, its 95% bootstrap interval and the sign test of paired log ratios."""
    n = len(logs)
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(logs) for _ in range(n)) / n for _ in range(BOOTSTRAP))
    wins = sum(x < 0 for x in logs)
    return {"n": n, "seeds": seeds, "wins": wins, "ratio": math.exp(sum(logs) / n),
            "ratio_ci95": [math.exp(means[int(0.025 * BOOTSTRAP)]), math.exp(means[int(0.975 * BOOTSTRAP) - 1])],
            "sign_p": sign_test(wins, n), "log_ratios": logs}


def paired_scores(arm: dict[int, float], reference: dict[int, float], seed: int = 0) -> dict | None:
    """``arm`` against ``reference`` (seed -> a score where higher is better, e.g. a task accuracy) on the
    seeds both ran: n, wins (seeds where ``arm`` scores higher; ties count as losses), the mean difference
    with its 95% bootstrap interval, and the sign test; ``None`` under 2 pairs."""
    seeds = sorted(set(arm) & set(reference))
    if len(seeds) < 2:
        return None
    diffs = [arm[s] - reference[s] for s in seeds]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in range(n)) / n for _ in range(BOOTSTRAP))
    wins = sum(d > 0 for d in diffs)
    return {"n": n, "seeds": seeds, "wins": wins, "difference": sum(diffs) / n,
            "difference_ci95": [means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]],
            "sign_p": sign_test(wins, n), "differences": diffs}


def describe_scores(stats: dict, scale: float = 100.0, unit: str = " points") -> str:
    lo, hi = (scale * x for x in stats["difference_ci95"])
    return (f"higher in {stats['wins']} of {stats['n']} seed pairs, mean difference "
            f"{scale * stats['difference']:+.2f}{unit} (95% bootstrap interval {lo:+.2f} to {hi:+.2f}, "
            f"n = {stats['n']}), one-sided sign test p = {stats['sign_p']:.3g}")


def describe(stats: dict) -> str:
    lo, hi = stats["ratio_ci95"]
    return (f"lower held-out ppl in {stats['wins']} of {stats['n']} seed pairs, geometric mean ratio "
            f"{stats['ratio']:.2f} (95% bootstrap interval {lo:.2f}-{hi:.2f}, n = {stats['n']}), "
            f"one-sided sign test p = {stats['sign_p']:.3g}")


def per_seed(rows: list[dict], ratio: float, arm: str) -> dict[int, float]:
    return {r["seed"]: r["heldout_ppl"] for r in rows if r["arm"] == arm and abs(r["ratio"] - ratio) < 1e-9}


def compare(experiments: list[Path], arm: str, reference: str) -> dict:
    """Per experiment and ratio, then pooled over all of them."""
    settings, pooled = [], []
    for exp in experiments:
        rows = json.loads((exp / "results.json").read_text())["rows"]
        for ratio in sorted({r["ratio"] for r in rows}):
            stats = paired(per_seed(rows, ratio, arm), per_seed(rows, ratio, reference))
            if stats:
                settings.append({"experiment": exp.name, "prune_ratio": ratio, **stats})
                pooled += stats["log_ratios"]
    return {"arm": arm, "reference": reference, "settings": settings,
            "pooled": summarize(pooled) if len(pooled) > 1 else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiments", nargs="+", help="experiment folders, each holding one merged results.json")
    p.add_argument("--arm", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    folders = [Path(e) for e in args.experiments]
    missing = [str(f) for f in folders if not (f / "results.json").is_file()]
    if missing:
        print(f"error: no results.json in {', '.join(missing)}; run bench_search.py --finalize on them first",
              file=sys.stderr)
        return 2
    result = compare(folders, args.arm, args.reference)
    for s in result["settings"]:
        print(f"{s['experiment']} at {s['prune_ratio']}: {args.arm} vs {args.reference}: {describe(s)}")
    if result["pooled"]:
        print(f"pooled over {len(result['settings'])} settings: {args.arm} vs {args.reference}: "
              f"{describe(result['pooled'])}")
    if args.json:
        command = "python benchmarks/paired.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.json).write_text(json.dumps({"command": command, **result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
