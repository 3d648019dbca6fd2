"""Scaling paths: fitness on Ray workers, layer-by-layer calibration, dtype and device maps."""

from __future__ import annotations

import pytest
import torch

from selfprune.evolution import search as search_mod
from selfprune.evolution.parallel import ParallelFitness
from selfprune.evolution.problem import build_search_problem
from selfprune.evolution.search import search
from selfprune.options import PruneOptions, SearchOptions

PRUNE = PruneOptions(calib_samples=2, calib_seqlen=64)
SEARCH = dict(operator=["ga"], population=4, generations=1, crossover=2, mutation=2, fitness_samples=[1], fitness_seqlen=64)


@pytest.fixture(scope="module")
def problem(default_model_dir):
    """A search problem on its own copy of the default model (the problem reorders channels in place)."""
    from selfprune.models import load_model

    model, tok = load_model(default_model_dir)
    return model, tok, build_search_problem(model, tok, 0.3, PRUNE, SearchOptions(**SEARCH), progress=False)


@pytest.fixture(scope="module")
def serial(problem):
    model, tok, prob = problem
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same kernels, the same sums
    try:
        return search(model, tok, 0.3, PRUNE, SearchOptions(**SEARCH), progress=False, problem=prob)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _evaluated(outcome):
    return outcome.results["ga"].evaluated


def test_two_ray_workers_match_the_serial_search(problem, serial, local_ray):
    model, tok, prob = problem
    outcome = search(model, tok, 0.3, PRUNE, SearchOptions(**SEARCH, workers=2), progress=False, problem=prob)
    assert len(_evaluated(serial)) >= 8
    assert _evaluated(outcome) == _evaluated(serial)  # every genome, every value
    assert outcome.best.best.genome.key == serial.best.best.genome.key
    assert outcome.best.best.fitness == serial.best.best.fitness
    assert outcome.best.report["budget"]["total_evals"] == serial.best.report["budget"]["total_evals"]


