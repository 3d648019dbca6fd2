"""Output folders: nothing a command did not write is deleted or written into, replacing needs
--overwrite and keeps the old folder until the new one is complete, a killed replace leaves one
complete folder, and a failed run keeps its folder and resumes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from selfprune.cli import main
from selfprune.outputs import MARKER, PRUNED_MODEL, check_out_dir

MAGNITUDE = ["--metric", "magnitude"]  # no calibration text: the tiny model's pruning takes a second


@pytest.fixture
def dense_dir(tmp_path, tiny_model, default_model_dir):
    """A tiny Llama saved with the default model's tokenizer."""
    from transformers import AutoTokenizer

    path = tmp_path / "dense"
    tiny_model("llama").save_pretrained(path)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(path)
    return path


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _summary(path):
    return json.loads((path / "selfprune_summary.json").read_text())


def test_prune_never_deletes_a_folder_it_did_not_write(tmp_path, dense_dir, capsys):
    out = tmp_path / "d"
    (out / "sub").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "notes.txt").write_text("x")
    for extra in ([], ["--overwrite"]):
        assert main(["prune", str(dense_dir), "--ratio", "0.3", *MAGNITUDE, "--out", str(out), *extra]) == 2
        _one_line_error(capsys, "holds a model", "nothing in it is touched")
    assert _tree(out) == ["config.json", "notes.txt", "sub"] and (out / "notes.txt").read_text() == "x"


def test_prune_refuses_to_write_over_its_own_input(tmp_path, dense_dir, capsys):
    pruned = tmp_path / "pruned"
    assert main(["prune", str(dense_dir), "--ratio", "0.3", *MAGNITUDE, "--out", str(pruned)]) == 0
    capsys.readouterr()
    before = _tree(dense_dir)
    assert main(["prune", str(dense_dir), "--ratio", "0.3", *MAGNITUDE, "--out", str(dense_dir)]) == 2
    _one_line_error(capsys, "is the model being pruned")
    # A pruned model is selfprune's own output, but pruning it into itself would lose the input.
    assert main(["prune", str(pruned), "--ratio", "0.3", *MAGNITUDE, "--out", str(pruned), "--overwrite"]) == 2
    _one_line_error(capsys, "is the model being pruned")
    assert _tree(dense_dir) == before


def test_prune_replaces_its_own_output_only_with_overwrite(tmp_path, dense_dir, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(dense_dir), "--ratio", "0.3", *MAGNITUDE, "--out", str(out)]) == 0
    assert json.loads((out / MARKER).read_text())["kind"] == PRUNED_MODEL
    capsys.readouterr()
    assert main(["prune", str(dense_dir), "--ratio", "0.5", *MAGNITUDE, "--out", str(out)]) == 2
    _one_line_error(capsys, "already holds a pruned model", "--overwrite")
    assert _summary(out)["requested_ratio"] == 0.3
    assert main(["prune", str(dense_dir), "--ratio", "0.5", *MAGNITUDE, "--out", str(out), "--overwrite"]) == 0
    assert _summary(out)["requested_ratio"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "pruned"]  # no temporary folder left
    # An ordinary folder and files, readable as the umask allows (not private temporaries).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~umask


_KILL_AFTER = {
    # The atomic exchange: the kill comes after the swap, before the old folder is deleted.
    "exchange": """
        real = atomic._exchange
        def exchange(a, b):
            assert real(a, b)
            os.kill(os.getpid(), signal.SIGKILL)
        atomic._exchange = exchange
    """,
    # Without an exchange (not Linux): the kill comes between renaming the old folder aside and the new one in.
    "rename": """
        atomic._exchange = lambda a, b: False
        real, calls = os.replace, []
        def replace(src, dst):
            real(src, dst)
            calls.append(dst)
            if ".old-" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)
        atomic.os.replace = replace
    """,
}


@pytest.mark.parametrize("path", list(_KILL_AFTER))
def test_a_kill_while_replacing_leaves_one_complete_folder(tmp_path, dense_dir, path):
    out = tmp_path / "pruned"
    assert main(["prune", str(dense_dir), "--ratio", "0.3", *MAGNITUDE, "--out", str(out)]) == 0
    script = textwrap.dedent("""
        import os, signal, sys
        from selfprune import atomic
    """) + textwrap.dedent(_KILL_AFTER[path]) + textwrap.dedent("""
        from selfprune.cli import main
        main(sys.argv[1:])
    """)
    argv = ["prune", str(dense_dir), "--ratio", "0.5", *MAGNITUDE, "--out", str(out), "--overwrite"]
    killed = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".pruned.")]
    if path == "exchange":  # the new folder in place, the superseded one hidden beside it
        assert len(leftovers) == 1 and _summary(out)["requested_ratio"] == 0.5, leftovers
    else:  # both complete folders hidden, none in place
        assert len(leftovers) == 2 and not out.exists(), leftovers
    # The next write of the folder cleans up; a folder renamed aside but not replaced comes back.
    check_out_dir(out, PRUNED_MODEL, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "pruned"]
    assert _summary(out)["requested_ratio"] == (0.5 if path == "exchange" else 0.3)

    from selfprune.models import load_model

    load_model(str(out))  # complete: it loads


