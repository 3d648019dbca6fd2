"""One prepared check of the search's GPU path, in a few minutes on one GPU, into one JSON file.

Speed depends on shapes, not values: every model here is built with random weights directly on the
device (no download; the machine that runs this needs only torch, transformers and selfprune's
source, no pydantic). It measures, at Llama-3-8B's shape in bf16:

1. one search candidate (``PruningFitness``: views + forward + loss, 2 x 512 tokens, bias
   compensation) against one dense forward, at 30% and 50%, and the host syncs, operator calls and
   host time outside the forward (``bench_candidate.py``'s counters);
2. layer-wise calibration from host memory (``LayerStream``) against the full pass on the device,
   128 x 128 tokens, and that both give the same scores;
3. the view against the physically pruned model: fp32 at Llama-3.2-1B's shape (max relative logit
   difference), bf16 at 8B (argmax agreement, loss difference);
4. prefill and decode speed-ups of models pruned at 30% with MLP widths in multiples of 1, 8, 64
   and 128 (``selfprune.eval.speed``);
5. Llama-3-70B's layer widths with 8 of its 80 layers: a candidate's and a calibrated layer's cost
   per layer, to extrapolate.

    python benchmarks/gpu_check.py --json benchmarks/results/gpu/check.json
    python benchmarks/gpu_check.py --quick          # tiny shapes on the CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout, not installed
from bench_candidate import TimedForward, measure  # noqa: E402
from bench_gpu_speed import SHAPES, build, sync  # noqa: E402
from bench_widths import widths  # noqa: E402

SHAPES["llama3-70b-8l"] = dict(hidden_size=8192, num_hidden_layers=8, num_attention_heads=64, num_key_value_heads=8,
                               intermediate_size=28672, vocab_size=128256, head_dim=128, tie_word_embeddings=False)
SHAPES["tiny-4l"] = dict(SHAPES["tiny"], num_hidden_layers=4)


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def timed(fn, device, repeats: int = 5) -> float:
    fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def scores_of(model, blocks, **kw):
    from selfprune.models import get_adapter
    from selfprune.pruning.importance import compute_importance

    return compute_importance(get_adapter(model), blocks, "wanda-sp", batch_size=16, progress=False, **kw)


def candidates(model, scores, ratios, tokens, repeats) -> dict:
    """Item 1: candidate against dense forward, and what runs outside the forward."""
    from selfprune.evolution.fitness import PruningFitness
    from selfprune.models import get_adapter

    adapter = get_adapter(model)
    n = adapter.num_layers
    fit = PruningFitness(adapter, scores, [tokens], "ppl", bias_compensation=True)
    device = tokens.device
    dense = lambda: fit.objective.batch_loss(fit._logits(tokens), tokens[:, 1:]).item()  # noqa: E731
    out = {}
    for ratio in ratios:
        cand = lambda r=ratio: fit([r] * n, [r] * n)  # noqa: E731
        cand()  # fills the per-layer caches, as the first candidates of a search do
        d_t, c_t = [], []
        for _ in range(repeats):
            for fn, acc in ((dense, d_t), (cand, c_t)):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                acc.append(time.perf_counter() - t0)
        d, c = statistics.median(d_t), statistics.median(c_t)
        out[f"{ratio:g}"] = {"dense_forward_s": d, "candidate_s": c, "candidate_over_dense": c / d}
        log(f"candidate at {ratio:.0%}: {c * 1000:.1f} ms vs dense {d * 1000:.1f} ms = {c / d:.2f}x")
    timer = TimedForward(model)
    model.forward = timer
    try:
        out["counters"] = {"dense": measure(dense, timer, n, 3),
                           **{f"candidate {r:g}": measure(lambda r=r: fit([r] * n, [r] * n), timer, n, 3) for r in ratios}}
    finally:
        del model.forward
    return out


def calibration(model, blocks, home_device) -> dict:
    """Item 2: the full pass on the device against layer by layer from host memory."""
    device = blocks.device
    full_s = timed(lambda: scores_of(model, blocks), device, repeats=2)
    full = scores_of(model, blocks)
    model.to("cpu")
    torch.cuda.empty_cache() if device.type == "cuda" else None
    by_layer_s = timed(lambda: scores_of(model, blocks.cpu(), layerwise=True, device=device), device, repeats=2)
    by_layer = scores_of(model, blocks.cpu(), layerwise=True, device=device)
    model.to(home_device)
    diff = max(float(((a - b).abs().max() / b.abs().max().clamp_min(1e-30))) for a, b in
               zip(full.channel_scores + full.head_scores, by_layer.channel_scores + by_layer.head_scores))
    weights = sum(p.numel() * p.element_size() for layer in model.model.layers for p in layer.parameters())
    log(f"calibration: full pass {full_s:.2f} s, layer by layer {by_layer_s:.2f} s = {by_layer_s / full_s:.1f}x; "
        f"scores max rel diff {diff:.1e}")
    return {"tokens": list(blocks.shape), "full_pass_s": full_s, "layerwise_s": by_layer_s,
            "layerwise_over_full": by_layer_s / full_s, "layer_weights_GB": weights / 1e9,
            "layerwise_GB_per_s": weights / 1e9 / by_layer_s, "scores_max_rel_diff": diff}


def view_vs_physical(model, scores, ratios, tokens) -> dict:
    """Item 3: the candidate view against ``apply_plan`` of the same rates."""
    from selfprune.models import get_adapter
    from selfprune.pruning.apply import apply_plan
    from selfprune.pruning.views import PrunedViews

    adapter = get_adapter(model)
    n = adapter.num_layers
    views = PrunedViews(adapter, scores, bias_compensation=True)
    out = {"dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    with torch.no_grad():
        for ratio in ratios:
            with views.pruned([ratio] * n, [ratio] * n):
                viewed = model(tokens, use_cache=False).logits.float()
            physical = copy.deepcopy(model)
            apply_plan(get_adapter(physical), views.plan([ratio] * n, [ratio] * n), scores, True)
            expected = physical(tokens, use_cache=False).logits.float()
            del physical
            rel = float((viewed - expected).abs().max() / expected.abs().max())
            agree = float((viewed.argmax(-1) == expected.argmax(-1)).float().mean())
            nll = lambda lg: float(torch.nn.functional.cross_entropy(  # noqa: E731
                lg[:, :-1].reshape(-1, lg.shape[-1]), tokens[:, 1:].reshape(-1)))
            out[f"{ratio:g}"] = {"max_rel_logit_diff": rel, "argmax_agreement": agree,
                                 "ppl_rel_diff": abs(torch.tensor(nll(viewed) - nll(expected)).exp().item() - 1)}
            log(f"view vs physical at {ratio:.0%} ({out['dtype']}): max rel diff {rel:.1e}, argmax agreement {agree:.4f}")
    return out


def per_layer(shape, dtype, device, tokens, ratio, repeats) -> dict:
    """Item 5: a wide model's per-layer costs (few layers), to extrapolate to its full depth."""
    model = build(shape, dtype, device)
    blocks = torch.randint(0, model.config.vocab_size, (32, 128), device=device)
    scores = scores_of(model, blocks)
    from selfprune.models import get_adapter
    from selfprune.pruning.apply import order_by_importance

    scores = order_by_importance(get_adapter(model), scores)
    n = model.config.num_hidden_layers
    cand = candidates(model, scores, [ratio], tokens, repeats)[f"{ratio:g}"]
    cal = calibration(model, blocks, device)
    del model
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"layers": n, "candidate_s_per_layer": cand["candidate_s"] / n, "dense_forward_s_per_layer":
            cand["dense_forward_s"] / n, "layerwise_calibration_s_per_layer": cal["layerwise_s"] / n,
            "full_pass_s_per_layer": cal["full_pass_s"] / n, "calibration_tokens": cal["tokens"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes on the CPU, to check the script")
    p.add_argument("--json", default=None)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    main_shape, small_shape, wide_shape = ("tiny", "tiny", "tiny-4l") if args.quick else \
        ("llama3-8b", "llama3-1b", "llama3-70b-8l")
    dtype = torch.float32 if args.quick else torch.bfloat16
    seqlen = 64 if args.quick else 512
    started = time.perf_counter()
    import transformers

    from selfprune.models import get_adapter
    from selfprune.pruning.apply import order_by_importance

    result = {"manifest": {
        "command": "python benchmarks/gpu_check.py" + (" --quick" if args.quick else ""),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "shapes": {k: SHAPES[k] for k in (main_shape, small_shape, wide_shape)}, "dtype": str(dtype)}}
    log(result["manifest"]["device"], result["manifest"]["versions"])

    model = build(main_shape, dtype, device)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (2, seqlen), device=device)
    calib = torch.randint(0, vocab, (128, 128) if not args.quick else (8, 32), device=device)
    result["calibration"] = calibration(model, calib, device)
    scores = order_by_importance(get_adapter(model), scores_of(model, calib))
    result["candidate"] = candidates(model, scores, [0.3, 0.5], tokens, args.repeats)
    result["view_vs_physical_bf16"] = view_vs_physical(model, scores, [0.3, 0.5], tokens[:1, :256])
    result["widths"] = widths(model, scores, 0.3, [1, 8, 64, 128], max(2, args.repeats - 2),
                              decode_tokens=16 if args.quick else 32)
    del model, scores
    gc.collect()
    torch.cuda.empty_cache() if device.type == "cuda" else None

    small = build(small_shape, torch.float32, device)
    small_scores = order_by_importance(get_adapter(small), scores_of(small, calib[:32]))
    result["view_vs_physical_fp32"] = view_vs_physical(small, small_scores, [0.3, 0.5], tokens[:1, :256])
    del small, small_scores
    gc.collect()
    torch.cuda.empty_cache() if device.type == "cuda" else None

    result["wide_model_per_layer"] = per_layer(wide_shape, dtype, device, tokens, 0.3, args.repeats)
    result["seconds"] = time.perf_counter() - started
    log(f"done in {result['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
