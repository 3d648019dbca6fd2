"""`selfprune search`: find per-layer pruning rates with an evolutionary search.

Writes into DIR: best.json (loadable by ``selfprune prune --rates``), history.json (one record
per generation), transcript.jsonl (every operator-LLM call), report.json (budget: evaluations,
fitness tokens, LLM calls and tokens, repairs, fallbacks, seconds per phase), config.json (the
settings and library versions) and checkpoint.json (``--resume`` continues from it). With
several operators, each gets its folder DIR/<operator>/ and DIR/best.json is the winner's.
"""

from __future__ import annotations

import json
import sys

# The run fields a search uses: its model and target, the seed, the device, the preset, and where it writes.
TOP_LEVEL = ["preset", "ratio", "seed", "device", "dtype", "device_map", "trust_remote_code", "output.dir",
             "output.quiet"]


def register(sub) -> None:
    from selfprune.cli.options import add_option_flags, section_paths

    p = sub.add_parser(
        "search",
        help="search per-layer pruning rates (LLM-driven evolution or a classical baseline)",
        description="Evolutionary search for per-layer attention/MLP pruning rates whose fitness is the "
                    "perplexity (or KL to dense) of the model pruned at those rates. Options are those of "
                    "`selfprune run` (same names, defaults and presets).",
    )
    p.add_argument("model", metavar="MODEL", help="a local model directory, a .gguf file, a hub id, or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--config", metavar="FILE", help="a run config in YAML (its prune and search sections apply)")
    p.add_argument("--resume", action="store_true", help="continue the search checkpointed in DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the search selfprune wrote in DIR earlier (kept until the new one is complete)")
    add_option_flags(p, TOP_LEVEL + section_paths("search", "prune"))
    p.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from selfprune.atomic import atomic_write_json, normal_permissions, replace_dir
    from selfprune.cli.options import overrides_from
    from selfprune.config import load_config
    from selfprune.errors import SelfpruneError
    from selfprune.evolution.search import search
    from selfprune.models.loading import load_model
    from selfprune.outputs import SEARCH, check_out_dir, staging_dir, write_marker
    from selfprune.preflight import check_search
    from selfprune.versions import versions

    cfg = load_config(args.config, {**overrides_from(args), "model": args.model}, flags=True)
    if not cfg.output.dir:
        raise SelfpruneError("pass --out DIR: the folder for the search's results and checkpoint")
    out = Path(cfg.output.dir).expanduser()
    check_out_dir(out, SEARCH, overwrite=args.overwrite, own_ok=args.resume)
    if args.resume and args.overwrite and not staging_dir(out).is_dir():
        raise SelfpruneError(f"no unfinished --overwrite search of {out} to resume; drop --resume to start it")
    # --overwrite builds the new search beside the old one, which stays until the new one is complete.
    work = staging_dir(out) if args.overwrite and out.is_dir() and any(out.iterdir()) else out
    if args.resume:
        check_resume(work, cfg)  # before the model loads: a wrong flag or a broken checkpoint fails at once
    pre = check_search(cfg)

    model, tokenizer = load_model(pre.model_path, device=None if cfg.device_map else pre.device, dtype=cfg.dtype,
                                  device_map=cfg.device_map, trust_remote_code=cfg.trust_remote_code)
    record = {"command": sys.argv[1:], "config": cfg.model_dump(mode="json"), "versions": versions()}
    if not args.resume:  # a resume that is refused leaves the folder as it was
        work.mkdir(parents=True, exist_ok=True)
        write_marker(work, SEARCH, complete=False)
        atomic_write_json(work / "config.json", record)
    try:
        found = search(model, tokenizer, cfg.ratio, cfg.prune, cfg.search, seed=cfg.seed, out_dir=work,
                       resume=args.resume, progress=not cfg.output.quiet, backend=pre.backend, model_name=cfg.model,
                       trust_remote_code=cfg.trust_remote_code)
    except SelfpruneError as exc:
        if work == out and "--resume" in str(exc):
            raise
        again = "--resume --overwrite" if work != out else "--resume"
        raise SelfpruneError(f"{exc} (the search so far is kept in {work}: continue it with the same command and "
                             f"{again})") from None
    if args.resume:
        atomic_write_json(work / "config.json", record)
    for result in found.results.values():
        print(format_report(result.report))
    if len(found.results) > 1:
        winner = found.best
        atomic_write_json(work / "best.json", {"rates": winner.best.genome.to_rates(), "fitness": winner.best.fitness,
                                               "operator": found.winner, "made_with": found.setup.made_with()})
        print(f"best operator: {found.winner}")
    write_marker(work, SEARCH, complete=True)
    normal_permissions(work)
    if work != out:
        replace_dir(work, out)
    print(f"best rates: {out / 'best.json'}  (use: selfprune prune {args.model} --rates {out / 'best.json'} --out DIR)")
    return 0


