"""Measured speed-up of physically pruned models on a GPU, at realistic model shapes.

Speed depends on the shapes of the weights, not on their values, so this benchmark builds a model of
a real architecture's shape with random weights (no download needed), prunes it uniformly with
wanda-sp (random calibration tokens), and measures dense and pruned models side by side with
``selfprune.eval.speed`` (interleaved, warm-up, medians). It also checks on the device that the
pruned view used by the search equals the physically pruned model, and times one candidate
evaluation of the search (slice + forward) against one dense forward over the same tokens.

    python benchmarks/bench_gpu_speed.py --shape llama3-8b --ratios 0.3 0.5 --json speed.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

SHAPES = {
    # hidden, layers, heads, kv heads, MLP width, vocab
    "llama3-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=8192, vocab_size=128256, head_dim=64, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, head_dim=128, tie_word_embeddings=False),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=256, vocab_size=512, head_dim=32, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, head_dim=64, tie_word_embeddings=True),
}


def build(shape: str, dtype, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def candidate_vs_dense(model, scores, ratio, tokens, repeats=5):
    """Seconds of one search candidate (pruned view swapped in + forward) vs one dense forward."""
    from selfprune.models import get_adapter
    from selfprune.pruning.views import PrunedViews

    adapter = get_adapter(model)
    n = adapter.num_layers
    views = PrunedViews(adapter, scores, bias_compensation=True)
    dense_t, cand_t = [], []
    for r in range(repeats + 1):
        sync(tokens.device); t0 = time.perf_counter()
        model(tokens, use_cache=False)
        sync(tokens.device); t1 = time.perf_counter()
        with views.pruned([ratio] * n, [ratio] * n):
            model(tokens, use_cache=False)
        sync(tokens.device); t2 = time.perf_counter()
        if r:  # the first round is warm-up
            dense_t.append(t1 - t0); cand_t.append(t2 - t1)
    return statistics.median(dense_t), statistics.median(cand_t)


def main(argv=None):
    from selfprune.eval.speed import speed
    from selfprune.models import get_adapter
    from selfprune.options import PruneOptions
    from selfprune.pruning.apply import pruned_view
    from selfprune.pruning.importance import compute_importance
    from selfprune.pruning.pipeline import prune_model
    from selfprune.report.tables import format_speed_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mlp-multiple", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""), flush=True)

    dense = build(args.shape, dtype, args.device)
    adapter = get_adapter(dense)
    calib = torch.randint(0, dense.config.vocab_size, (8, 512), device=args.device)
    t0 = time.perf_counter()
    scores = compute_importance(adapter, calib, "wanda-sp", batch_size=4, progress=False)
    sync(args.device)
    print(f"importance: {time.perf_counter() - t0:.1f}s for {calib.numel()} tokens", flush=True)

    tokens = torch.randint(0, dense.config.vocab_size, (4, 512), device=args.device)
    cand = {}
    for ratio in args.ratios:
        d, c = candidate_vs_dense(dense, scores, ratio, tokens)
        cand[ratio] = {"dense_forward_s": d, "candidate_s": c, "ratio": c / d}
        print(f"search candidate at {ratio:.0%}: {c * 1000:.1f} ms vs dense forward {d * 1000:.1f} ms "
              f"= {c / d:.2f}x", flush=True)

    models = {"dense": dense}
    checks = {}
    probe = tokens[:1, :64]
    for ratio in args.ratios:
        pruned = copy.deepcopy(dense)
        result = prune_model(pruned, None, ratio=ratio, options=PruneOptions(mlp_multiple=args.mlp_multiple),
                             scores=scores, progress=False)
        with torch.no_grad():  # the view compensates as the physical pruning did
            with pruned_view(adapter, result.plan, scores, result.summary["bias_compensation"]):
                viewed = dense(probe).logits.float()
            physical = pruned(probe).logits.float()
        checks[ratio] = float((viewed - physical).abs().max())
        print(f"pruned {ratio:.0%}: params {result.summary['params_before'] / 1e9:.2f}B -> "
              f"{result.summary['params_after'] / 1e9:.2f}B; view vs physical max |diff| {checks[ratio]:.2e}", flush=True)
        models[f"pruned {ratio:.0%}"] = pruned

    res = speed(models, prefill_shapes=((1, 2048), (8, 512)), decode_batches=(1, 16), prompt_len=128,
                decode_tokens=64, warmup=2, repeats=args.repeats)
    print(format_speed_table(res))
    res["candidate_vs_dense"] = cand
    res["view_vs_physical_max_abs_diff"] = checks
    res["shape"] = {"name": args.shape, **SHAPES[args.shape], "dtype": args.dtype, "mlp_multiple": args.mlp_multiple}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