class _KillFirstWorker(ParallelFitness):
    """Kills one worker while it holds a candidate, the first time several are busy."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.killed = None
        self.on_dispatch = self._kill

    def _kill(self, pool, busy):
        import ray

        if self.killed is None and len(busy) >= 2:
            self.killed = busy[0]
            ray.kill(busy[0], no_restart=True)


def test_a_killed_worker_loses_no_candidate(problem, serial, local_ray, monkeypatch):
    model, tok, prob = problem
    pools = []

    def make(*args, **kwargs):
        pools.append(_KillFirstWorker(*args, **kwargs))
        return pools[-1]

    monkeypatch.setattr(search_mod, "ParallelFitness", make)
    # Three workers on two cores: they share them rather than one waiting for a free core forever.
    outcome = search(model, tok, 0.3, PRUNE, SearchOptions(**SEARCH, workers=3), progress=False, problem=prob)
    (pool,) = pools
    assert pool.killed is not None and pool.requeued == 1 and len(pool.actors) == 0  # closed after the search
    assert _evaluated(outcome) == _evaluated(serial)
    assert outcome.best.best.genome.key == serial.best.best.genome.key


def test_the_problem_records_what_its_fitness_values_depend_on(problem):
    setup = problem[2].setup  # a resume compares these: another dtype or data gives other fitness values
    assert setup.dtype == "float32" and len(setup.calib_sha256) == len(setup.fitness_sha256) == 64
    assert setup.calib_sha256 != setup.fitness_sha256
    assert {"dtype", "calib_sha256", "fitness_sha256", "metric", "calib", "fitness"} <= set(setup.fingerprint())


def test_workers_without_ray_is_a_clear_error(problem, monkeypatch):
    import builtins

    from selfprune.errors import SelfpruneError

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    model, tok, prob = problem
    with pytest.raises(SelfpruneError, match=r"needs Ray: pip install 'selfprune\[scale\]'"):
        search(model, tok, 0.3, PRUNE, SearchOptions(**SEARCH, workers=2), progress=False, problem=prob)


def _assert_same_scores(a, b):
    for name in ("head_scores", "channel_scores", "attn_input_mean", "mlp_input_mean"):
        for x, y in zip(getattr(a, name), getattr(b, name), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.outlier_ratio, b.outlier_ratio)
    torch.testing.assert_close(a.attn_influence, b.attn_influence)
    torch.testing.assert_close(a.mlp_influence, b.mlp_influence)
    assert a.calib_tokens == b.calib_tokens


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma3"])
def test_layerwise_calibration_equals_the_full_pass(tiny_model, family):
    from selfprune.models.adapter import get_adapter
    from selfprune.pruning.importance import compute_importance

    adapter = get_adapter(tiny_model(family))
    blocks = torch.randint(0, 128, (5, 48), generator=torch.Generator().manual_seed(1))  # a short last batch
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    full = compute_importance(adapter, blocks, "wanda-sp", batch_size=2, progress=False)
    by_layer = compute_importance(adapter, blocks, "wanda-sp", batch_size=2, progress=False, layerwise=True)
    _assert_same_scores(full, by_layer)
    after = adapter.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing moved or changed for good
    assert all(type(layer).forward is layer.forward.__func__ for layer in adapter.layers)  # forwards restored


def test_layerwise_calibration_on_the_default_model(default_model):
    from selfprune.data.calibration import calibration_text, token_blocks
    from selfprune.models.adapter import get_adapter
    from selfprune.pruning.importance import compute_importance

    model, tok = default_model
    adapter = get_adapter(model)
    blocks = token_blocks(tok, calibration_text("lambada"), 2, 64, seed=0)
    full = compute_importance(adapter, blocks, "flap", progress=False)
    by_layer = compute_importance(adapter, blocks, "flap", progress=False, layerwise=True, device="cpu")
    _assert_same_scores(full, by_layer)


def _checkpoint(folder):
    import json

    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    config = json.loads((folder / "config.json").read_text())
    return tensors, config


def test_pruning_a_device_mapped_model_saves_the_same_checkpoint(default_model_dir, tmp_path):
    """A device map of the model's modules (all CPU here: transformers dispatches with hooks only
    across several devices, so sharding itself needs GPUs)."""
    import json

    from selfprune.api import prune

    options = PruneOptions(calib_samples=2, calib_seqlen=64)
    names = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"] + [f"model.layers.{i}" for i in range(30)]
    (tmp_path / "map.json").write_text(json.dumps({n: "cpu" for n in names}))
    mapped = prune(default_model_dir, ratio=0.3, options=options, device_map=str(tmp_path / "map.json"), progress=False)
    single = prune(default_model_dir, ratio=0.3, options=options, device="cpu", progress=False)
    a, ca = _checkpoint(mapped.save(tmp_path / "mapped"))
    b, cb = _checkpoint(single.save(tmp_path / "single"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert ca["selfprune"]["layers"] == cb["selfprune"]["layers"]


def test_dtype_and_device_map_mistakes_are_one_line(default_model_dir):
    from selfprune.config import resolve
    from selfprune.errors import SelfpruneError
    from selfprune.models.loading import load_model

    model, _ = load_model(default_model_dir, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(SelfpruneError, match="unknown dtype 'fp8'"):
        load_model(default_model_dir, dtype="fp8")
    with pytest.raises(SelfpruneError, match="device map 'nowhere'"):
        load_model(default_model_dir, device_map="nowhere")
    with pytest.raises(SelfpruneError, match="field 'dtype'"):
        resolve({"model": "default", "ratio": 0.3, "dtype": "fp8"})
    with pytest.raises(SelfpruneError, match="device_map.*drop device"):
        resolve({"model": "default", "ratio": 0.3, "device": "cpu", "device_map": "auto"})


class _Quadratic:
    """A two-stage fitness with a known minimum; ``map`` makes it the parallel kind."""

    num_stages = 2

    def __init__(self):
        self.calls = []

    def tokens(self, stage):
        return 10 * (stage + 1)

    def __call__(self, attn, mlp, stage=0):
        self.calls.append(stage)
        value = float(((attn - 0.3) ** 2).sum() + ((mlp - 0.2) ** 2).sum()) * (1 + stage)
        return float("nan") if attn[0] == 0.9 else value


class _QuadraticMap(_Quadratic):
    def map(self, items):
        return [self(a, m, s) for a, m, s in items]


@pytest.mark.parametrize("max_evals", [None, 5, 8])
def test_parallel_staging_keeps_the_cache_and_budget_of_the_serial_one(max_evals):
    """Staged selection, duplicates in a list, NaN and a budget that runs out mid-stage."""
    import numpy as np

    from selfprune.evolution.budget import Budget
    from selfprune.evolution.evaluator import Evaluator
    from selfprune.evolution.genome import Genome

    rng = np.random.default_rng(0)
    rates = [tuple(float(x) for x in rng.choice([0.1, 0.3, 0.5, 0.9], 3)) for _ in range(8)]
    genomes = [Genome(r, r, r) for r in rates + rates[:2]]  # two repeated within one list
    runs = []
    for fitness in (_Quadratic(), _QuadraticMap()):
        ev = Evaluator(fitness, Budget(), max_evals=max_evals)
        first = ev.staged(genomes[:6], [0.5])
        second = ev.staged(genomes, [0.5])
        runs.append((first, second, ev.cache, ev.budget.to_json(), sorted(fitness.calls)))
    (*serial, serial_seconds), (*parallel, parallel_seconds) = [
        (a, b, c, {k: v for k, v in d.items() if k != "seconds"}, e, d["seconds"].keys()) for a, b, c, d, e in runs]
    assert serial == parallel
    assert serial_seconds == parallel_seconds
    assert runs[0][3]["cache_hits"] > 0 and (max_evals is None or runs[0][3]["total_evals"] == max_evals)


@pytest.mark.parametrize("argv, message", [
    (["search", "default", "--ratio", "0.3", "--workers", "0"], "option --workers"),
    (["search", "default", "--ratio", "0.3", "--dtype", "fp8"], "option --dtype"),
    (["prune", "default", "--ratio", "0.3", "--device", "cpu", "--device-map", "auto"], "one of --device and --device-map"),
])
def test_scale_flag_mistakes_exit_2_with_one_line(argv, message, tmp_path, capsys):
    from selfprune.cli import main

    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