def check_resume(out, cfg) -> None:
    """Every checkpoint under ``out`` is readable and was made with the settings given now (those
    known before the model loads; the data hashes and the rest are checked when each resumes)."""
    from selfprune.errors import SelfpruneError
    from selfprune.evolution.checkpoint import CHECKPOINT, PREVIOUS, read_checkpoint, setup_mismatch
    from selfprune.evolution.setup import SearchSetup

    # "auto" dtype is known only once the model has loaded
    now = SearchSetup.of(cfg.ratio, cfg.prune, cfg.search, seed=cfg.seed, model=cfg.model,
                         dtype=None if cfg.dtype == "auto" else cfg.dtype).fingerprint()
    if cfg.search.llm is not None:
        now["llm"] = cfg.search.llm
    folders = {f.parent for pattern in (CHECKPOINT, PREVIOUS) for f in out.glob(f"**/{pattern}")}
    for folder in sorted(folders):
        snap = read_checkpoint(folder, quiet=True)
        differs = setup_mismatch(snap["setup"], now) if snap else None
        if snap and not differs:  # the target rate lives in the search space, and the space needs the model
            target = snap.get("space", {}).get("target")
            if isinstance(target, (int, float)) and abs(target - cfg.ratio) > 1e-9:
                differs = f"ratio {target:g}, now {cfg.ratio:g}"
        if differs:
            raise SelfpruneError(f"the checkpoint in {folder} was made with {differs}; resume with the same "
                                 "settings, or use a new --out folder")


def format_report(report: dict) -> str:
    from selfprune.report.llm_stats import proposals_summary, server_faults_summary
    from selfprune.results import SearchReport

    r = SearchReport.model_validate(report)
    b = r.budget
    lines = [
        f"operator {r.operator}: best fitness {r.best_fitness:.4g} after {r.generations} "
        f"generations (budget achieved {r.achieved:.4f})",
        f"evaluations {b.total_evals} ({json.dumps(b.evals)}), fitness tokens {b.total_tokens:,}, "
        f"cache hits {b.cache_hits}, duplicates {b.duplicates} (dropped {b.dropped})",
        "repairs: " + ", ".join(f"{k} {v}" for k, v in r.repairs.items()),
        "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in b.seconds.items()),
    ]
    op = r.operator_stats
    if op.backend is not None:  # the LLM operator's; classical operators keep no statistics
        rate = op.valid_rate
        lines.append(
            f"LLM ({op.backend}): {op.calls} calls, {op.replies} replies, valid "
            f"{'n/a' if rate is None else f'{rate:.0%}'}, invalid {json.dumps(op.invalid)}, retries {op.retries}, "
            f"fallbacks {op.fallbacks}, tokens {op.prompt_tokens:,} prompt + {op.completion_tokens:,} completion, "
            f"{op.seconds:.1f} s" + (f" ({op.seconds_per_reply:.2f} s per reply)" if op.seconds_per_reply else "")
        )
        counters = op.to_json()  # the summaries read counters the record keeps beyond its typed fields
        lines.append(f"LLM: {proposals_summary(counters)}")
        faults = server_faults_summary(counters)
        if faults:
            lines.append(f"LLM: {faults}")
    return "\n".join(lines)
