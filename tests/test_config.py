"""The typed run config: presets, YAML and flag precedence, and bad configs that fail with the
field named, exit code 2 and nothing written."""

import argparse

import pytest
import yaml

from selfprune.cli import build_parser, main
from selfprune.config import PRESETS, RunConfig, field_paths, load_config, resolve
from selfprune.errors import SelfpruneError


def test_defaults_are_the_quick_preset_and_paper_sets_the_papers_budget():
    quick = resolve({"model": "default", "ratio": 0.3})
    assert quick.preset == "quick" and quick.search.population < 30 and quick.eval.limit is not None
    paper = resolve({"model": "default", "ratio": 0.3, "preset": "paper"})
    s = paper.search
    assert (s.population, s.generations, s.crossover, s.mutation) == (30, 20, 10, 10)
    assert s.operator == ["llm"] and s.llm == "self"  # the model prunes itself
    # The fitness the study chose (docs/search.md), not a cheaper one that ranks worse.
    assert (s.fitness_samples, s.fitness_seqlen, s.stage_keep) == (quick.search.fitness_samples, 512, None)
    assert paper.eval.limit is None and len(paper.eval.tasks) == 7
    # Wikipedia calibration and fitness text, as the paper's WikiText-2 fitness; the quick default stays LAMBADA.
    assert (paper.prune.calib, quick.prune.calib) == ("wiki-passages", "lambada")
    # A field given explicitly wins over the preset.
    assert resolve({"model": "m", "ratio": 0.3, "preset": "paper", "search": {"population": 5}}).search.population == 5


