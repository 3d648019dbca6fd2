"""What one search candidate costs beyond the forward pass of the pruned model, measured on any device.

On a GPU every operator the candidate path runs outside the model's forward is a kernel launch,
and every host sync (``.item()``, ``nonzero``, a Python branch on a tensor) drains the pipeline; on
a 2-core CPU that overhead hides behind slow matmuls. So this benchmark counts it, not only times it.
For one ``PruningFitness`` call at each ratio (bias compensation on, as ``selfprune run`` does) and
for one dense forward with the same loss, it reports:

- operator calls and host syncs outside the model's forward (torch profiler), and the kinds that
  dominate;
- bytes allocated outside the forward (weight copies, masks, index tensors; the loss's own buffers
  are in the dense row too);
- host time outside the forward per decoder layer (median of repeats, no profiler);
- wall time of a candidate against one dense forward over the same tokens (interleaved, warm-up,
  medians);
- with ``--fidelity`` (a real model): the candidate against the physically pruned model at the same
  rates, in float32 and bfloat16, on held-out-style text (the second half of the calibration
  source): max relative logit difference, argmax agreement, perplexity of each.

    python benchmarks/bench_candidate.py --fidelity --json benchmarks/results/candidate/after.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_speed import SHAPES, build, sync  # noqa: E402

SYNCS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::item")
FORWARD = "model forward"


class TimedForward:
    """Wraps the model's forward: a profiler range around it and the host seconds it took."""

    def __init__(self, model):
        self.model, self.inner, self.seconds = model, model.forward, 0.0

    def __call__(self, *args, **kwargs):
        sync(self.device)
        t0 = time.perf_counter()
        with record_function(FORWARD):
            out = self.inner(*args, **kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out

    @property
    def device(self):
        return next(self.model.parameters()).device


def outside_forward(prof) -> tuple[Counter, int]:
    """Operator calls and allocated bytes of the events that ran outside the model's forward."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name == FORWARD]
    inside = lambda e: any(a <= e.time_range.start and e.time_range.end <= b for a, b in ranges)  # noqa: E731
    calls, allocated = Counter(), 0
    for e in events:
        if e.name == FORWARD or inside(e) or not e.name.startswith("aten::"):
            continue
        calls[e.name] += 1
        allocated += max(0, e.self_cpu_memory_usage) + max(0, getattr(e, "self_device_memory_usage", 0))
    return calls, allocated


def measure(call, timed: TimedForward, layers: int, repeats: int) -> dict:
    for _ in range(2):  # warm-up
        call()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    calls, allocated = outside_forward(prof)
    host = []
    for _ in range(repeats):
        timed.seconds = 0.0
        t0 = time.perf_counter()
        call()
        sync(timed.device)
        host.append(time.perf_counter() - t0 - timed.seconds)
    return {"ops_outside_forward": sum(calls.values()), "host_syncs": sum(calls[k] for k in SYNCS),
            "bytes_allocated_outside_forward": allocated,
            "host_ms_outside_forward_per_layer": statistics.median(host) * 1000 / layers,
            "top_ops": dict(calls.most_common(12))}


def source_commit() -> str | None:
    """The commit of the selfprune source measured (the numbers change with the code)."""
    import subprocess

    import selfprune

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(selfprune.__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@torch.no_grad()
def fidelity(name: str, ratios, device) -> dict:
    """The candidate view against ``apply_plan`` of the same rates, per dtype."""
    import copy

    from selfprune.data.calibration import calibration_text, token_blocks
    from selfprune.evolution.fitness import PruningFitness
    from selfprune.models import get_adapter, load_model
    from selfprune.pruning.apply import apply_plan, order_by_importance
    from selfprune.pruning.importance import compute_importance

    out = {}
    for dtype in ("float32", "bfloat16"):
        model, tokenizer = load_model(name, dtype=dtype, device=device)
        adapter = get_adapter(model)
        text = calibration_text("lambada")
        calib = token_blocks(tokenizer, text, 16, 256, seed=0, split="first").to(device)
        tokens = token_blocks(tokenizer, text, 4, 512, seed=1, split="second").to(device)
        scores = order_by_importance(adapter, compute_importance(adapter, calib, "wanda-sp", progress=False))
        fit = PruningFitness(adapter, scores, [tokens], "ppl", bias_compensation=True)
        n = adapter.num_layers
        for ratio in ratios:
            rates = [ratio] * n, [ratio] * n
            with fit.views.pruned(*rates):
                viewed = model(tokens, use_cache=False).logits.float()
            ppl_view = fit(*rates)
            physical = copy.deepcopy(model)
            apply_plan(get_adapter(physical), fit.plan(*rates), scores, True)
            expected = physical(tokens, use_cache=False).logits.float()
            ppl_physical = float(torch.nn.functional.cross_entropy(
                expected[:, :-1].reshape(-1, expected.shape[-1]), tokens[:, 1:].reshape(-1)).exp())
            del physical
            out[f"{dtype} {ratio:g}"] = {
                "max_rel_logit_diff": float((viewed - expected).abs().max() / expected.abs().max()),
                "argmax_agreement": float((viewed.argmax(-1) == expected.argmax(-1)).float().mean()),
                "ppl_view": ppl_view, "ppl_physical": ppl_physical,
                "ppl_rel_diff": abs(ppl_view / ppl_physical - 1)}
        del model
    return out


def ordering():
    """What the search orders before its first candidate (MLP channels only in earlier commits),
    so that the script measures earlier commits as they ran."""
    from selfprune.pruning import apply

    return getattr(apply, "order_by_importance", None) or apply.order_mlp_channels


def main(argv=None) -> int:
    from selfprune.evolution.fitness import PruningFitness
    from selfprune.models import get_adapter, load_model
    from selfprune.pruning.importance import compute_importance
    from selfprune.versions import versions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="a model to load, or shape:NAME for random weights of a "
                   f"known shape ({', '.join(sorted(SHAPES))})")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--tokens", type=int, nargs=2, default=[2, 512], metavar=("BLOCKS", "LENGTH"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--fidelity", action="store_true", help="also compare candidates with physically pruned models")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.model.startswith("shape:"):
        model = build(args.model.removeprefix("shape:"), dtype, args.device)
    else:
        model, _ = load_model(args.model, dtype=args.dtype, device=args.device)
    adapter = get_adapter(model)
    vocab = model.config.vocab_size
    calib = torch.randint(0, vocab, (8, 256), device=args.device)
    scores = ordering()(adapter, compute_importance(adapter, calib, "wanda-sp", batch_size=4, progress=False))
    blocks = torch.randint(0, vocab, tuple(args.tokens), device=args.device)
    fit = PruningFitness(adapter, scores, [blocks], "ppl", bias_compensation=True)
    timed = TimedForward(model)
    model.forward = timed
    n = adapter.num_layers

    @torch.no_grad()
    def dense():
        return fit.objective.batch_sum(fit._logits(blocks), blocks[:, 1:].to(fit.device))

    rows = {"dense forward": measure(dense, timed, n, args.repeats)}
    wall = {}
    for ratio in args.ratios:
        cand = lambda r=ratio: fit([r] * n, [r] * n)  # noqa: E731
        rows[f"candidate {ratio:.0%}"] = measure(cand, timed, n, args.repeats)
        d_t, c_t = [], []
        for _ in range(args.repeats):  # interleaved, so load on a shared machine hits both alike
            for fn, out in ((dense, d_t), (cand, c_t)):
                sync(args.device)
                t0 = time.perf_counter()
                fn()
                sync(args.device)
                out.append(time.perf_counter() - t0)
        wall[ratio] = {"dense_s": statistics.median(d_t), "candidate_s": statistics.median(c_t),
                       "candidate_over_dense": statistics.median(c_t) / statistics.median(d_t)}
    del model.forward
    checks = fidelity(args.model, args.ratios, args.device) if args.fidelity else {}

    print(f"{args.model} on {args.device} ({args.dtype}), {n} layers, {args.tokens[0]} x {args.tokens[1]} tokens")
    print("| call | ops outside forward | host syncs | MB allocated outside forward | host ms per layer |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['ops_outside_forward']} | {r['host_syncs']} | "
              f"{r['bytes_allocated_outside_forward'] / 2**20:.1f} | {r['host_ms_outside_forward_per_layer']:.3f} |")
    for ratio, w in wall.items():
        print(f"candidate at {ratio:.0%}: {w['candidate_s'] * 1000:.1f} ms vs dense forward {w['dense_s'] * 1000:.1f} ms"
              f" = {w['candidate_over_dense']:.2f}x")
    for name, c in checks.items():
        print(f"view vs physical, {name}: max rel logit diff {c['max_rel_logit_diff']:.1e}, argmax agreement "
              f"{c['argmax_agreement']:.4f}, perplexity {c['ppl_view']:.3f} vs {c['ppl_physical']:.3f}")
    if args.json:
        manifest = {"command": "python benchmarks/bench_candidate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "selfprune_commit": source_commit(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "versions": versions(),
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"manifest": manifest, "rows": rows, "wall": wall, "fidelity": checks}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
