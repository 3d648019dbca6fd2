"""`selfprune prune` end to end on the default model, and its answers to bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from selfprune.models import get_adapter, load_model


def selfprune(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "selfprune", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_prune_default_end_to_end(tmp_path, default_model):
    out = tmp_path / "pruned"
    result = selfprune("prune", "default", "--ratio", "0.3", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "parameters: 134,515,008 ->" in result.stdout and "removed" in result.stdout
    summary = json.loads((out / "selfprune_summary.json").read_text())
    assert 0.28 < summary["achieved_ratio_prunable"] < 0.32
    pruned, tokenizer = load_model(str(out))
    assert sum(p.numel() for p in pruned.parameters()) == summary["params_after"]
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(pruned(ids).logits).all()


def test_default_model_removal_equals_masking(default_model):
    """Physically removing heads/channels of the real default model equals zeroing them."""
    from test_prune import zero_pruned_units

    from selfprune.pruning.apply import pruned_view
    from selfprune.pruning.importance import compute_importance
    from selfprune.pruning.pipeline import calibration_blocks
    from selfprune.pruning.plan import make_plan

    model, tokenizer = default_model
    adapter = get_adapter(model)
    scores = compute_importance(adapter, calibration_blocks(tokenizer, samples=2, seqlen=64), "wanda-sp", progress=False)
    n = adapter.num_layers
    attn = [0.0, 1.0] + [0.3, 0.6] * ((n - 2) // 2)
    mlp = [0.5, 0.2] + [1.0, 0.4] * ((n - 2) // 2)
    plan = make_plan(adapter, scores.head_scores, scores.channel_scores, attn, mlp)
    ids = tokenizer("Structured pruning removes whole heads and channels.", return_tensors="pt").input_ids
    with torch.no_grad():
        with pruned_view(adapter, plan):
            pruned = model(ids).logits
        masked_model, _ = load_model("default")
        zero_pruned_units(get_adapter(masked_model), plan)
        masked = masked_model(ids).logits
    # 30 layers of float32 sums in a different order: differences of a few 1e-4 on logits of size ~20
    torch.testing.assert_close(pruned, masked, rtol=1e-4, atol=2e-3)
    assert torch.equal(pruned.argmax(-1), masked.argmax(-1))


def _assert_clean_error(result, pattern: str, out=None):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("selfprune: error:"), result.stderr
    assert pattern in lines[0], lines[0]
    if out is not None:
        assert not out.exists(), "nothing may be written on a failed run"


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--ratio", "1.2"], "outside [0, 1)"),
        (["--ratio", "-0.1"], "outside [0, 1)"),
        (["--ratio", "0.3", "--metric", "taylor"], "option --metric: Input should be 'wanda-sp', 'flap' or 'magnitude'"),
        (["--ratio", "0.3", "--calib-samples", "0"], "option --calib-samples"),
        (["--ratio", "0.3", "--seed", "x"], "option --seed"),
        ([], "exactly one of --ratio"),
    ],
)
def test_bad_options(tmp_path, args, pattern):
    out = tmp_path / "out"
    _assert_clean_error(selfprune("prune", "default", *args, "--out", out), pattern, out)


def test_bad_rates_files(tmp_path, default_model_dir):
    out = tmp_path / "out"
    short = tmp_path / "short.json"
    short.write_text(json.dumps([0.3] * 7))
    _assert_clean_error(selfprune("prune", "default", "--rates", short, "--out", out), "gives 7 attention rates", out)
    high = tmp_path / "high.json"
    high.write_text(json.dumps([{"attn": 0.2, "mlp": 1.7}] * 30))
    _assert_clean_error(selfprune("prune", "default", "--rates", high, "--out", out), "outside [0, 1]", out)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("[0.3, 0.3,")
    _assert_clean_error(selfprune("prune", "default", "--rates", garbage, "--out", out), "not valid JSON", out)
    _assert_clean_error(selfprune("prune", "default", "--rates", tmp_path / "nope.json", "--out", out), "not found", out)


def test_missing_and_unsupported_models(tmp_path):
    out = tmp_path / "out"
    _assert_clean_error(selfprune("prune", tmp_path / "no-such-model", "--ratio", "0.3", "--out", out), "not found", out)
    not_model = tmp_path / "empty"
    not_model.mkdir()
    _assert_clean_error(selfprune("prune", not_model, "--ratio", "0.3", "--out", out), "not a model directory", out)

    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)).save_pretrained(gpt2)
    from selfprune.models.loading import default_model_dir

    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(gpt2)
    _assert_clean_error(selfprune("prune", gpt2, "--ratio", "0.3", "--out", out), "unsupported architecture 'gpt2'", out)


def test_pruned_checkpoint_records_its_dense_model(tmp_path, tiny_model):
    """`selfprune bench` finds the baseline from the checkpoint's record."""
    from transformers import AutoModelForCausalLM

    from selfprune.cli.bench import recorded_baseline
    from selfprune.pruning.checkpoint import save_pruned
    from selfprune.options import PruneOptions
    from selfprune.pruning.pipeline import prune_model

    dense_dir = tmp_path / "dense"
    tiny_model("llama").save_pretrained(dense_dir)
    model = AutoModelForCausalLM.from_pretrained(dense_dir)
    result = prune_model(model, None, ratio=0.3, options=PruneOptions(metric="magnitude"), progress=False)
    out = save_pruned(result.model, None, tmp_path / "pruned")
    assert recorded_baseline(str(out)) == str(dense_dir)


