"""User mistakes end as one line on stderr naming the problem, exit code 2, no traceback, and,
where the input allows, before the model loads and with nothing written."""

from __future__ import annotations

import json
import math

import pytest

from selfprune.cli import main
from selfprune.errors import SelfpruneError

BINARY = bytes(range(256)) * 8  # 0x80 and up are no UTF-8 on their own


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, default_model_dir):
    """A tiny Llama (3 layers) saved with the default model's tokenizer, its context long enough for
    the default sequence lengths (only the mistake under test may fail). Read only."""
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("dense")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = tiny_config("llama")
    config.vocab_size, config.max_position_embeddings = len(tokenizer), 4096
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def binary_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(BINARY)
    return path


@pytest.fixture(autouse=True)
def _no_progress_bars():
    # The model loader's progress bars go to stderr, which must hold the error line alone.
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any command loads a model: the mistake must be caught before."""
    import selfprune.api
    import selfprune.models
    import selfprune.models.loading
    import selfprune.runner

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was caught")

    for module in (selfprune.api, selfprune.models, selfprune.models.loading, selfprune.runner):
        monkeypatch.setattr(module, "load_model", load_model)


def fails(capsys, *argv) -> str:
    """The one error line of ``selfprune ARGV``, which must exit with code 2."""
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured.err
    assert "Traceback" not in captured.err
    assert len(lines) == 1 and lines[0].startswith("selfprune: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("command", ["run", "search"])
def test_config_file_not_text_or_not_a_mapping(command, no_model_load, dense_dir, binary_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = [command, dense_dir, "--ratio", "0.3", "--out", out, "--config"]
    assert "is not UTF-8 text" in fails(capsys, *args, binary_file)
    listed = tmp_path / "list.yaml"
    listed.write_text("- prune\n- search\n")
    assert "must hold a mapping of fields, not a list" in fails(capsys, *args, listed)
    odd_preset = tmp_path / "preset.yaml"
    odd_preset.write_text("preset: [paper]\n")
    assert "unknown preset" in fails(capsys, *args, odd_preset)
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "search"])
def test_binary_calib_fails_before_anything_is_written(command, no_model_load, dense_dir, binary_file, tmp_path, capsys):
    out = tmp_path / "out"
    line = fails(capsys, command, dense_dir, "--ratio", "0.3", "--out", out, "--calib", binary_file)
    assert "'prune.calib'" in line and "is not UTF-8 text" in line
    assert not (out / "config.json").exists() and not any(out.glob("**/*"))


def test_binary_calib_for_prune(no_model_load, dense_dir, binary_file, tmp_path, capsys):
    from selfprune.data.calibration import calibration_text, check_calib

    line = fails(capsys, "prune", dense_dir, "--ratio", "0.3", "--out", tmp_path / "out", "--calib", binary_file)
    assert "is not UTF-8 text" in line and not (tmp_path / "out").exists()
    # The read itself, wherever it happens, says what is wrong.
    with pytest.raises(SelfpruneError, match="is not UTF-8 text"):
        calibration_text(str(binary_file))
    # The check before loading: missing, binary and empty files; named sources and real text pass.
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    text = tmp_path / "text.txt"
    text.write_text("Some calibration text.\n")
    for path, problem in ((tmp_path / "missing.txt", "nor a text file"), (binary_file, "not UTF-8"),
                          (empty, "is empty"), (tmp_path, "nor a text file")):
        with pytest.raises(SelfpruneError, match=f"^--calib: .*{problem}"):
            check_calib(str(path))
    check_calib("lambada")
    check_calib(str(text))


def test_eval_json_directory_fails_before_loading(no_model_load, dense_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("A few words to score.\n" * 20)
    folder = tmp_path / "results"
    folder.mkdir()
    line = fails(capsys, "eval", dense_dir, "--ppl", text, "--seqlen", "16", "--json", folder)
    assert "is a directory" in line and "eval.json" in line
    assert not any(folder.iterdir())


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_options_are_refused(value, no_model_load, dense_dir, tmp_path, capsys):
    out = tmp_path / "out"
    line = fails(capsys, "search", dense_dir, "--ratio", "0.3", "--out", out, f"--llm-timeout={value}")
    assert "--llm-timeout" in line and "finite" in line
    line = fails(capsys, "run", dense_dir, "--ratio", "0.3", "--out", out, "--recover", f"--recover-lr={value}")
    assert "'recover.lr'" in line and "finite" in line
    assert not out.exists()


def test_every_float_option_refuses_inf_and_nan():
    from selfprune.cli.options import field_info, flag_for
    from selfprune.config import field_paths, section_options
    from selfprune.recover.options import RecoverOptions

    floats = [path for path, parts in field_paths().items()
              if len(parts) == 2 and "float" in str(field_info(parts).annotation)]
    assert {"search.llm_timeout", "search.llm_share", "search.min_rate", "search.stage_keep", "recover.lr"} <= set(floats)
    for path in floats:
        section, name = path.split(".")
        for bad in (math.inf, math.nan):
            value = [bad] if name == "stage_keep" else bad
            with pytest.raises(SelfpruneError, match=f"option {flag_for(path)}: .*finite"):
                section_options(section, {name: value})
    recover_floats = [name for name, info in RecoverOptions.model_fields.items() if "float" in str(info.annotation)]
    assert {"warmup", "weight_decay", "grad_clip", "temperature", "lora_alpha", "lr"} <= set(recover_floats)
    for name in recover_floats:
        for bad in (math.inf, -math.inf, math.nan):
            with pytest.raises(SelfpruneError, match=f"field '{name}': .*finite"):
                RecoverOptions.checked(**{name: bad})


def _recover_parser():
    import argparse

    from selfprune.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["recover"]


def test_every_recover_option_is_a_flag_with_the_same_default(tmp_path):
    from selfprune.cli.recover import options_from_args
    from selfprune.recover.options import RecoverOptions

    actions = {a.dest: a for a in _recover_parser()._actions}
    for name, info in RecoverOptions.model_fields.items():
        assert name in actions, f"RecoverOptions.{name} has no `selfprune recover` flag"
        assert f"--{name.replace('_', '-')}" in actions[name].option_strings
        assert actions[name].default == info.default, name
        assert type(actions[name].default) is type(info.default), name
    # The flags scripts and docs use keep their names.
    flags = {s for a in actions.values() for s in a.option_strings}
    assert {"--tokens", "--grad-accum", "--lr", "--warmup", "--weight-decay", "--heldout-blocks", "--eval-every",
            "--save-every", "--state-dir", "--resume", "--keep-state", "--gradient-checkpointing", "--lora-r",
            "--lora-alpha", "--lora-dropout", "--out", "--teacher", "--json", "--trust-remote-code"} <= flags
    # No flag given: the options are RecoverOptions' defaults, with the state beside the output.
    out = tmp_path / "rec"
    given = _recover_parser().parse_args(["pruned", "--out", str(out)])
    assert options_from_args(given) == RecoverOptions(state_dir=f"{out}.state")
    given = _recover_parser().parse_args(["pruned", "--out", str(out), "--tokens", "1.5M", "--lr", "none",
                                          "--no-progress", "--eval-every", "0", "--method", "lora-kd"])
    opts = options_from_args(given)
    assert (opts.tokens, opts.lr, opts.progress, opts.eval_every, opts.method) == (1_500_000, None, False, 0, "lora-kd")


@pytest.mark.parametrize("argv, flag, problem", [
    (["--warmup", "1.5"], "--warmup", "less than 1"),
    (["--seqlen", "1"], "--seqlen", "greater than or equal to 2"),
    (["--grad-accum", "2.5"], "--grad-accum", "integer"),
    (["--tokens", "lots"], "--tokens", "not a token count"),
    (["--lr", "0"], "--lr", "greater than 0"),
    (["--lora-dropout", "inf"], "--lora-dropout", "finite"),
    (["--min-lr-ratio", "1.5"], "--min-lr-ratio", "less than or equal to 1"),
])
def test_bad_recover_option_fails_in_one_line_naming_the_flag(argv, flag, problem, no_model_load, dense_dir,
                                                              tmp_path, capsys):
    out = tmp_path / "rec"
    line = fails(capsys, "recover", dense_dir, "--out", out, *argv)
    assert f"option {flag}: " in line and problem in line, line
    assert not out.exists() and not (tmp_path / "rec.state").exists()


def test_recover_resume_needs_a_state_dir():
    from selfprune.recover import recover
    from selfprune.recover.options import RecoverOptions

    with pytest.raises(SelfpruneError, match="field 'state_dir': resume needs"):
        RecoverOptions.checked(resume=True)
    with pytest.raises(SelfpruneError, match="field 'state_dir': resume needs"):
        recover("no-such-checkpoint", resume=True)  # checked before anything loads
    with pytest.raises(SelfpruneError, match="unknown recovery option.*warmpu"):
        recover("no-such-checkpoint", warmpu=0.1)
    with pytest.raises(SelfpruneError, match="field 'warmup'"):
        recover("no-such-checkpoint", options=RecoverOptions().model_copy(update={"warmup": 2.0}))


def test_report_names_where_the_json_breaks(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"search": "unterminated')
    line = fails(capsys, "report", tmp_path)
    assert "Unterminated string starting at line 1, column 12" in line and "at at" not in line
    (tmp_path / "results.json").write_text('{"search": {}}')
    assert "lists no search operators" in fails(capsys, "report", tmp_path)
    (tmp_path / "results.json").write_text('{"search": {"operators": {"llm": {"files": {"history.json": "h.json"}}}}}')
    (tmp_path / "h.json").write_bytes(BINARY)
    assert "h.json' is not UTF-8 text" in fails(capsys, "report", tmp_path)
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("rates, problem", [
    ("[0.1, NaN, 0.2]", "rate nan for layer 1 is outside [0, 1]"),
    ("[0.1, 0.2, 1.5]", "rate 1.5 for layer 2 is outside [0, 1]"),
    ('[{"attn": -0.1, "mlp": 0.2}]', "rate -0.1 for layer 0 is outside [0, 1]"),
    ("[0.1, Infinity, 0.2]", "rate inf for layer 1 is outside [0, 1]"),
])
def test_rates_out_of_range_fail_at_read(rates, problem, no_model_load, dense_dir, tmp_path, capsys):
    path = tmp_path / "rates.json"
    path.write_text(rates)
    out = tmp_path / "out"
    line = fails(capsys, "prune", dense_dir, "--rates", path, "--out", out)
    assert f"rates file '{path}': {problem}" in line
    assert not out.exists()


def test_rates_for_another_layer_count(dense_dir, tmp_path):
    from selfprune import prune
    from selfprune.pruning.pipeline import check_rates_layers, parse_rates

    two = parse_rates([0.1, 0.2])
    with pytest.raises(SelfpruneError, match="--rates gives 2 attention rates but the model has 3 layers"):
        check_rates_layers(two, dense_dir)
    check_rates_layers(parse_rates([0.1, 0.2, 0.3]), dense_dir)
    multimodal = tmp_path / "mm"
    multimodal.mkdir()
    (multimodal / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 4}}))
    with pytest.raises(SelfpruneError, match="the model has 4 layers"):
        check_rates_layers(two, multimodal)
    check_rates_layers(two, "HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id: checked once loaded
    # The API, after loading, says the same in its own words.
    with pytest.raises(SelfpruneError, match="got 2 rates for a model with 3 layers"):
        prune(str(dense_dir), rates=[0.1, 0.2], metric="magnitude", progress=False)