def test_an_out_folder_that_cannot_be_written_fails_before_the_work(dense_dir, capsys, monkeypatch):
    import selfprune.api

    monkeypatch.setattr(selfprune.api, "_model", lambda *a, **k: pytest.fail("the model was loaded"))
    # /proc takes no new files, even from root (a chmod 555 folder would not stop root).
    assert main(["prune", str(dense_dir), "--ratio", "0.3", "--out", "/proc/selfprune-test/out"]) == 2
    _one_line_error(capsys, "cannot write --out")


def test_search_never_writes_into_a_model_folder(tmp_path, dense_dir, capsys):
    before = (dense_dir / "config.json").read_text()
    for extra in ([], ["--resume"], ["--overwrite"]):
        assert main(["search", "default", "--ratio", "0.3", "--operator", "ga", "--out", str(dense_dir), *extra]) == 2
        _one_line_error(capsys, "holds a model")
    assert (dense_dir / "config.json").read_text() == before


def test_a_search_folder_needs_resume_or_overwrite(tmp_path, capsys):
    from selfprune.outputs import SEARCH, write_marker

    # What a kill between a checkpoint's rotation and its write leaves: no checkpoint.json.
    out = tmp_path / "search"
    out.mkdir()
    write_marker(out, SEARCH, complete=False)
    (out / "checkpoint.prev.json").write_text("{}")
    assert main(["search", "default", "--ratio", "0.3", "--operator", "ga", "--out", str(out)]) == 2
    _one_line_error(capsys, "already holds a search", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.prev.json", MARKER]


def test_export_never_writes_over_another_file(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    fake = tmp_path / "old.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 16)
    for extra in ([], ["--overwrite"]):
        assert main(["export", str(tmp_path / "any"), "--gguf", str(notes), *extra]) == 2
        _one_line_error(capsys, "is not a GGUF file")
    assert main(["export", str(tmp_path / "any"), "--gguf", str(fake)]) == 2
    _one_line_error(capsys, "--overwrite")
    assert notes.read_text() == "x" and fake.read_bytes().startswith(b"GGUF")


RUN = ["--operator", "ga", "--population", "2", "--generations", "1", "--crossover", "0", "--mutation", "1",
       "--calib-samples", "2", "--calib-seqlen", "64", "--fitness-samples", "1", "--fitness-seqlen", "64",
       "--seqlen", "64", "--max-windows", "1", "--tasks", "", "--shapes", "1x8", "--decode-batches", "1",
       "--decode-tokens", "2", "--warmup", "0", "--repeats", "1", "--quiet"]


def test_a_failed_run_keeps_its_folder_and_resumes(tmp_path, wikitext_test_path, default_model_dir, monkeypatch,
                                                   capsys):
    """The last stage fails; the folder keeps the log, the search and the finished stages, and
    --resume runs only what is left."""
    import selfprune.runner as runner

    out = tmp_path / "run"
    argv = ["run", "default", "--ratio", "0.3", *RUN, "--ppl", str(wikitext_test_path), "--out", str(out)]

    real_speed = runner.measure

    def broken_speed(*args, **kwargs):
        raise RuntimeError("the speed stage broke")

    monkeypatch.setattr(runner, "measure", broken_speed)
    with pytest.raises(RuntimeError, match="speed stage broke"):
        main(argv)
    assert "--resume" in capsys.readouterr().err
    assert json.loads((out / MARKER).read_text()) | {"complete": False} == json.loads((out / MARKER).read_text())
    assert "speed stage broke" in (out / "run.log").read_text()
    progress = json.loads((out / "progress.json").read_text())
    assert {"eval dense", "save", "eval pruned"} <= set(progress) and "speed" not in progress
    history = (out / "search" / "ga" / "history.json").read_text()
    assert not (out / "results.json").exists()

    assert main(argv) == 2  # not without --resume
    _one_line_error(capsys, "already holds a run", "--overwrite")
    assert main([*argv, "--seed", "1", "--resume"]) == 2  # nor with other settings
    _one_line_error(capsys, "seed 0 (now 1)")

    measured = []
    monkeypatch.setattr(runner, "measure", lambda *a, **k: measured.append(1) or real_speed(*a, **k))
    assert main([*argv, "--resume"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert measured == [1] and set(results["speed"]["models"]) == {"dense", "pruned"}
    assert results["models"]["pruned"]["perplexity"] == progress["eval pruned"]["perplexity"]
    assert (out / "search" / "ga" / "history.json").read_text() == history  # the search was not run again
    assert json.loads((out / MARKER).read_text())["complete"] is True and not (out / "progress.json").exists()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    _one_line_error(capsys, "is complete")
