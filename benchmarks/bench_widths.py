"""Do MLP widths in round multiples run faster? Prefill and decode speed-ups of models pruned at one
ratio with MLP widths rounded to multiples of 1, 8, 64 and 128 channels, measured side by side.

Matrix kernels are tiled: a width that is not a multiple of the tile may cost as much as the next
multiple. Which multiple pays depends on the device, so ``--mlp-multiple``'s default is set from
this measurement (docs/scale.md). Every model is pruned from the same scores at the same rates;
only the rounding differs, so parameter counts differ by less than one multiple per layer.

    python benchmarks/bench_widths.py --json benchmarks/results/widths/cpu.json
    python benchmarks/bench_widths.py --model shape:llama3-8b --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_speed import SHAPES, build  # noqa: E402


def widths(model, scores, ratio: float, multiples, repeats: int, prefill_shapes=((1, 2048), (8, 512)),
           decode_batches=(1, 32), prompt_len: int = 128, decode_tokens: int = 32) -> dict:
    """Speed of the dense model and of one pruned copy per multiple, measured side by side."""
    from selfprune.eval.speed import speed
    from selfprune.models import get_adapter
    from selfprune.pruning.apply import apply_plan
    from selfprune.pruning.plan import make_plan

    adapter = get_adapter(model)
    n = adapter.num_layers
    models = {"dense": model}
    for multiple in multiples:
        pruned = copy.deepcopy(model)
        plan = make_plan(adapter, scores.head_scores, scores.channel_scores, [ratio] * n, [ratio] * n, "head", multiple)
        apply_plan(get_adapter(pruned), plan, scores, True)
        models[f"multiple {multiple}"] = pruned
    result = speed(models, prefill_shapes=prefill_shapes, decode_batches=decode_batches, prompt_len=prompt_len,
                   decode_tokens=decode_tokens, warmup=1, repeats=repeats)
    del models
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    from selfprune.data.calibration import calibration_text, token_blocks
    from selfprune.models import get_adapter, load_model
    from selfprune.pruning.importance import compute_importance
    from selfprune.report.tables import format_speed_table
    from selfprune.versions import versions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help=f"a model, or shape:NAME ({', '.join(sorted(SHAPES))})")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 8, 64, 128])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.model.startswith("shape:"):
        model = build(args.model.removeprefix("shape:"), getattr(torch, args.dtype), args.device)
        calib = torch.randint(0, model.config.vocab_size, (16, 256), device=args.device)
    else:
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
        calib = token_blocks(tokenizer, calibration_text("lambada"), 16, 256, seed=0, split="first").to(args.device)
    scores = compute_importance(get_adapter(model), calib, "wanda-sp", progress=False)
    on_cpu = args.device == "cpu"
    result = widths(model, scores, args.ratio, args.multiples, args.repeats,
                    prefill_shapes=((1, 512), (8, 128)) if on_cpu else ((1, 2048), (8, 512)),
                    decode_batches=(1, 8) if on_cpu else (1, 32))
    print(f"{args.model} on {args.device} ({args.dtype}), pruned {args.ratio:.0%}")
    print(format_speed_table(result))
    if args.json:
        result["manifest"] = {"command": "python benchmarks/bench_widths.py " + " ".join(sys.argv[1:] if argv is None else argv),
                              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "versions": versions(),
                              "device": torch.cuda.get_device_name() if args.device == "cuda"
                              else f"cpu, {torch.get_num_threads()} threads"}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
