"""The cost of a paper-budget search at 8B, 13B and 70B on one and eight GPUs, from measured per-layer costs.

Reads a GPU measurement (``gpu_check.py``'s JSON, or a record in its format) taken at
Llama-3-8B's shape, and scales per-layer costs by each model's layer parameters (the work of a
layer at a fixed token count); where the JSON holds ``wide_model_per_layer`` (Llama-3-70B's
widths), 70B's per-layer costs are that measurement instead of a scaled one. Stated assumptions:

- a search is 430 candidates (population 30, 20 generations of 20), each one candidate call of
  the measurement (2 x 512 tokens); eight GPUs score a generation in ceil(20 / 8) = 3 rounds
  (64 rounds instead of 430) when the model fits one GPU, 4 workers of 2 GPUs when it does not;
- a model bigger than one GPU (70B in bf16 is 141 GB) on one GPU streams what does not fit at
  the layer-wise calibration's measured rate, on every candidate;
- the LLM operator is the model itself (``--llm self``), at the measurement's seconds per
  evaluation scaled by total parameters (decode reads every weight per token).

    python benchmarks/scale_table.py benchmarks/results/gpu/h200-before-views.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# layers, hidden, MLP width, heads, KV heads, head dim, vocab
MODELS = {
    "8B": (32, 4096, 14336, 32, 8, 128, 128256),
    "13B": (40, 5120, 13824, 40, 40, 128, 32000),
    "70B": (80, 8192, 28672, 64, 8, 128, 128256),
}
GPU_GB = 139  # one H200
EVALS, ROUNDS_8 = 430, 64


def layer_params(layers, hidden, width, heads, kv, hd, vocab) -> int:
    return 2 * hidden * heads * hd + 2 * hidden * kv * hd + 3 * hidden * width


def total_params(layers, hidden, width, heads, kv, hd, vocab) -> int:
    return layers * layer_params(layers, hidden, width, heads, kv, hd, vocab) + 2 * vocab * hidden


def table(m: dict, ratio: str = "0.3") -> list[str]:
    base = MODELS["8B"]
    cand = m["candidate"][ratio]
    per_layer_8b = {"candidate": cand["candidate_s"] / base[0],
                    "full_pass": m["calibration"]["full_pass_s"] / base[0],
                    "layerwise": m["calibration"]["layerwise_s"] / base[0]}
    stream_gbs = (layer_params(*base) * base[0] * 2 / 1e9) / m["calibration"]["layerwise_s"]
    llm = m.get("llm_self_search")
    llm_per_eval = llm["llm_s"] / llm["evaluations"] if llm else None
    wide = m.get("wide_model_per_layer")
    rows = ["| model | GPUs | candidate | fitness, 430 candidates | calibration (full / by layer) | LLM operator "
            "(self) | total |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, shape in MODELS.items():
        scale = layer_params(*shape) / layer_params(*base)
        per = {k: v * scale for k, v in per_layer_8b.items()}
        if name == "70B" and wide:
            per = {"candidate": wide["candidate_s_per_layer"], "full_pass": wide["full_pass_s_per_layer"],
                   "layerwise": wide["layerwise_calibration_s_per_layer"]}
        weights_gb = total_params(*shape) * 2 / 1e9
        llm_s = llm_per_eval * EVALS * total_params(*shape) / total_params(*base) if llm_per_eval else None
        for gpus in (1, 8):
            candidate = per["candidate"] * shape[0]
            fits = weights_gb < 0.9 * GPU_GB
            if not fits and gpus == 1:
                candidate += (weights_gb - 0.9 * GPU_GB) / stream_gbs  # the rest streamed per candidate
            rounds = EVALS if gpus == 1 else (ROUNDS_8 if fits else math.ceil(EVALS / 4))
            fitness = candidate * rounds
            calib = per["full_pass"] * shape[0] if fits or gpus > 1 else per["layerwise"] * shape[0]
            total = fitness + calib + (llm_s or 0)
            rows.append(f"| {name} | {gpus} | {candidate:.2f} s | {fitness:.0f} s | "
                        f"{per['full_pass'] * shape[0]:.1f} s / {per['layerwise'] * shape[0]:.0f} s | "
                        f"{'n/a' if llm_s is None else f'{llm_s:.0f} s'} | {total / 60:.1f} min |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("measurement", help="gpu_check.py's JSON (or a record in its format)")
    p.add_argument("--ratio", default="0.3")
    args = p.parse_args(argv)
    m = json.loads(Path(args.measurement).read_text())
    print(f"from {args.measurement} ({m['manifest'].get('device', '?')}), candidates at {float(args.ratio):.0%}")
    print("\n".join(table(m, args.ratio)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
