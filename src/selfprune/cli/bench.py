"""``selfprune bench PRUNED_DIR``: speed of a pruned model next to its dense baseline, in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfprune.cli.eval import add_trust_flag
from selfprune.errors import SelfpruneError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="prefill/decode speed, memory, params and MACs of a pruned model against its dense baseline",
        description="Measure a pruned checkpoint and its dense baseline side by side (interleaved, warm-up, "
        "medians): prefill latency, decode tokens/s, peak memory, parameters, MACs, and the measured "
        "speed-up next to the ideal one (dense params / pruned params).",
    )
    p.add_argument("pruned", metavar="PRUNED_DIR")
    p.add_argument("--baseline", metavar="MODEL",
                   help="the dense model (directory, hub id or 'default'); default: the one recorded in the checkpoint")
    p.add_argument("--shapes", default="1x128,1x512,8x128", metavar="BxS,...",
                   help="prefill shapes as batch x sequence (default: 1x128,1x512,8x128)")
    p.add_argument("--decode-batches", default="1,8", metavar="B,...", help="decode batch sizes (default: 1,8)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median kept)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs per measurement")
    p.add_argument("--decode-tokens", type=int, default=32, help="tokens generated per decode measurement")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "auto"),
                   help="weights' dtype (default: float32; bfloat16 on GPUs; auto: the checkpoint's own)")
    p.add_argument("--device-map", default=None, metavar="auto|FILE",
                   help="shard the model over the visible GPUs (auto, balanced, sequential), CPU last; replaces --device")
    p.add_argument("--json", metavar="FILE", help="write the measurements, protocol and versions here")
    add_trust_flag(p)
    p.set_defaults(handler=run_bench)


def recorded_baseline(pruned_dir: str) -> str | None:
    config = Path(pruned_dir).expanduser() / "config.json"
    try:
        record = json.loads(config.read_text()).get("selfprune") or {}
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("base_model")


def parse_ints(text: str, flag: str, pairs: bool = False) -> list:
    """"1,8" -> [1, 8]; with pairs, "1x128,8x128" -> [(1, 128), (8, 128)]."""
    try:
        items = [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        items = []
    want = 2 if pairs else 1
    if not items or any(len(i) != want or min(i) < 1 for i in items):
        example = "1x128,8x128" if pairs else "1,8"
        raise SelfpruneError(f"{flag} '{text}' is not a list of positive {'BxS pairs' if pairs else 'integers'} like {example}")
    return items if pairs else [i[0] for i in items]


def run_bench(args: argparse.Namespace) -> int:
    from selfprune.atomic import atomic_write_json
    from selfprune.cli.eval import check_writable
    from selfprune.versions import versions
    from selfprune.models.loading import check_remote_code, resolve_model_path

    for name in ("repeats", "decode_tokens"):
        if getattr(args, name) < 1:
            raise SelfpruneError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise SelfpruneError("--warmup must be 0 or more")
    shapes = parse_ints(args.shapes, "--shapes", pairs=True)
    batches = parse_ints(args.decode_batches, "--decode-batches")
    resolve_model_path(args.pruned)  # a clear error for a path that is not a model, before loading anything
    baseline = args.baseline or recorded_baseline(args.pruned)
    if not baseline:
        raise SelfpruneError(f"'{args.pruned}' does not record its dense model; pass --baseline MODEL (e.g. 'default')")
    if args.json:
        check_writable(args.json)
    for name in (args.pruned, baseline):  # neither model loads if one of them would run code not trusted
        check_remote_code(resolve_model_path(name), args.trust_remote_code, name)

    import torch

    from selfprune.eval.speed import format_speed_table, speed
    from selfprune.models import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    place = dict(device=None if args.device_map else device, dtype=args.dtype, device_map=args.device_map,
                 trust_remote_code=args.trust_remote_code)
    dense, _ = load_model(baseline, **place)
    pruned, _ = load_model(args.pruned, **place)
    result = speed({"dense": dense, "pruned": pruned}, prefill_shapes=shapes, decode_batches=batches,
                   warmup=args.warmup, repeats=args.repeats, decode_tokens=args.decode_tokens)
    print(format_speed_table(result))
    if args.json:
        atomic_write_json(Path(args.json).expanduser(), {"pruned": args.pruned, "baseline": baseline, **result, "versions": versions()})
        print(f"wrote {args.json}")
    return 0
