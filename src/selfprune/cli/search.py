"""`selfprune search`: find per-layer pruning rates with an evolutionary search.

Writes into DIR: best.json (loadable by ``selfprune prune --rates``), history.json (one record
per generation), transcript.jsonl (every operator-LLM call), report.json (budget: evaluations,
fitness tokens, LLM calls and tokens, repairs, fallbacks, seconds per phase), config.json (the
settings and library versions) and checkpoint.json (``--resume`` continues from it).
"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from selfprune.cli.prune import add_pruning_options
    from selfprune.evolution.strategies import OPERATORS

    p = sub.add_parser(
        "search",
        help="search per-layer pruning rates (LLM-driven evolution or a classical baseline)",
        description="Evolutionary search for per-layer attention/MLP pruning rates whose fitness is the "
                    "perplexity (or KL to dense) of the model pruned at those rates.",
    )
    p.add_argument("model", metavar="MODEL", help="a local model directory, a hub id, or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--ratio", type=float, required=True, help="target: mean fraction of attention/MLP parameters removed")
    p.add_argument("--operator", default="llm", choices=OPERATORS, help="search operator (default llm)")
    p.add_argument("--llm", default="self", metavar="SPEC",
                   help="operator LLM: self (the model being pruned, default), local:PATH, or openai:MODEL")
    p.add_argument("--llm-base-url", metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (not needed for a server on loopback)")
    p.add_argument("--llm-timeout", type=float, default=120.0, metavar="S", help="seconds per LLM request (default 120)")
    p.add_argument("--llm-share", type=float, default=0.3, metavar="F",
                   help="share of each generation's offspring the LLM writes (default 0.3; all mutations when stalled)")
    p.add_argument("--population", type=int, default=30, help="population size (default 30)")
    p.add_argument("--generations", type=int, default=20, help="generations (default 20)")
    p.add_argument("--crossover", type=int, default=10, help="offspring by crossover per generation (default 10)")
    p.add_argument("--mutation", type=int, default=10, help="offspring by mutation per generation (default 10)")
    p.add_argument("--max-evals", type=int, metavar="N",
                   help="fitness evaluations for every operator (default population + generations x offspring)")
    p.add_argument("--fitness", default="ppl", choices=["ppl", "kl"], help="ppl of the pruned model, or KL to dense")
    p.add_argument("--fitness-samples", default="4", metavar="N[,N...]",
                   help="fitness blocks per selection stage, e.g. 4 or 2,8 for staged selection (default 4)")
    p.add_argument("--fitness-seqlen", type=int, default=512, metavar="L", help="tokens per fitness block (default 512)")
    p.add_argument("--stage-keep", metavar="F[,F...]",
                   help="fraction of offspring promoted to the next stage (one per stage but the last; default 0.25)")
    p.add_argument("--budget", default="mean", choices=["mean", "params"],
                   help="constraint: mean rate over layers (default, as the paper) or exact parameter fraction")
    p.add_argument("--min-rate", type=float, default=0.0, help="lowest rate of any block (default 0)")
    p.add_argument("--max-rate", type=float, default=0.9, help="highest rate of any block (default 0.9)")
    p.add_argument("--joint", action="store_true", help="one rate per layer for attention and MLP alike")
    add_pruning_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the search's results and checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the search checkpointed in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _floats(text: str | None, what: str, cast=float) -> list | None:
    from selfprune.errors import SelfpruneError

    if text is None:
        return None
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SelfpruneError(f"{what} must be comma-separated numbers, got '{text}'") from None


def run(args) -> int:
    from pathlib import Path

    from selfprune.errors import SelfpruneError
    from selfprune.evolution.api import search_model

    samples = _floats(args.fitness_samples, "--fitness-samples", int)
    keep = _floats(args.stage_keep, "--stage-keep")
    out = Path(args.out)
    if (out / "checkpoint.json").exists() and not args.resume:
        raise SelfpruneError(f"{out} already holds a search; pass --resume to continue it, or choose a new --out")
    if args.operator != "llm" and args.llm_base_url:
        raise SelfpruneError("--llm-base-url only applies with --operator llm")
    result = search_model(
        args.model, args.ratio, operator=args.operator, out_dir=out, resume=args.resume,
        llm=args.llm, llm_base_url=args.llm_base_url, llm_api_key_env=args.llm_api_key_env,
        llm_timeout=args.llm_timeout, llm_share=args.llm_share,
        population=args.population, generations=args.generations, crossover=args.crossover,
        mutation=args.mutation, max_evals=args.max_evals, fitness=args.fitness, fitness_samples=samples,
        fitness_seqlen=args.fitness_seqlen, stage_keep=keep, budget=args.budget,
        bounds=(args.min_rate, args.max_rate), joint=args.joint, metric=args.metric, calib=args.calib,
        calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
        attn_granularity=args.attn_granularity, mlp_multiple=args.mlp_multiple,
        bias_compensation=args.bias_compensation, seed=args.seed, progress=not args.quiet,
        command={k: v for k, v in vars(args).items() if k != "handler"},
    )
    print(format_report(result.report))
    print(f"best rates: {out / 'best.json'}  (use: selfprune prune {args.model} --rates {out / 'best.json'} --out DIR)")
    return 0


def format_report(report: dict) -> str:
    b = report["budget"]
    lines = [
        f"operator {report['operator']}: best fitness {report['best_fitness']:.4g} after {report['generations']} "
        f"generations (budget achieved {report['achieved']:.4f})",
        f"evaluations {b['total_evals']} ({json.dumps(b['evals'])}), fitness tokens {b['total_tokens']:,}, "
        f"cache hits {b['cache_hits']}, duplicates {b['duplicates']} (dropped {b['dropped']})",
        "repairs: " + ", ".join(f"{k} {v}" for k, v in report["repairs"].items()),
        "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in b["seconds"].items()),
    ]
    op = report.get("operator_stats") or {}
    if op:
        rate = op.get("valid_rate")
        lines.append(
            f"LLM ({op['backend']}): {op['calls']} calls, {op['replies']} replies, valid "
            f"{'n/a' if rate is None else f'{rate:.0%}'}, invalid {json.dumps(op['invalid'])}, retries {op['retries']}, "
            f"fallbacks {op['fallbacks']}, tokens {op['prompt_tokens']:,} prompt + {op['completion_tokens']:,} completion, "
            f"{op['seconds']:.1f} s"
        )
    return "\n".join(lines)
