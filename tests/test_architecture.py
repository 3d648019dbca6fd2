"""The seams of the package: public names, registries, option objects and the family table."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
import torch.nn.functional as F

import selfprune
from selfprune.cli import main
from selfprune.errors import SelfpruneError


def test_public_functions_stay_functions():
    # Importing every subpackage must not shadow the API's names (a module named like a function would).
    import selfprune.cli.prune  # noqa: F401
    import selfprune.evolution.search  # noqa: F401
    import selfprune.pruning.pipeline  # noqa: F401
    import selfprune.runner  # noqa: F401

    for name in ("prune", "search", "evaluate", "run", "load_pruned"):
        value = getattr(selfprune, name)
        assert callable(value) and not isinstance(value, types.ModuleType), name
    assert selfprune.PruneOptions().calib_samples == 32


def test_objectives_match_torch_losses():
    from selfprune.evolution.objectives import OBJECTIVES, get_objective

    torch.manual_seed(0)
    logits, dense = torch.randn(2, 7, 11), torch.randn(2, 7, 11).log_softmax(-1)
    targets = torch.randint(0, 11, (2, 7))
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
    kl = F.kl_div(logits.log_softmax(-1), dense, log_target=True, reduction="sum").item()
    assert get_objective("ppl").batch_sum(logits, targets) == pytest.approx(ce, rel=1e-5)
    assert get_objective("kl").batch_sum(logits, targets, dense) == pytest.approx(kl, rel=1e-4)
    assert get_objective("ppl").value(2.0) == pytest.approx(math.exp(2.0))
    assert {o.display for o in OBJECTIVES.values()} == {"perplexity", "KL to dense"}
    with pytest.raises(SelfpruneError, match="unknown fitness 'bleu'"):
        get_objective("bleu")


def test_registries_are_the_only_name_lists():
    from selfprune.evolution.objectives import OBJECTIVES
    from selfprune.evolution.strategies import STRATEGIES
    from selfprune.options import PruneOptions, SearchOptions
    from selfprune.pruning.metrics import METRICS

    assert set(PruneOptions.model_fields["metric"].annotation.__args__) == set(METRICS)
    assert set(SearchOptions.model_fields["fitness"].annotation.__args__) == set(OBJECTIVES)
    for name in STRATEGIES:
        assert SearchOptions(operator=[name]).operator == [name]
    with pytest.raises(Exception):
        PruneOptions(metric="taylor")


@pytest.mark.parametrize("name", ["ga", "evopress", "random", "uniform", "owl"])
def test_every_strategy_spends_the_same_budget(name):
    from synthetic import synthetic_problem

    from selfprune.evolution.genome import GenomeSpace
    from selfprune.evolution.loop import Search
    from selfprune.evolution.strategies import get_strategy

    problem = synthetic_problem(8)
    space = GenomeSpace.from_problem(problem, 0.3)
    strategy = get_strategy(name)
    result = Search(space, problem.fitness, strategy.make(None, None), strategy.config(6, 3, 2, 2, seed=0),
                    profiles=problem.profiles).run()
    evals = result.report["budget"]["total_evals"]
    assert evals == (1 if strategy.shape == "fixed" else 6 + 3 * 4)
    assert all("median" in h and h["median"] >= h["best"] for h in result.history)
    assert result.fitness_of(result.best.genome) == result.best.fitness


def test_prompts_name_the_fitness_being_minimised():
    """With KL as the fitness, the operator LLM is never told it is reading perplexities."""
    from synthetic import synthetic_problem
    from test_search_replies import Scripted

    from selfprune.evolution.genome import GenomeSpace
    from selfprune.evolution.llm.operator import LLMOperator
    from selfprune.evolution.loop import Search, SearchConfig

    problem = synthetic_problem(8)
    problem.fitness.display_name = "KL to dense"
    backend = Scripted(['{"a": 1, "b": 2, "take": "ABABA"}', '{"moves": [{"from": 1, "to": 2, "part": "mlp", "pct": 5}]}'])
    prompts = []
    backend.chat = (lambda chat: lambda messages, **kw: (prompts.append(messages[-1]["content"]), chat(messages, **kw))[1])(backend.chat)
    op = LLMOperator(backend)
    op.s.share = 1.0
    Search(GenomeSpace.from_problem(problem, 0.3), problem.fitness, op,
           SearchConfig(population=4, generations=1, crossover=2, mutation=2)).run()
    later = [p for p in prompts if "Candidate pruning shapes" in p or "Moves tried" in p]
    assert later and all("KL to dense" in p and "perplexity" not in p for p in later)


def test_family_table_drives_the_checkpoint_anatomy(tiny_model, tmp_path):
    from selfprune.models.families import BY_MODEL_TYPE, FAMILIES
    from selfprune.models.remote_code import modeling_selfprune
    from selfprune.options import PruneOptions
    from selfprune.pruning.pipeline import prune_model

    assert len(BY_MODEL_TYPE) == sum(len(f.model_types) for f in FAMILIES)
    for family in FAMILIES:  # the checkpoint's modeling code builds every family's class on demand
        cls = getattr(modeling_selfprune, "SelfPruned" + family.causal_lm_class)
        assert cls.__name__ == "SelfPruned" + family.causal_lm_class
    with pytest.raises(AttributeError):
        modeling_selfprune.SelfPrunedNoSuchModel
    result = prune_model(tiny_model("qwen2"), None, ratio=0.4, options=PruneOptions(metric="magnitude"), progress=False)
    assert result.model.config.selfprune["anatomy"] == BY_MODEL_TYPE["qwen2"].anatomy()


def test_search_cli_runs_several_operators_on_one_budget(tmp_path, default_model_dir, capsys):
    out = tmp_path / "search"
    assert main(["search", "default", "--ratio", "0.3", "--operator", "uniform,ga", "--max-evals", "3",
                 "--population", "2", "--generations", "1", "--crossover", "0", "--mutation", "1",
                 "--calib-samples", "2", "--calib-seqlen", "64", "--fitness-samples", "1", "--fitness-seqlen", "64",
                 "--quiet", "--out", str(out)]) == 0
    for name in ("uniform", "ga"):
        report = json.loads((out / name / "report.json").read_text())
        assert report["operator"] == name and report["budget"]["total_evals"] <= 3
    best = json.loads((out / "best.json").read_text())
    ga = json.loads((out / "ga" / "best.json").read_text())
    assert best["operator"] in ("uniform", "ga") and best["fitness"] <= ga["fitness"]
    # The rates file says how it was made, so pruning with it alone keeps the heads and channels the search scored.
    from selfprune.cli.prune import search_settings

    made_with = best["made_with"]
    assert made_with == ga["made_with"] and (made_with["model"], made_with["ratio"], made_with["seed"]) == ("default", 0.3, 0)
    # report.json records the same setup in full: what the fitness values were measured on, and with what.
    setup = json.loads((out / "ga" / "report.json").read_text())["setup"]
    assert {k: setup[k] for k in made_with} == made_with and len(setup["fitness_sha256"]) == 64
    alone = tmp_path / "elsewhere" / "rates.json"
    alone.parent.mkdir()
    alone.write_text(json.dumps(best))
    prune, seed, source = search_settings(str(alone))
    assert (prune["calib_samples"], prune["calib_seqlen"], prune["metric"], seed) == (2, 64, "wanda-sp", 0)
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["search"]["operator"] == ["uniform", "ga"] and config["versions"]["torch"]
    assert "best operator" in capsys.readouterr().out


# The layers of the package, lowest first; a module may import its own layer and those below.
LAYERS = [
    ("errors", "atomic", "versions", "options", "results"),
    ("outputs", "data"),
    ("models",),
    ("pruning",),
    ("eval", "export"),
    ("evolution", "recover"),
    ("report", "serve", "stages"),
    ("config",),
    ("preflight",),
    ("runner",),
    ("api",),
    ("cli", "__main__"),
]


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if module.count(".") else None
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def test_imports_point_down():
    """No module imports one of a higher layer, not even inside a function: the lazy ``selfprune`` ->
    ``api`` is the only exception."""
    import ast
    from pathlib import Path

    root = Path(selfprune.__file__).parent
    upward, unplaced = [], []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "selfprune":
            continue
        if _layer(module) is None:
            unplaced.append(module)
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                if name.startswith("selfprune.") and _layer(name) > _layer(module):
                    upward.append(f"{module}:{node.lineno} -> {name}")
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"
    assert not upward, upward


def test_importing_the_pruner_loads_no_search_evaluation_or_export():
    code = ("import sys, selfprune.pruning.pipeline; "
            "print(' '.join(m for m in sys.modules if m.startswith('selfprune.')))")
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "selfprune.pruning.pipeline" in loaded
    assert not [m for m in loaded if m.split(".")[1] in ("evolution", "eval", "export", "recover", "report", "cli")]