def test_yaml_round_trip_and_flags_override_yaml(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: default\nratio: 0.25\nsearch:\n  population: 6\n  operator: [ga, evopress]\n"
                        "eval:\n  tasks: piqa\n")
    args = build_parser().parse_args(["run", "--config", str(cfg_file), "--ratio", "0.4", "--generations", "2",
                                      "--no-bench", "--shapes", "1x64,2x32", "--limit", "none"])
    from selfprune.cli.options import overrides_from

    cfg = load_config(cfg_file, overrides_from(args))
    assert cfg.ratio == 0.4 and cfg.search.population == 6 and cfg.search.generations == 2
    assert cfg.search.operator == ["ga", "evopress"] and cfg.eval.tasks == ["piqa"]
    assert cfg.bench.enabled is False and cfg.bench.shapes == [(1, 64), (2, 32)] and cfg.eval.limit is None
    again = resolve(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_dump_config_writes_the_resolved_yaml_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "resolved.yaml"
    assert main(["run", "default", "--ratio", "0.3", "--preset", "paper", "--out", str(tmp_path / "run"),
                 "--dump-config", str(out)]) == 0
    data = yaml.safe_load(out.read_text())
    assert data["search"]["population"] == 30 and data["output"]["dir"] == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    capsys.readouterr()
    assert main(["run", "--config", str(out), "--dump-config", "-"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == data


def test_every_config_field_has_a_flag_and_every_option_of_the_other_subcommands_is_a_field():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run_flags = {s for a in sub.choices["run"]._actions for s in a.option_strings}
    from selfprune.cli.options import flag_for
    from selfprune.cli.run import POSITIONAL

    for path in field_paths():
        assert path in POSITIONAL or flag_for(path) in run_flags, path
    # Options of the other subcommands that a run sets itself: it searches for the rates, benches
    # against the model it pruned, writes its own JSON and keeps the search's files in DIR/search.
    # eval's --protocol only fills eval fields (a run's config sets those fields itself).
    own = {"--rates", "--baseline", "--json", "--resume", "--protocol", "--help", "-h"}
    for name in ("prune", "search", "eval", "bench"):
        if name not in sub.choices:
            continue
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings if s.startswith("--")}
        missing = sorted(f for f in flags - own if f not in run_flags and f.replace("--no-", "--") not in run_flags)
        assert not missing, f"`selfprune {name}` options without a run config field: {missing}"


@pytest.mark.parametrize("argv, yaml_text, field", [
    ([], "model: default\nratio: 0.3\nsearch:\n  populaton: 4\n", "search.populaton"),  # unknown field
    ([], "model: default\nratio: 0.3\nbench: {repeats: many}\n", "bench.repeats"),  # wrong type
    (["--population", "abc"], "model: default\nratio: 0.3\n", "search.population"),  # wrong type, from a flag
    (["--ratio", "1.5"], "model: default\n", "ratio"),  # out of range
    (["--llm", "self", "--operator", "ga"], "model: default\nratio: 0.3\n", "search.llm"),  # an LLM but no llm operator
    (["--min-rate", "0.5", "--max-rate", "0.4"], "model: default\nratio: 0.3\n", "search.min_rate"),
    (["--fitness-samples", "2,4", "--stage-keep", "0.5,0.5"], "model: default\nratio: 0.3\n", "search.stage_keep"),
    (["--seqlen", "100000"], "model: default\nratio: 0.3\n", "eval.seqlen"),  # longer than the model's context
    (["--more-seqlens", "128,100000"], "model: default\nratio: 0.3\n", "eval.more_seqlens"),  # so is one more length
    (["--tasks", "piqa,nope"], "model: default\nratio: 0.3\n", "eval.tasks"),
    ([], "ratio: 0.3\n", "model"),  # required
    ([], "model: default\nratio: 0.3\noutput: {}\n", "output.dir"),  # no run directory
])
def test_bad_config_names_the_field_exits_2_and_writes_nothing(tmp_path, capsys, argv, yaml_text, field):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "run"
    out_args = [] if field == "output.dir" else ["--out", str(out)]
    assert main(["run", "--config", str(cfg), *out_args, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfprune: error:") and f"'{field}'" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def test_a_non_empty_run_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", "default", "--ratio", "0.3", "--out", str(out)]) == 2
    assert "files selfprune did not write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_invalid_yaml_and_unknown_preset_are_user_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(SelfpruneError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(SelfpruneError, match="preset"):
        resolve({"model": "m", "ratio": 0.3, "preset": "huge"})
    assert set(PRESETS) == {"quick", "paper", "paper-recover", "evopress"}
    recover = resolve({"model": "m", "ratio": 0.3, "preset": "paper-recover"})
    assert recover.recover.enabled and recover.search.population == resolve(
        {"model": "m", "ratio": 0.3, "preset": "paper"}).search.population
    assert RunConfig.model_fields["model"].is_required()


def test_preflight_falls_back_to_an_offline_text_only_when_asked_for_auto(tmp_path, default_model_dir,
                                                                          wikitext_test_path):
    from selfprune.preflight import check_run as preflight

    base = {"model": "default", "ratio": 0.3, "output": {"dir": str(tmp_path / "run")}, "eval": {"tasks": "piqa"}}
    # Offline (the test session has no hub): `auto` scores the shipped CoQA stories, says so, and
    # never calls them WikiText-2 ...
    pre = preflight(resolve({**base, "eval": {"ppl": "auto", "tasks": "piqa"}}))
    assert pre.eval_text.source.startswith("CoQA stories") and "WikiText" not in pre.eval_text.source
    assert "CoQA" in pre.warnings[0] and pre.tasks == ["piqa"] and len(pre.eval_text.text) > 500_000
    # ... an explicit source must load, and a local file does.
    with pytest.raises(SelfpruneError, match="WikiText-2"):
        preflight(resolve({**base, "eval": {"ppl": "wikitext2"}}))
    # ... and a calibration text that is the evaluation text is refused.
    with pytest.raises(SelfpruneError, match="evaluation text itself"):
        preflight(resolve({**base, "prune": {"calib": str(wikitext_test_path)}, "eval": {"ppl": str(wikitext_test_path)}}))
    # ... nor one that holds part of it (a slice the hash check would miss), named with the numbers.
    wiki = wikitext_test_path.read_text(encoding="utf-8")
    part = tmp_path / "wiki-first-half.txt"
    part.write_text(wiki[: len(wiki) // 2], encoding="utf-8")
    with pytest.raises(SelfpruneError, match=r"contains part of the evaluation text \(it shares [\d,]+ of .* \((4|5)\d\.\d\d%\)"):
        preflight(resolve({**base, "prune": {"calib": str(part)}, "eval": {"ppl": str(wikitext_test_path)}}))
    pre = preflight(resolve({**base, "prune": {"calib": "wiki-passages"}, "eval": {"ppl": str(wikitext_test_path)}}))
    assert pre.eval_text.source == str(wikitext_test_path.resolve()) and not pre.warnings
    # The Wikipedia passages share a few sequences with the CoQA stories (whose Wikipedia part quotes the same
    # articles): said, with the numbers, and not refused; LAMBADA shares none.
    pre = preflight(resolve({**base, "prune": {"calib": "wiki-passages"}, "eval": {"ppl": "coqa", "tasks": "piqa"}}))
    (line,) = pre.warnings
    assert "'wiki-passages' shares" in line and "13-word sequences (0.1" in line
    assert not preflight(resolve({**base, "eval": {"ppl": "coqa", "tasks": "piqa"}})).warnings
    pre = preflight(resolve({**base, "eval": {"ppl": str(wikitext_test_path)}}))
    assert pre.eval_text.source == str(wikitext_test_path.resolve()) and not pre.warnings
    assert not (tmp_path / "run").exists()


def test_the_evopress_preset_runs_evopress_as_its_repository_does():
    from selfprune.evolution.strategies import strategy_config

    s = resolve({"model": "m", "ratio": 0.3, "preset": "evopress"}).search
    assert (s.operator, s.fitness, s.fitness_samples, s.max_evals) == (["evopress"], "kl", [2, 8, 32], 430)
    cfg = strategy_config("evopress", s.population, s.generations, s.crossover, s.mutation, s.max_evals,
                          stage_keep=tuple(s.stage_keep))
    # lambda 64 offspring per generation; 8 of them survive the first stage, 2 the second, 1 the last.
    assert cfg.mutation == 64 and cfg.population == 1 and cfg.max_evals == 430
    assert [round(k * n) for k, n in zip(cfg.stage_keep, (64, 8))] == [8, 2]
