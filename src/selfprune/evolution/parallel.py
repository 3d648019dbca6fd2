"""Fitness evaluations fanned out over Ray workers.

Each worker (a Ray actor) holds a replica of the model with the MLP channels already in
importance order, the scores, and the fitness tokens: the very inputs of the serial
``PruningFitness``, so a candidate gets the same value on any worker. The replica is built from
the driver's state dict, put once into Ray's object store (every worker on a node maps the same
copy), which is faster than each worker re-reading the checkpoint and re-running calibration.

``ParallelFitness.map`` scores a list of candidates, one in flight per worker (a free worker takes
the next candidate, so slow and fast candidates balance), and returns the values in the list's
order. A worker that dies mid-candidate is dropped and its candidate goes back to the queue for
the others; only when every worker is gone does the search stop with an error (a resumed run
continues from the checkpoint).

Ray is imported only here, and only when ``workers > 1`` or a cluster address is given.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from typing import Any, Callable, Sequence

import torch

from selfprune.errors import SelfpruneError


def import_ray():
    try:
        import ray
    except ImportError:
        raise SelfpruneError("parallel fitness (search.workers > 1 or search.ray_address) needs Ray: "
                             "pip install 'selfprune[scale]'") from None
    return ray


def _build_replica(spec: dict, device: str, threads: int):
    """A worker's own PruningFitness, built from the driver's spec."""
    from selfprune.evolution.fitness import PruningFitness
    from selfprune.models.adapter import get_adapter

    torch.set_num_threads(max(1, threads))
    dtype = spec["dtype"]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no fp32 copy of a bf16 model
    try:
        model = spec["cls"](spec["config"])
    finally:
        torch.set_default_dtype(previous)
    model.load_state_dict(spec["state"], strict=True)
    model.eval()
    if device.startswith("cuda") and torch.cuda.device_count() > 1:
        # A group of GPUs per worker: shard the replica over them (accelerate's balanced map).
        from accelerate import dispatch_model, infer_auto_device_map

        device_map = infer_auto_device_map(model, no_split_module_classes=getattr(model, "_no_split_modules", None))
        model = dispatch_model(model, device_map)
    else:
        model.to(device)
    f = spec["fitness"]
    return PruningFitness(get_adapter(model), f["scores"], f["stage_blocks"], f["kind"], f["attn_granularity"],
                          f["mlp_multiple"], f["bias_compensation"], f["batch_size"])


class _Worker:
    """The actor body: one model replica, one candidate at a time."""

    def __init__(self, spec: dict, device: str, threads: int):
        self.fitness = _build_replica(spec, device, threads)
        self.calls = 0

    def ready(self) -> int:
        return os.getpid()

    def evaluate(self, attn: Sequence[float], mlp: Sequence[float], stage: int) -> float:
        self.calls += 1
        return float(self.fitness(attn, mlp, stage=stage))


class ParallelFitness:
    """``PruningFitness``'s interface plus ``map``, over ``workers`` Ray actors."""

    def __init__(self, fitness: Any, kind: str, workers: int = 2, address: str | None = None,
                 threads: int | None = None, gpus_per_worker: float | None = None):
        ray = import_ray()
        self.serial = fitness
        self.on_dispatch: Callable[[ParallelFitness, list], None] | None = None  # called after each dispatch round
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at '{address}'" if address else "a local Ray"
                raise SelfpruneError(f"could not start {where}: {str(exc).splitlines()[0]}") from None
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
        if gpus_per_worker is None:
            gpus_per_worker = gpus / workers if gpus else 0.0
            if gpus_per_worker >= 1:
                gpus_per_worker = float(math.floor(gpus_per_worker))
        threads = threads or max(1, int(cpus // workers))
        # More workers than cores: share them (whole cores would leave some workers unscheduled forever).
        cpus_per_worker = min(float(threads), cpus / workers)
        device = "cuda" if gpus_per_worker > 0 else "cpu"
        model = fitness.adapter.model
        spec = {
            "cls": type(model), "config": model.config, "dtype": next(model.parameters()).dtype,
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "fitness": {"scores": fitness.scores, "stage_blocks": [b.cpu() for b in fitness.stage_blocks],
                        "kind": kind, "attn_granularity": fitness.attn_granularity,
                        "mlp_multiple": fitness.mlp_multiple, "bias_compensation": fitness.bias_compensation,
                        "batch_size": fitness.batch_size},
        }
        t0 = time.perf_counter()
        ref = ray.put(spec)
        actor_cls = ray.remote(_Worker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0)
        self.actors = [actor_cls.remote(ref, device, threads) for _ in range(workers)]
        try:
            ray.get([a.ready.remote() for a in self.actors])
        except Exception as exc:  # noqa: BLE001 - a worker that cannot build its replica
            self.close()
            raise SelfpruneError(f"fitness workers failed to start: {str(exc).splitlines()[0]}") from None
        self.startup_seconds = time.perf_counter() - t0
        self.requeued = 0

    # The serial fitness's interface, so the evaluator and loop see no difference.
    @property
    def num_stages(self) -> int:
        return self.serial.num_stages

    @property
    def display_name(self) -> str:
        return self.serial.display_name

    def tokens(self, stage: int = 0) -> int:
        return self.serial.tokens(stage)

    def __call__(self, attn, mlp, stage: int = 0) -> float:
        return self.map([(attn, mlp, stage)])[0]

    def map(self, items: Sequence[tuple[Sequence[float], Sequence[float], int]]) -> list[float]:
        """Fitness of each (attn, mlp, stage) item, in order; dead workers' items are re-queued."""
        ray = import_ray()
        from ray.exceptions import RayActorError

        results: list[float | None] = [None] * len(items)
        queue = deque(range(len(items)))
        idle = list(self.actors)
        running: dict[Any, tuple[Any, int]] = {}
        while queue or running:
            while queue and idle:
                actor, i = idle.pop(0), queue.popleft()
                attn, mlp, stage = items[i]
                ref = actor.evaluate.remote([float(x) for x in attn], [float(x) for x in mlp], int(stage))
                running[ref] = (actor, i)
            if self.on_dispatch:
                self.on_dispatch(self, [a for a, _ in running.values()])
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                actor, i = running.pop(ref)
                try:
                    results[i] = float(ray.get(ref))
                    idle.append(actor)
                except RayActorError:
                    self.actors = [a for a in self.actors if a is not actor]
                    queue.appendleft(i)
                    self.requeued += 1
                    print(f"fitness worker lost; its candidate is re-queued ({len(self.actors)} left)",
                          file=sys.stderr, flush=True)
            if not self.actors and (queue or running):
                raise SelfpruneError("every fitness worker died; rerun with --resume to continue from the checkpoint")
        return [float(r) for r in results]

    def close(self) -> None:
        ray = import_ray()
        for a in getattr(self, "actors", []):
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
