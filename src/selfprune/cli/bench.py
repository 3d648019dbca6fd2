"""``selfprune bench PRUNED_DIR``: speed of a pruned model next to its dense baseline, in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfprune.errors import SelfpruneError


def register(subparsers) -> None:
    from selfprune.cli.options import PLACEMENT, add_option_flags, section_paths

    p = subparsers.add_parser(
        "bench",
        help="prefill/decode speed, memory, params and MACs of a pruned model against its dense baseline",
        description="Measure a pruned checkpoint and its dense baseline side by side (interleaved, warm-up, "
        "medians): prefill latency, decode tokens/s, peak memory, parameters, MACs, and the measured "
        "speed-up next to the ideal one (dense params / pruned params). The options and their defaults are "
        "those of a run's bench section.",
    )
    p.add_argument("pruned", metavar="PRUNED_DIR")
    p.add_argument("--baseline", metavar="MODEL",
                   help="the dense model (directory, hub id or 'default'); default: the one recorded in the checkpoint")
    add_option_flags(p, [x for x in section_paths("bench") if x != "bench.enabled"] + PLACEMENT, grouped=False)
    p.add_argument("--json", metavar="FILE", help="write the measurements, protocol and versions here")
    p.set_defaults(handler=run_bench)


def recorded_baseline(pruned_dir: str) -> str | None:
    config = Path(pruned_dir).expanduser() / "config.json"
    try:
        record = json.loads(config.read_text()).get("selfprune") or {}
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("base_model")


def run_bench(args: argparse.Namespace) -> int:
    from selfprune.atomic import atomic_write_json
    from selfprune.cli.eval import check_writable
    from selfprune.cli.options import overrides_from, placement_from
    from selfprune.config import section_options
    from selfprune.models.loading import check_remote_code, resolve_model_path
    from selfprune.versions import versions

    given = overrides_from(args)
    options = section_options("bench", given.get("bench", {}))
    place = placement_from(given)
    resolve_model_path(args.pruned)  # a clear error for a path that is not a model, before loading anything
    baseline = args.baseline or recorded_baseline(args.pruned)
    if not baseline:
        raise SelfpruneError(f"'{args.pruned}' does not record its dense model; pass --baseline MODEL (e.g. 'default')")
    if args.json:
        check_writable(args.json)
    for name in (args.pruned, baseline):  # neither model loads if one of them would run code not trusted
        check_remote_code(resolve_model_path(name), place["trust_remote_code"], name)

    import torch

    from selfprune.eval.speed import speed
    from selfprune.models import load_model
    from selfprune.report.tables import format_speed_table

    device = place["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    place = {**place, "device": None if place["device_map"] else device}
    dense, _ = load_model(baseline, **place)
    pruned, _ = load_model(args.pruned, **place)
    o = options
    result = speed({"dense": dense, "pruned": pruned}, prefill_shapes=[tuple(x) for x in o.shapes],
                   decode_batches=tuple(o.decode_batches), prompt_len=o.prompt_len, decode_tokens=o.decode_tokens,
                   warmup=o.warmup, repeats=o.repeats)
    print(format_speed_table(result))
    if args.json:
        atomic_write_json(Path(args.json).expanduser(), {"pruned": args.pruned, "baseline": baseline, **result, "versions": versions()})
        print(f"wrote {args.json}")
    return 0
