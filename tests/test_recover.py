"""Recovery on the real default model pruned at 30%: KD, LoRA-KD (merged, stock-loadable), LM,
resume after an interruption, and the answers to bad input. Budgets are tiny (a few steps of
short sequences) so the file runs in minutes on a CPU; docs/recover.md has the real measurements."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import pytest
import torch

from selfprune.cli import main
from selfprune.errors import SelfpruneError
from selfprune.models import load_model
from selfprune.recover import RecoverOptions, recover
from selfprune.recover.data import check_not_eval_text, load_recovery_data
from selfprune.recover.distill import heldout_check

TINY = dict(seqlen=32, batch=2, heldout_blocks=3, eval_every=0, progress=False)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    """The default model pruned at a uniform 30% (small calibration), saved as a checkpoint."""
    from selfprune.api import prune

    out = tmp_path_factory.mktemp("recover") / "pruned30"
    prune("default", ratio=0.3, calib_samples=4, calib_seqlen=64, progress=False).save(out)
    return out


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    """A slice of the LAMBADA passages as a file: tokenizing it takes a fraction of a second."""
    from selfprune.data.calibration import calibration_text

    path = tmp_path_factory.mktemp("recover-data") / "lambada-slice.txt"
    path.write_text(calibration_text("lambada")[:60_000], encoding="utf-8")
    return path


def _student(pruned_dir):
    model, tokenizer = load_model(str(pruned_dir))
    return model, tokenizer


def test_kd_lowers_heldout_kl_and_records_the_protocol(pruned_dir, small_text, default_model):
    dense, dense_tok = default_model
    student, tokenizer = _student(pruned_dir)
    shapes = {n: p.shape for n, p in student.named_parameters()}
    before_weights = {n: p.detach().clone() for n, p in student.named_parameters()}
    result = recover(student, tokenizer, teacher=dense, teacher_tokenizer=dense_tok, data=str(small_text),
                     tokens=8 * 64, lr=1e-4, **TINY)
    s = result.summary
    assert s["training"]["steps"] == 8 and len(s["loss_curve"]) == 8
    assert s["heldout"]["after"]["kl"] < 0.9 * s["heldout"]["before"]["kl"]
    assert s["heldout"]["after"]["nll"] < s["heldout"]["before"]["nll"]
    # The summary describes the returned model: recompute the held-out KL independently.
    data = load_recovery_data(tokenizer, str(small_text), seqlen=32, heldout_blocks=3)
    again = heldout_check(result.model, dense, data.heldout, batch=2, device="cpu")
    assert again["kl"] == pytest.approx(s["heldout"]["after"]["kl"], rel=1e-5)
    # Full-parameter updates, pruned shapes kept, dense teacher untouched.
    assert {n: p.shape for n, p in result.model.named_parameters()} == shapes
    assert s["params"]["trainable"] == s["params"]["student"] == sum(p.numel() for p in student.parameters())
    changed = [n for n, p in result.model.named_parameters() if not torch.equal(p, before_weights[n])]
    assert len(changed) == len(before_weights)
    assert not any(p.requires_grad and p.grad is not None for p in dense.parameters())
    # The protocol: in the config (compact) and in the summary (full), JSON-able.
    record = result.model.config.selfprune["recovery"]
    assert record["method"] == "kd" and record["tokens"] == 8 * 64 and record["seqlen"] == 32
    assert record["data"]["text_sha256"] == hashlib.sha256(small_text.read_text().encode()).hexdigest()
    assert s["data"]["heldout_tokens"] == 3 * 32 and s["data"]["train_blocks"] * 32 + 96 <= s["data"]["stream_tokens"]
    json.dumps(s)


def test_lora_kd_merges_and_loads_with_stock_from_pretrained(pruned_dir, small_text, default_model, tmp_path):
    from transformers import AutoModelForCausalLM

    dense, dense_tok = default_model
    original_model, tokenizer = _student(pruned_dir)
    original = {n: p.detach().clone() for n, p in original_model.named_parameters()}
    # From the directory: the checkpoint's pruning summary travels into the output.
    result = recover(str(pruned_dir), teacher=dense, teacher_tokenizer=dense_tok, data=str(small_text),
                     method="lora-kd", tokens=6 * 64, lora_r=8, **TINY)
    s = result.summary
    assert s["heldout"]["after"]["kl"] < s["heldout"]["before"]["kl"]
    assert 0 < s["params"]["trainable"] < 0.05 * s["params"]["student"]
    model = result.model
    assert not any("lora" in n for n, _ in model.named_parameters()), "adapters must be merged away"
    assert {n: p.shape for n, p in model.named_parameters()} == {n: p.shape for n, p in original.items()}
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, original[n])]
    assert moved and all(n.split(".")[-2] in s["training"]["lora"]["targets"] for n in moved)

    out = result.save(tmp_path / "recovered")
    config = json.loads((out / "config.json").read_text())
    assert config["selfprune"]["layers"] == json.loads((pruned_dir / "config.json").read_text())["selfprune"]["layers"]
    assert config["selfprune"]["recovery"]["method"] == "lora-kd"
    summary = json.loads((out / "selfprune_summary.json").read_text())
    assert summary["recovery"]["method"] == "lora-kd" and "params_after" in summary  # pruning summary kept

    ids = tokenizer("Pruned models recover most of their quality after distillation.", return_tensors="pt").input_ids
    stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    ours, _ = load_model(str(out))
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(stock(ids).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(ids).logits, expected, rtol=1e-5, atol=1e-5)


class Interrupt(Exception):
    """Stands in for a kill: the run stops without saving anything beyond its periodic state."""


@pytest.mark.parametrize("method,extra", [("kd", {}), ("lora-kd", {"lora_r": 4, "lora_dropout": 0.1})])
def test_resume_after_interruption_matches_an_uninterrupted_run(pruned_dir, small_text, default_model, tmp_path,
                                                                method, extra):
    dense, dense_tok = default_model
    opts = RecoverOptions(method=method, data=str(small_text), tokens=5 * 64, save_every=2, **TINY, **extra)

    def run(state_dir, resume=False, stop_at=None):
        student, tokenizer = _student(pruned_dir)

        def stop(record):
            if record["step"] == stop_at:
                raise Interrupt

        o = opts.model_copy(update={"state_dir": str(state_dir), "resume": resume})
        return recover(student, tokenizer, teacher=dense, teacher_tokenizer=dense_tok, options=o, callback=stop)

    whole = run(tmp_path / "whole")
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", stop_at=3)  # killed after step 3: the saved state is the one of step 2
    with pytest.raises(SelfpruneError, match="--resume"):
        run(tmp_path / "cut")  # a leftover state is never silently overwritten
    resumed = run(tmp_path / "cut", resume=True)
    assert resumed.summary["training"]["resumed_from_step"] == 2
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in resumed.summary["loss_curve"]] == [r["loss"] for r in whole.summary["loss_curve"]]
    # A state from other settings is refused rather than mixed in.
    student, tokenizer = _student(pruned_dir)
    other = opts.model_copy(update={"state_dir": str(tmp_path / "cut"), "resume": True, "seed": 1})
    with pytest.raises(SelfpruneError, match="different run"):
        recover(student, tokenizer, teacher=dense, teacher_tokenizer=dense_tok, options=other)


def test_lm_needs_no_teacher_and_lowers_next_token_loss(pruned_dir, small_text):
    student, tokenizer = _student(pruned_dir)
    student.config.selfprune["base_model"] = None  # no teacher recorded: lm must not need one
    result = recover(student, tokenizer, method="lm", data=str(small_text), tokens=6 * 64, **TINY)
    s = result.summary
    assert s["teacher"] is None and "kl" not in s["heldout"]["after"]
    assert s["heldout"]["after"]["nll"] < s["heldout"]["before"]["nll"]
    student, tokenizer = _student(pruned_dir)
    student.config.selfprune["base_model"] = None
    with pytest.raises(SelfpruneError, match="--teacher"):
        recover(student, tokenizer, method="kd", data=str(small_text), tokens=64, **TINY)


def test_cli_recover_end_to_end(pruned_dir, tmp_path):
    out, report = tmp_path / "rec", tmp_path / "rec.json"
    result = subprocess.run(
        [sys.executable, "-m", "selfprune", "recover", str(pruned_dir), "--out", str(out), "--tokens", "128",
         "--seqlen", "32", "--batch", "2", "--heldout-blocks", "2", "--save-every", "1", "--json", str(report)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "KL to teacher" in result.stdout and "saved to" in result.stdout
    config = json.loads((out / "config.json").read_text())
    rec = config["selfprune"]["recovery"]
    assert rec["teacher"] == "default" and rec["data"]["source"] == "lambada" and rec["steps"] == 2
    data = json.loads(report.read_text())
    assert data["data"]["source"] == "lambada" and len(data["loss_curve"]) == 2 and data["versions"]["peft"]
    assert not (tmp_path / "rec.state").exists(), "the resumable state goes once the checkpoint is written"
    assert load_model(str(out))[0].config.selfprune["recovery"]["tokens"] == 128


def _cli_error(capsys, *args):
    code = main(["recover", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("selfprune: error: ") and "\n" not in err, err
    return err


def test_bad_input_fails_in_one_line_and_writes_nothing(pruned_dir, default_model_dir, wikitext_test_path, tmp_path,
                                                        capsys):
    out = tmp_path / "out"
    assert "dense model" in _cli_error(capsys, default_model_dir, "--out", out)
    assert "not found" in _cli_error(capsys, tmp_path / "missing", "--out", out)
    assert "--tokens" in _cli_error(capsys, pruned_dir, "--out", out, "--tokens", "0")
    assert "evaluation text" in _cli_error(capsys, pruned_dir, "--out", out, "--data", wikitext_test_path)
    assert "evaluation text" in _cli_error(capsys, pruned_dir, "--out", out, "--data", "wikitext2")
    assert "cannot write" in _cli_error(capsys, pruned_dir, "--out", "/sys/selfprune-recover-out")
    (tmp_path / "file").write_text("x")
    assert "cannot write" in _cli_error(capsys, pruned_dir, "--out", tmp_path / "file" / "out")
    assert "pruned checkpoint itself" in _cli_error(capsys, pruned_dir, "--out", pruned_dir)
    assert not out.exists() and not (tmp_path / "out.state").exists()


def test_teacher_with_another_tokenizer_is_refused(pruned_dir, small_text, tmp_path, capsys, tiny_model,
                                                   default_model):
    # A teacher with its own (128-token) vocabulary, saved as a model directory.
    student, tokenizer = _student(pruned_dir)
    teacher_dir = tmp_path / "tiny-teacher"
    tiny_model("llama").save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    err = _cli_error(capsys, pruned_dir, "--out", tmp_path / "out", "--teacher", teacher_dir)
    assert "tokenizers differ" in err and not (tmp_path / "out").exists()
    # Same vocabulary size, but the ids mean other tokens.
    dense, _ = default_model
    other = copy.deepcopy(tokenizer)
    vocab = other.get_vocab()
    swapped = {v: k for k, v in vocab.items()}
    other.get_vocab = lambda: {**vocab, swapped[100]: 101, swapped[101]: 100}
    with pytest.raises(SelfpruneError, match="tokenizer differs"):
        recover(student, tokenizer, teacher=dense, teacher_tokenizer=other, data=str(small_text), tokens=64, **TINY)


def test_recovery_data_is_disjoint_seeded_and_refuses_eval_text(default_model, small_text, wikitext_test_path):
    _, tokenizer = default_model
    data = load_recovery_data(tokenizer, str(small_text), seqlen=64, heldout_blocks=4, seed=3)
    n = len(data.train)
    epoch = torch.cat([data.batch(step, 5) for step in range(n // 5)])
    assert len({tuple(b.tolist()) for b in epoch}) == len(epoch)  # no block twice within an epoch
    train = {tuple(b.tolist()) for b in data.train}
    assert not any(tuple(b.tolist()) in train for b in data.heldout)
    again = load_recovery_data(tokenizer, str(small_text), seqlen=64, heldout_blocks=4, seed=3)
    assert all(torch.equal(data.batch(s, 5), again.batch(s, 5)) for s in (0, 7, n))  # n: into the second epoch
    other = load_recovery_data(tokenizer, str(small_text), seqlen=64, heldout_blocks=4, seed=4)
    assert not torch.equal(data.batch(0, 5), other.batch(0, 5))
    # The evaluation text is refused inside a larger text, and given evaluation texts are checked too.
    wiki = wikitext_test_path.read_text(encoding="utf-8")
    with pytest.raises(SelfpruneError, match="WikiText-2 test"):
        check_not_eval_text(small_text.read_text() + wiki[200_000:260_000], "mixed")
    own = small_text.read_text()
    with pytest.raises(SelfpruneError, match="overlaps the evaluation text"):
        check_not_eval_text(own, "slice", exclude_texts=[own[10_000:20_000]])
    check_not_eval_text(own, "slice", exclude_texts=[wiki])


def test_gradient_checkpointing_saves_fewer_activations_and_changes_nothing(pruned_dir, small_text, default_model):
    dense, dense_tok = default_model
    runs = {}
    for checkpointing in (False, True):
        student, tokenizer = _student(pruned_dir)
        saved = []  # elements autograd keeps for the backward pass (the activations checkpointing drops)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            result = recover(student, tokenizer, teacher=dense, teacher_tokenizer=dense_tok, data=str(small_text),
                             tokens=2 * 64, gradient_checkpointing=checkpointing, **TINY)
        runs[checkpointing] = (result, sum(saved))
    (plain, plain_saved), (ckpt, ckpt_saved) = runs[False], runs[True]
    assert ckpt_saved < 0.5 * plain_saved
    assert ckpt.summary["training"]["gradient_checkpointing"] is True
    assert not ckpt.model.is_gradient_checkpointing  # switched off again for inference
    for a, b in zip(plain.model.parameters(), ckpt.model.parameters()):
        assert torch.equal(a, b)
