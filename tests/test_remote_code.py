"""What a model folder may execute: a pruned checkpoint runs only the installed selfprune code, any
other code a folder ships runs only with --trust-remote-code, and a broken config.json is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfprune.api import load_pruned
from selfprune.cli import main
from selfprune.errors import SelfpruneError
from selfprune.models.loading import load_model
from selfprune.models.remote_code import MODELING_FILE, SHIPPED_SHA256, sha256

IDS = torch.tensor([[1, 5, 9, 200, 3000, 7, 42, 11]])


def _marker_code(marker) -> str:
    return f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "selfprune", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("selfprune: error:"), stderr
    return lines[0]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def dense_dir(tokenizer, tmp_path_factory):
    """A tiny random Llama with the default model's tokenizer (so real text can be scored)."""
    torch.manual_seed(0)
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = tmp_path_factory.mktemp("dense") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pruned(dense_dir, tokenizer, tmp_path_factory):
    """(checkpoint directory, logits of the pruned model before it was saved)."""
    from selfprune.options import PruneOptions
    from selfprune.pruning.checkpoint import save_pruned
    from selfprune.pruning.pipeline import prune_model

    model = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
    result = prune_model(model, None, ratio=0.4, options=PruneOptions(metric="magnitude"), progress=False)
    out = save_pruned(result.model, tokenizer, tmp_path_factory.mktemp("pruned") / "ckpt")
    with torch.no_grad():
        return out, result.model(IDS).logits


@pytest.fixture
def edited(pruned, tmp_path):
    """A copy of the checkpoint whose modeling_selfprune.py also writes a marker file when imported."""
    copy = tmp_path / "edited"
    shutil.copytree(pruned[0], copy)
    marker = tmp_path / "marker"
    with open(copy / "modeling_selfprune.py", "a") as f:
        f.write(_marker_code(marker))
    return copy, marker


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    return path


def test_every_shipped_modeling_file_is_recorded():
    assert sha256(MODELING_FILE) in SHIPPED_SHA256


def test_pruned_checkpoint_loads_without_its_own_code(pruned, edited, capsys):
    path, expected = pruned
    edited_path, marker = edited
    with torch.no_grad():
        ours = load_pruned(str(path))[0](IDS).logits
        assert capsys.readouterr().err == ""  # the shipped file: nothing to say
        for loaded, _ in (load_pruned(str(edited_path)), load_model(str(edited_path), trust_remote_code=True)):
            assert type(loaded).__module__ == "selfprune.models.remote_code.modeling_selfprune"
            assert torch.equal(loaded(IDS).logits, expected)
    assert torch.equal(ours, expected)
    assert not marker.exists()
    notes = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(notes) == 2 and all("differs from the modeling file selfprune ships" in n and "not executed" in n
                                   for n in notes), notes


def test_eval_of_an_edited_checkpoint_scores_like_the_original(pruned, edited, text_file, tmp_path, capsys):
    scores = {}
    for name, path in (("original", pruned[0]), ("edited", edited[0])):
        out = tmp_path / f"{name}.json"
        rc = main(["eval", str(path), "--ppl", str(text_file), "--seqlen", "32", "--max-windows", "2",
                   "--tasks", "none", "--device", "cpu", "--json", str(out)])
        assert rc == 0
        scores[name] = json.loads(out.read_text())["perplexity"]["ppl"]
    assert scores["edited"] == scores["original"]
    assert not edited[1].exists()
    assert "not executed" in capsys.readouterr().err


def test_stock_transformers_still_loads_the_checkpoint(pruned):
    path, expected = pruned
    stock = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(stock).__module__ != "selfprune.models.remote_code.modeling_selfprune"  # the checkpoint's own copy
    with torch.no_grad():
        assert torch.equal(stock(IDS).logits, expected)


def _with_auto_map(src, dst, marker, selfprune_record=None, auto_map=None):
    """A copy of the dense model whose config asks transformers to build it from evil.py."""
    shutil.copytree(src, dst)
    (dst / "evil.py").write_text(
        "from transformers import LlamaForCausalLM\n" + _marker_code(marker)
        + "\nclass EvilForCausalLM(LlamaForCausalLM):\n    pass\n"
    )
    config = json.loads((dst / "config.json").read_text())
    config["auto_map"] = auto_map or {"AutoModelForCausalLM": "evil.EvilForCausalLM"}
    if selfprune_record is not None:
        config["selfprune"] = selfprune_record
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("record, auto_map", [
    (None, None),  # a dense model with code of its own
    ({}, None),  # a "selfprune" key alone does not make the code ours
    ({}, {"AutoModelForCausalLM": "modeling_selfprune.SelfPrunedNoSuchClass"}),
    ({}, {"AutoModelForCausalLM": "modeling_selfprune.SelfPrunedLlamaForCausalLM",
          "AutoConfig": "evil.EvilConfig"}),
    ({}, {"AutoModelForCausalLM": "someone/repo--modeling_selfprune.SelfPrunedLlamaForCausalLM"}),
])
def test_foreign_code_is_refused_without_the_flag(dense_dir, tmp_path, record, auto_map):
    marker = tmp_path / "marker"
    folder = _with_auto_map(dense_dir, tmp_path / "model", marker, record, auto_map)
    with pytest.raises(SelfpruneError, match="asks to run its own Python code.*pass --trust-remote-code"):
        load_model(str(folder))
    assert not marker.exists()


def test_foreign_code_runs_only_with_the_flag(dense_dir, text_file, tmp_path):
    marker = tmp_path / "marker"
    folder = _with_auto_map(dense_dir, tmp_path / "model", marker)
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules")}  # where transformers copies the code it runs
    eval_args = ("eval", folder, "--ppl", text_file, "--seqlen", "32", "--max-windows", "1", "--tasks", "none",
                 "--device", "cpu")

    refused = _cli(*eval_args, env=env)
    assert refused.returncode == 2
    line = _one_error_line(refused.stderr)
    assert "evil.EvilForCausalLM" in line and "--trust-remote-code" in line
    assert not marker.exists()
    refused = _cli("search", folder, "--ratio", "0.3", "--out", tmp_path / "search", env=env)
    assert refused.returncode == 2 and "--trust-remote-code" in _one_error_line(refused.stderr)
    assert not marker.exists() and not (tmp_path / "search").exists()

    accepted = _cli(*eval_args, "--trust-remote-code", env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert "perplexity" in accepted.stdout
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("content, problem", [("{}", "names no model_type"),
                                              ('{"model_type": "llama",', "not a readable JSON config")])
def test_broken_config_is_one_line(dense_dir, tmp_path, content, problem):
    folder = tmp_path / "model"
    shutil.copytree(dense_dir, folder)
    (folder / "config.json").write_text(content)
    for args in (("prune", folder, "--ratio", "0.3", "--out", tmp_path / "out"),
                 ("search", folder, "--ratio", "0.3", "--out", tmp_path / "search")):
        result = _cli(*args)
        assert result.returncode == 2, result.stderr
        line = _one_error_line(result.stderr)
        assert problem in line and "config.json" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "search").exists()
