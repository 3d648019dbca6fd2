"""Equal starts, level switches, the ablation operators and EvoPress as published, on the synthetic
fitness (tests/synthetic.py): every searching operator starts from one shared population, level
switches cross the coarse attention levels, and the LLM operator runs with the null backend."""

import json

import numpy as np
import pytest
from synthetic import synthetic_problem

from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.llm.backends import RandomBackend, make_backend
from selfprune.evolution.llm.operator import LLMOperator, LLMSettings
from selfprune.evolution.loop import Search, SearchConfig
from selfprune.evolution.operators.classic import gaussian_mutation
from selfprune.evolution.operators.seeds import MAX_PRIORS, importance_vector, level_switches, mlp_unit, prior_shapes
from selfprune.evolution.operators.types import Context
from selfprune.evolution.strategies import get_strategy, make_operator, strategy_config
from selfprune.options import SearchOptions


def space_of(layers=16, target=0.3, **kw):
    p = synthetic_problem(layers, **kw)
    return p, GenomeSpace.from_problem(p, target)


def ctx_of(space, profiles, init, seed=0):
    return Context(space=space, population=[], rng=np.random.default_rng(seed), profiles=profiles, init=init)


def operators():
    return {name: make_operator(name, RandomBackend() if name == "llm" else None, LLMSettings())
            for name in ("ga", "ga-levels", "random", "evopress", "llm")}


@pytest.mark.parametrize("init", ["seeded", "noise"])
def test_every_searching_operator_starts_from_the_same_population(init):
    p, sp = space_of()
    n = 10
    starts = {name: op.initial(ctx_of(sp, p.profiles, init), n) for name, op in operators().items()}
    ref = starts["ga"]
    heads = 4 if init == "seeded" else 1
    assert [q.origin for q in ref[:heads]] == (["uniform", "owl", "importance", "importance-strong"]
                                               if init == "seeded" else ["uniform"])
    for name, props in starts.items():
        assert len(props) == n, name
        # The LLM writes the filler itself; everything else is the shared start, genome for genome.
        same = heads if name == "llm" else n
        for a, b in zip(ref[:same], props[:same]):
            assert np.array_equal(np.asarray(a.vector), np.asarray(b.vector)) and a.origin == b.origin, name
    assert all(q.origin.startswith("llm-init") for q in starts["llm"][heads:])


def test_seeded_start_carries_the_priors():
    p, sp = space_of()
    priors = dict(prior_shapes(sp, p.profiles))
    assert set(priors) == {"uniform", "owl", "importance", "importance-strong"}
    L = sp.num_layers
    imp = importance_vector(sp, p.profiles, 0.6)
    # The most important block is pruned least, the least important most.
    assert imp[:L].argmin() == p.profiles["attn_importance"].argmax()
    assert imp[L:].argmax() == p.profiles["mlp_importance"].argmin()
    # Without profiles only uniform remains: the priors come from measurements, not from constants.
    assert [name for name, _ in prior_shapes(sp, {})] == ["uniform"]
    # The seeded start is better than noise on the synthetic problem (whose profiles are informative).
    seeded = [p.fitness(*sp.repair(q.vector)[0].arrays()) for q in make_operator("ga").initial(ctx_of(sp, p.profiles, "seeded"), 8)]
    noise = [p.fitness(*sp.repair(q.vector)[0].arrays()) for q in make_operator("ga").initial(ctx_of(sp, p.profiles, "noise"), 8)]
    assert min(seeded) < min(noise)


def test_level_switches_cross_levels_that_noise_rounds_away():
    p, sp = space_of()
    u = sp.uniform()
    rng = np.random.default_rng(0)
    unit = mlp_unit(sp)
    # One MLP step holds about as many parameters as a mean attention level step.
    attn_step_params = np.diff(sp.attn_levels).mean() * sp.attn_params[0]
    assert abs(unit * sp.mlp_params[0] - attn_step_params) <= np.diff(sp.mlp_levels).min() * sp.mlp_params[0]
    changed_attn = {"levels": 0, "gauss": 0}
    for _ in range(300):
        v, moves = level_switches(np.array(u.vector), sp, rng, 1)
        # Each switch lands on achievable levels: repair only fixes the budget, never a level.
        attn = v[: sp.num_layers]
        assert all(np.isclose(sp.attn_levels, a).any() for a in attn)
        assert abs(np.asarray(sp.weights) @ sp.expand(v) - sp.target) < 4 * sp.tolerance
        changed_attn["levels"] += sp.repair(v)[0].attn != u.attn
        g = gaussian_mutation(np.array(u.vector), rng, 0.05, 0.2)
        changed_attn["gauss"] += sp.repair(g)[0].attn != u.attn
    assert changed_attn["levels"] > changed_attn["gauss"]


