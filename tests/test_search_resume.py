"""Resume safety: a checkpoint records the setup its fitness values come from (fitness, calibration,
metric, data hashes, LLM backend and settings) and a resume with another setup is refused in one
line with nothing overwritten; an unreadable checkpoint falls back to the previous one or is one
clear error."""

import json

import pytest
from synthetic import synthetic_problem

from selfprune.cli import main
from selfprune.errors import SelfpruneError
from selfprune.evolution.checkpoint import CHECKPOINT, PREVIOUS
from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.llm.backends import make_backend
from selfprune.evolution.llm.operator import LLMOperator, LLMSettings
from selfprune.evolution.loop import Search, SearchConfig
from selfprune.evolution.operators.classic import GAOperator
from selfprune.evolution.setup import SearchSetup
from selfprune.pruning.options import PruneOptions

CFG = SearchConfig(population=4, generations=2, crossover=2, mutation=2, seed=1)
PRUNE = {"calib": "lambada", "metric": "wanda-sp", "calib_samples": 32, "calib_seqlen": 256, "attn_granularity": "head",
         "mlp_multiple": 1, "bias_compensation": None}
SETUP = {"fitness": "kl", "fitness_samples": [2], "fitness_seqlen": 256, "seed": 0, "calib_sha256": "a" * 64,
         "fitness_sha256": "b" * 64, "dtype": "float32", "model": "default", "ratio": 0.3}


def search(out, op=None, cfg=CFG, **problem):
    p = synthetic_problem(12)
    sp = GenomeSpace.from_problem(p, 0.3)
    prune = PruneOptions(**{k: problem.get(k, v) for k, v in PRUNE.items()})
    setup = SearchSetup(prune=prune, **{**SETUP, **{k: v for k, v in problem.items() if k not in PRUNE}})
    return Search(sp, p.fitness, op or GAOperator(), cfg, profiles=p.profiles, out_dir=out, setup=setup)


@pytest.mark.parametrize("change, named", [
    ({"fitness": "ppl"}, "fitness"),
    ({"calib": "wikitext2"}, "calib"),
    ({"metric": "flap"}, "metric"),
    ({"bias_compensation": False}, "bias_compensation"),
    ({"fitness_samples": [4]}, "fitness_samples"),
    ({"fitness_sha256": "c" * 64}, "fitness_sha256"),
    ({"dtype": "bfloat16"}, "dtype"),
])
def test_resume_with_another_setup_is_refused(tmp_path, change, named):
    search(tmp_path).run()
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    with pytest.raises(SelfpruneError, match=f"made with {named} ") as err:
        search(tmp_path, cfg=SearchConfig(**{**CFG.to_json(), "generations": 4, "stage_keep": None}), **change).run(resume=True)
    assert "\n" not in str(err.value)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before  # nothing overwritten


def test_resume_with_another_llm_is_refused(tmp_path):
    search(tmp_path, LLMOperator(make_backend("random"))).run()
    with pytest.raises(SelfpruneError, match="made with llm_share 0.3, now 0.5"):
        search(tmp_path, LLMOperator(make_backend("random"), settings=LLMSettings(share=0.5))).run(resume=True)


def test_torn_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    full = search(None).run()
    search(tmp_path).run()
    assert (tmp_path / PREVIOUS).exists()
    prev_generation = json.loads((tmp_path / PREVIOUS).read_text())["generation"]
    (tmp_path / CHECKPOINT).write_text('{"version": 2, "generation": ')  # torn
    resumed = search(tmp_path).run(resume=True)
    assert "resuming from" in capsys.readouterr().out and prev_generation == CFG.generations - 1
    # The lost generation is redone, deterministically.
    assert resumed.best.genome.key == full.best.genome.key
    assert [h["best"] for h in resumed.history] == [h["best"] for h in full.history]


@pytest.mark.parametrize("damage", [b'{"version": 2, "generation": ', b"\xff\xfe\x00garbage"])
def test_a_resume_from_the_previous_checkpoint_keeps_it_good(tmp_path, damage):
    # The damaged file the resume fell back from must not be rotated into the previous slot.
    search(tmp_path).run()
    (tmp_path / CHECKPOINT).write_bytes(damage)
    search(tmp_path).run(resume=True)
    for name in (CHECKPOINT, PREVIOUS):
        assert json.loads((tmp_path / name).read_text())["version"] == 2


def test_unreadable_checkpoints_are_one_clear_error(tmp_path):
    search(tmp_path).run()
    (tmp_path / CHECKPOINT).write_text("not json")
    (tmp_path / PREVIOUS).write_text("[]")
    with pytest.raises(SelfpruneError, match="cannot resume: .* is not valid JSON .* is not a checkpoint"):
        search(tmp_path).run(resume=True)


def _cli(tmp_path, *extra):
    return main(["search", "default", "--ratio", "0.3", "--operator", "ga", "--out", str(tmp_path), "--resume",
                 "--quiet", *extra])


def test_cli_refuses_another_fitness_before_loading_the_model(tmp_path, capsys):
    """As reported: a GA run with --fitness kl, then --resume --fitness ppl reused KL values."""
    search(tmp_path, fitness="kl").run()
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    rc = _cli(tmp_path, "--fitness", "ppl")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert 'fitness "kl", now "ppl"' in err
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before and not (tmp_path / "config.json").exists()


def test_cli_refuses_another_dtype_before_loading_the_model(tmp_path, capsys):
    search(tmp_path).run()
    assert _cli(tmp_path, "--dtype", "bfloat16") == 2
    assert 'dtype "float32", now "bfloat16"' in capsys.readouterr().err


def test_cli_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / CHECKPOINT).write_text('{"version": 2, "gen')
    rc = _cli(tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "checkpoint.json is not valid JSON" in err