def test_rates_from_a_search_are_pruned_with_the_searchs_calibration(tmp_path, default_model):
    """`prune --rates DIR/best.json` keeps the heads and channels the search scored: its calibration text,
    sizes and seed come from the search's config.json unless a flag says otherwise (then a note says so)."""
    from selfprune.config import resolve

    search = tmp_path / "search"
    search.mkdir()
    config = resolve({"model": "default", "ratio": 0.3, "seed": 3,
                      "prune": {"calib": "wiki-passages", "calib_samples": 2, "calib_seqlen": 64}})
    (search / "config.json").write_text(json.dumps({"command": [], "config": config.model_dump(mode="json")}))
    (search / "best.json").write_text(json.dumps({"rates": [{"attn": 0.25, "mlp": 0.35}] * 30}))
    result = selfprune("prune", "default", "--rates", search / "best.json", "--out", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    assert "as the search that wrote the rates" in result.stdout and "wiki-passages, 2 x 64 tokens, seed 3" in result.stdout
    summary = json.loads((tmp_path / "a" / "selfprune_summary.json").read_text())
    assert (summary["calib"], summary["calib_samples"], summary["calib_seqlen"], summary["seed"]) == (
        "wiki-passages", 2, 64, 3)
    result = selfprune("prune", "default", "--rates", search / "best.json", "--calib", "lambada", "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert "note: --calib lambada (the search's wiki-passages)" in result.stdout
    summary = json.loads((tmp_path / "b" / "selfprune_summary.json").read_text())
    assert (summary["calib"], summary["calib_samples"]) == ("lambada", 2)


def test_rates_from_a_run_directory_are_pruned_with_the_runs_calibration(tmp_path, default_model):
    """A `selfprune run` directory keeps its settings in DIR/config.yaml and the search's best rates in
    DIR/search/<operator>/best.json: `prune --rates` on those reads the run's calibration and seed."""
    from selfprune.config import resolve

    run_dir = tmp_path / "run"
    (run_dir / "search" / "llm").mkdir(parents=True)
    config = resolve({"model": "default", "ratio": 0.3, "seed": 5,
                      "prune": {"calib": "wiki-passages", "calib_samples": 2, "calib_seqlen": 48}})
    (run_dir / "config.yaml").write_text(config.to_yaml())
    rates = run_dir / "search" / "llm" / "best.json"
    rates.write_text(json.dumps({"rates": [{"attn": 0.25, "mlp": 0.35}] * 30}))
    result = selfprune("prune", "default", "--rates", rates, "--out", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    assert f"({run_dir / 'config.yaml'})" in result.stdout and "wiki-passages, 2 x 48 tokens, seed 5" in result.stdout
    summary = json.loads((tmp_path / "a" / "selfprune_summary.json").read_text())
    assert (summary["calib"], summary["calib_samples"], summary["calib_seqlen"], summary["seed"]) == (
        "wiki-passages", 2, 48, 5)
