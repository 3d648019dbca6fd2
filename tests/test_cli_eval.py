"""`selfprune eval` and `selfprune bench` end to end on the real default model and a real pruned checkpoint."""

from __future__ import annotations

import copy
import json
import math

import pytest

from selfprune.cli import main


@pytest.fixture(scope="module")
def pruned_dir(default_model, tmp_path_factory):
    """A saved checkpoint with mixed widths and one layer whose attention and MLP are gone."""
    from selfprune.api import prune

    model, tokenizer = default_model
    rates = [{"attn": 0.34, "mlp": 0.5}] * model.config.num_hidden_layers
    rates[2] = {"attn": 1.0, "mlp": 1.0}
    result = prune(copy.deepcopy(model), tokenizer, rates=rates, calib_samples=2, calib_seqlen=64, progress=False)
    return str(result.save(tmp_path_factory.mktemp("pruned") / "ckpt"))


def test_eval_writes_table_and_json(default_model_dir, wikitext_test_path, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", default_model_dir, "--ppl", str(wikitext_test_path), "--seqlen", "128", "--max-windows", "2",
               "--tasks", "arc_easy", "--limit", "3", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "seqlen 128" in printed and "arc_easy" in printed
    report = json.loads(out.read_text())
    assert math.isfinite(report["perplexity"]["ppl"])
    assert report["perplexity"]["protocol"]["windows"] == 2
    assert set(report["zeroshot"]["tasks"]) == {"arc_easy"}
    assert {"torch", "transformers", "lm_eval", "selfprune"} <= set(report["versions"])
    assert all(report["versions"][k] for k in ("torch", "transformers", "lm_eval", "selfprune"))


def test_eval_pruned_checkpoint(pruned_dir, wikitext_test_path, tmp_path):
    out = tmp_path / "eval.json"
    rc = main(["eval", pruned_dir, "--ppl", str(wikitext_test_path), "--seqlen", "128", "--max-windows", "2",
               "--tasks", "hellaswag", "--limit", "2", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert math.isfinite(report["perplexity"]["ppl"])
    assert 0.0 <= report["zeroshot"]["tasks"]["hellaswag"]["acc"] <= 1.0


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir):
    return tiny_model_dir(hidden_size=32, intermediate_size=48, num_hidden_layers=2, head_dim=8)


def test_papers_protocol_options():
    from selfprune.eval.options import PAPERS_PROTOCOL, EvalOptions
    from selfprune.eval.zeroshot import TASKS

    papers = EvalOptions.papers()
    assert (papers.ppl, papers.seqlen, papers.more_seqlens, papers.max_windows, papers.stride, papers.limit) == (
        "wikitext2", 2048, [128], None, None, None)
    assert papers.tasks == list(TASKS) and len(TASKS) == 7 and papers.seqlens == [2048, 128]
    assert EvalOptions().more_seqlens == [] and EvalOptions().seqlens == [512]
    given = EvalOptions.papers(ppl="/data/wiki.test.raw", limit=500, more_seqlens="128,4096")
    assert (given.ppl, given.limit, given.seqlen, given.more_seqlens) == ("/data/wiki.test.raw", 500, 2048, [128, 4096])
    assert given.tasks == papers.tasks and PAPERS_PROTOCOL["more_seqlens"] == [128]  # the constant is untouched
    assert EvalOptions.papers(more_seqlens=None).more_seqlens == []


@pytest.mark.parametrize("argv, message", [
    (["--more-seqlens", "1"], "option --more-seqlens: 1 is too short"),
    (["--more-seqlens", "512"], "option --more-seqlens: 512 repeats seqlen"),
    (["--more-seqlens", "64,64"], "option --more-seqlens: 64, 64 names a length twice"),
    (["--more-seqlens", "64,x"], "option --more-seqlens: '64,x' is not a comma-separated list"),
    (["--stride", "100", "--more-seqlens", "64"], "option --stride: 100 is longer than the window length 64"),
    (["--protocol", "papers", "--stride", "256"], "option --stride: 256 is longer than the window length 128"),
    (["--protocol", "papers", "--seqlen", "128"], "option --more-seqlens: 128 repeats seqlen"),
])
def test_bad_more_seqlens_is_one_line(argv, message, capsys):
    assert main(["eval", "default", "--tasks", "none", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfprune: error:") and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_papers_protocol_with_overrides_writes_every_length(tiny_dir, wikitext_test_path, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", tiny_dir, "--protocol", "papers", "--ppl", str(wikitext_test_path), "--tasks", "none",
               "--max-windows", "2", "--more-seqlens", "16", "--seqlen", "32", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "seqlen 32" in printed and "seqlen 16" in printed
    report = json.loads(out.read_text())
    by = report["perplexity_by_seqlen"]
    assert list(by) == ["32", "16"] and by["32"] == report["perplexity"]
    assert [(by[k]["protocol"]["seqlen"], by[k]["protocol"]["windows"]) for k in by] == [(32, 2), (16, 2)]
    assert all(math.isfinite(r["ppl"]) for r in by.values()) and by["32"]["ppl"] != by["16"]["ppl"]
    assert by["16"]["protocol"]["source"] == str(wikitext_test_path.resolve())
    o = report["options"]  # the protocol's fields, the flags given overriding them
    assert (o["seqlen"], o["more_seqlens"], o["max_windows"], o["tasks"], o["limit"]) == (32, [16], 2, [], None)
    assert "zeroshot" not in report


def test_bench_pruned_against_default(pruned_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", pruned_dir, "--baseline", "default", "--shapes", "1x16,2x16", "--decode-batches", "1",
               "--repeats", "1", "--warmup", "0", "--decode-tokens", "2", "--json", str(out)])
    assert rc == 0
    assert "ideal x" in capsys.readouterr().out
    report = json.loads(out.read_text())
    pruned, dense = report["models"]["pruned"], report["models"]["dense"]
    assert pruned["params"] < dense["params"] and pruned["macs"] < dense["macs"]
    assert report["comparison"]["pruned"]["ideal"] == pytest.approx(dense["params"] / pruned["params"])
    assert report["versions"]["torch"] and report["protocol"]["repeats"] == 1
    assert report["protocol"]["prefill_shapes"] == [[1, 16], [2, 16]]


@pytest.mark.parametrize("argv, message", [
    (["eval", "default", "--tasks", "piqa,nosuch"], "known offline tasks: boolq, piqa"),
    (["eval", "default", "--ppl", "/nonexistent/text.txt"], "not found"),
    (["eval", "default", "--ppl", "WIKI", "--seqlen", "100000"], "longer than the model's context"),
    (["eval", "EMPTY_DIR", "--ppl", "WIKI"], "not a model directory"),
    (["bench", "EMPTY_DIR", "--baseline", "default"], "not a model directory"),
    (["bench", "default"], "pass --baseline"),
    (["bench", "default", "--baseline", "default", "--shapes", "128"], "BxS pairs"),
])
def test_user_mistakes_exit_2(argv, message, tmp_path, wikitext_test_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [{"EMPTY_DIR": str(tmp_path / "empty"), "WIKI": str(wikitext_test_path)}.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfprune: error:") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