def test_evopress_strategy_as_published():
    ev = get_strategy("evopress")
    big = ev.config(30, 20, 10, 10, None, init="seeded", stage_keep=(0.25, 0.25))
    assert big.mutation == 64 and big.crossover == 0 and big.population == 1 and big.initial == MAX_PRIORS == 5
    # Survivors 8 of 64, then 2 of 8, then 1 (the loop's elitist (1 + lambda) keeps the parent).
    assert big.stage_keep == pytest.approx((8 / 64, 2 / 8))
    small = ev.config(8, 4, 4, 4, 40, init="seeded")
    assert small.mutation == (40 - 5) // 4 and small.max_evals == 40
    # Random search keeps lambda = crossover + mutation.
    assert get_strategy("random").config(8, 4, 4, 4, 40, init="noise").mutation == 8


def test_ablation_operators_at_equal_evaluations():
    """EvoPress and the level-switch GA beat uniform and random search at the same evaluations."""
    results = {}
    for name in ("uniform", "random", "ga", "ga-levels", "evopress"):
        vals = []
        for seed in range(3):
            p, sp = space_of(num_stages=1, target=0.5)
            cfg = strategy_config(name, 8, 4, 4, 4, 40, seed=seed, init="seeded")
            r = Search(sp, p.fitness, make_operator(name), cfg, profiles=p.profiles).run()
            assert r.report["budget"]["total_evals"] == (1 if name == "uniform" else 40), name
            vals.append(r.best.fitness)
        results[name] = np.mean(vals)
    for name in ("ga", "ga-levels", "evopress"):
        assert results[name] < results["random"] < results["uniform"], name


def test_evopress_staged_selection_counts():
    p, sp = space_of(num_stages=3)
    cfg = strategy_config("evopress", 30, 20, 10, 10, None, seed=0, init="noise", stage_keep=(0.25, 0.25))
    r = Search(sp, p.fitness, make_operator("evopress"), cfg, profiles=p.profiles).run()
    evals = r.report["budget"]["evals"]
    gens = r.report["generations"]
    # Initial uniform on the last stage; then per generation at most 64 at stage 0, 8 at 1, 2 at 2.
    assert evals["0"] <= 64 * gens and evals["1"] <= 8 * gens and evals["2"] <= 1 + 2 * gens
    assert r.report["budget"]["total_evals"] <= 430 and evals["1"] > 0


def test_null_llm_backend_fills_templates_and_counts():
    p, sp = space_of(target=0.4)
    op = LLMOperator(make_backend("random"), settings=LLMSettings(share=1.0))
    r = Search(sp, p.fitness, op, SearchConfig(population=8, generations=3, crossover=4, mutation=4, seed=1),
               profiles=p.profiles).run()
    st = r.report["operator_stats"]
    assert st["backend"] == "random" and st["replies"] > 0
    assert st["valid"] == st["replies"] and not st["invalid"]  # random legal values always parse
    assert st["distinct"] + st["repeats"] + st["copies"] == st["valid"] and st["distinct"] > 0
    assert r.report["origins"]["llm-mutate"]["evaluated"] > 0


def test_llm_operator_on_a_model_with_fewer_layers_than_shape_points():
    # The prompt summarises depth in 5 points; 3 layers leave some points without a layer of their own.
    p, sp = space_of(layers=3, target=0.3)
    op = LLMOperator(make_backend("random"), settings=LLMSettings(share=1.0))
    r = Search(sp, p.fitness, op, SearchConfig(population=6, generations=2, crossover=2, mutation=2, seed=0),
               profiles=p.profiles).run()
    st = r.report["operator_stats"]
    assert st["valid"] == st["replies"] > 0 and st["distinct"] > 0
    assert np.isfinite(r.best.fitness)
    # The importance profile shown in the prompt stays digits 0-9, one per point.
    profile = op._importance(ctx_of(sp, p.profiles, "seeded"), "attn_importance", 5).split()
    assert len(profile) == 5 and all(d.isdigit() and len(d) == 1 for d in profile)


