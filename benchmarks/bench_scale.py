"""Scaling the search: fitness on N Ray workers against one, and (on a GPU) the cost of calibration
and of one candidate evaluation at a 1B-8B shape.

Part 1 (any machine): the same candidates (random genomes repaired onto the budget) scored by the
serial fitness in this process and by ``ParallelFitness`` with 1 and N workers, each worker with
``--threads`` CPU threads (or one GPU each when Ray sees GPUs); the speed-up is at equal
evaluations and the values are checked to be the same. The free cores (cores minus the 1-minute
load average before the run) are printed: on a shared machine the speed-up is bounded by them.

Part 2 (only when CUDA is present): a model of ``--shape`` with random weights in bf16 (speed and
memory depend on shapes, not values): time and peak GPU memory of the calibration pass (full and
layer by layer) and of one candidate evaluation (pruned view + forward over the fitness tokens).

    python benchmarks/bench_scale.py --workers 2 --candidates 8 --json scale.json
    python benchmarks/bench_scale.py --workers 8 --shape llama3-8b   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def candidates(problem, ratio: float, n: int, seed: int):
    from selfprune.evolution.genome import GenomeSpace

    space = GenomeSpace.from_problem(problem, ratio, bounds=(0.0, 0.9))
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        genome, _ = space.repair(np.clip(ratio + rng.normal(0, 0.15, space.dim), 0, 0.9))
        if genome.key not in {g.key for g in out}:
            out.append(genome)
    return [(*g.arrays(), 0) for g in out]


def part_workers(args) -> dict:
    from selfprune.evolution.parallel import ParallelFitness, import_ray
    from selfprune.evolution.problem import build_search_problem
    from selfprune.models import load_model
    from selfprune.options import PruneOptions, SearchOptions

    ray = import_ray()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    free = max(0.0, cores - load)
    print(f"cores {cores}, 1-min load {load:.2f} before the run: about {free:.1f} free", flush=True)
    model, tok = load_model(args.model)
    problem = build_search_problem(model, tok, args.ratio, PruneOptions(calib_samples=4, calib_seqlen=128),
                                   SearchOptions(fitness_samples=[args.fitness_blocks], fitness_seqlen=args.fitness_seqlen),
                                   progress=False)
    items = candidates(problem, args.ratio, args.candidates, seed=0)
    tokens = problem.fitness.tokens(0)

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    serial_values = [problem.fitness(a, m, stage=s) for a, m, s in items]
    serial = time.perf_counter() - t0
    print(f"serial, {args.threads} thread(s): {serial:.2f} s for {len(items)} candidates "
          f"({serial / len(items):.3f} s each, {tokens} tokens)", flush=True)

    ray.init(num_cpus=max(args.workers * args.threads, cores), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    out = {"cores": cores, "load_before": load, "free_cores": free, "candidates": len(items), "tokens": tokens,
           "threads_per_worker": args.threads, "serial_s": serial, "workers": {}}
    try:
        for n in sorted({1, args.workers}):
            pool = ParallelFitness(problem.fitness, "ppl", workers=n, threads=args.threads)
            try:
                pool.map(items[:n])  # warm-up: first forward of each replica
                t0 = time.perf_counter()
                values = pool.map(items)
                wall = time.perf_counter() - t0
            finally:
                pool.close()
            same = values == serial_values
            out["workers"][n] = {"wall_s": wall, "startup_s": pool.startup_seconds, "same_values": same}
            print(f"{n} worker(s): {wall:.2f} s ({len(items) / wall:.2f} candidates/s), start-up "
                  f"{pool.startup_seconds:.1f} s, values equal to serial: {same}", flush=True)
    finally:
        ray.shutdown()
    one, many = out["workers"][1]["wall_s"], out["workers"][args.workers]["wall_s"]
    out["speedup"] = one / many
    print(f"speed-up of {args.workers} workers over 1: {one / many:.2f}x (target >= {0.8 * args.workers:.1f}x with "
          f"{args.workers} free cores; about {free:.1f} were free)", flush=True)
    return out


def _peak(fn, device: str):
    """Seconds and peak device memory (GiB above what was allocated before; None off CUDA)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None


def part_gpu(args, device: str = "cuda") -> dict:
    from bench_gpu_speed import build

    from selfprune.evolution.fitness import PruningFitness
    from selfprune.models.adapter import get_adapter
    from selfprune.pruning.apply import order_by_importance
    from selfprune.pruning.importance import compute_importance

    model = build(args.shape, torch.bfloat16, "cpu")
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    calib = torch.randint(0, vocab, (args.calib_samples, args.calib_seqlen), generator=gen)
    adapter = get_adapter(model)
    out = {"shape": args.shape, "params": sum(p.numel() for p in model.parameters()), "dtype": "bfloat16"}
    # Layer by layer: the weights stay on the CPU, one layer at a time on the GPU.
    t, mem = _peak(lambda: compute_importance(adapter, calib, "wanda-sp", progress=False, layerwise=True, device=device),
                   device)
    out["calibration_layerwise"] = {"s": t, "peak_gib": mem}
    model.to(device)
    holder = {}
    t, mem = _peak(lambda: holder.update(scores=compute_importance(adapter, calib, "wanda-sp", progress=False)), device)
    out["calibration_full"] = {"s": t, "peak_gib": mem, "tokens": calib.numel()}
    scores = order_by_importance(adapter, holder["scores"])
    blocks = torch.randint(0, vocab, (args.fitness_blocks, args.fitness_seqlen), generator=gen)
    fit = PruningFitness(adapter, scores, [blocks], "ppl", mlp_multiple=64, bias_compensation=True)
    rates = np.full(adapter.num_layers, args.ratio)
    fit(rates, rates)  # warm-up
    times = []
    for _ in range(3):
        t, mem = _peak(lambda: fit(rates, rates), device)
        times.append(t)
    out["candidate"] = {"s": statistics.median(times), "peak_gib": mem, "tokens": blocks.numel()}
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per worker (and of the serial baseline)")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--fitness-blocks", type=int, default=1)
    ap.add_argument("--fitness-seqlen", type=int, default=128)
    ap.add_argument("--shape", default="llama3-8b", help="part 2's model shape (bench_gpu_speed.py's SHAPES)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-seqlen", type=int, default=128)
    ap.add_argument("--skip-workers", action="store_true", help="only part 2")
    ap.add_argument("--part2-device", default=None, help="run part 2 here even without CUDA (e.g. cpu with --shape tiny)")
    ap.add_argument("--json", help="write everything measured here")
    args = ap.parse_args()
    result = {}
    if not args.skip_workers:
        result["workers"] = part_workers(args)
    if args.part2_device:
        result["gpu"] = part_gpu(args, args.part2_device)
    elif torch.cuda.is_available():
        result["gpu"] = part_gpu(args)
    else:
        print("no GPU: calibration and candidate cost at a 1B-8B shape not measured", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