def test_null_llm_backend_resume_is_deterministic(tmp_path):
    p, sp = space_of(target=0.4)
    cfg = SearchConfig(population=6, generations=4, crossover=2, mutation=2, seed=5)

    def op():
        return LLMOperator(make_backend("random"), settings=LLMSettings(share=1.0))

    full = Search(sp, p.fitness, op(), cfg, profiles=p.profiles).run()
    out = tmp_path / "run"
    half = Search(sp, p.fitness, op(), SearchConfig(**{**cfg.to_json(), "generations": 2, "stage_keep": None}),
                  profiles=p.profiles, out_dir=out)
    half.run()
    resumed = Search(sp, p.fitness, op(), cfg, profiles=p.profiles, out_dir=out).run(resume=True)
    assert resumed.best.genome.key == full.best.genome.key
    assert [h["best"] for h in resumed.history] == [h["best"] for h in full.history]
    assert resumed.report["operator_stats"]["replies"] == full.report["operator_stats"]["replies"]
    lines = (out / "transcript.jsonl").read_text().splitlines()
    assert len(lines) == full.report["operator_stats"]["calls"] and json.loads(lines[0])["backend"] == "random"


def test_init_and_random_llm_options():
    assert SearchOptions().init == "seeded"
    assert SearchOptions(operator=["llm"], llm="random").llm == "random"
    with pytest.raises(ValueError):
        SearchOptions(init="zeros")


class Recording(RandomBackend):
    """Answers like a small model that copies the first example (uniform) every time, and records
    the prompts it was sent."""

    name = "copycat"

    def __init__(self, reply=None):
        self.prompts, self.reply = [], reply

    def chat(self, messages, n=1, **kw):
        self.prompts.append(messages[-1]["content"])
        if self.reply is None:
            return super().chat(messages, n=n, **kw)
        from selfprune.evolution.llm.backends import Reply

        return [Reply(self.reply) for _ in range(n)]


def test_example_copies_and_repeats_are_counted_and_dropped():
    p, sp = space_of(target=0.4)
    backend = Recording('{"attn": [40, 40, 40, 40, 40], "mlp": [40, 40, 40, 40, 40]}')  # the uniform example
    op = LLMOperator(backend, settings=LLMSettings(batch=3, retries=0))
    r = Search(sp, p.fitness, op, SearchConfig(population=10, generations=0, crossover=0, mutation=0), profiles=p.profiles).run()
    st = r.report["operator_stats"]
    assert st["valid"] == 6 and st["copies"] == 6 and st["distinct"] == 0 and st["fallbacks"] == 6
    assert "llm-init" not in r.report["origins"] and r.report["origins"]["fallback-init"]["proposed"] == 6
    assert '{"attn": [40, 40, 40, 40, 40], "mlp": [40, 40, 40, 40, 40]}' in backend.prompts[0]


def test_later_initial_batches_are_shown_what_was_proposed():
    p, sp = space_of(target=0.4)
    backend = Recording()  # random legal shapes
    op = LLMOperator(backend, settings=LLMSettings(batch=2, retries=0))
    Search(sp, p.fitness, op, SearchConfig(population=8, generations=0, crossover=0, mutation=0, seed=2), profiles=p.profiles).run()
    assert len(backend.prompts) == 2 and "Already proposed" not in backend.prompts[0]
    assert "Already proposed" in backend.prompts[1] and op.counters["distinct"] == 4


@pytest.mark.parametrize("init, shown", [("seeded", 4), ("noise", 1)])
def test_the_initial_prompt_shows_only_the_start_every_operator_gets(init, shown):
    # Under --init noise the GA starts from uniform and noise: the LLM's prompt then shows uniform alone.
    p, sp = space_of(target=0.4)
    backend = Recording()
    op = LLMOperator(backend, settings=LLMSettings(batch=8, retries=0))
    Search(sp, p.fitness, op, SearchConfig(population=10, generations=0, crossover=0, mutation=0, init=init), profiles=p.profiles).run()
    prompt = backend.prompts[0]
    examples = prompt.split("Example answers", 1)[1].split("Write a new shape", 1)[0]
    assert examples.count('{"attn"') == shown
    assert ("OWL" in examples) == (init == "seeded")
