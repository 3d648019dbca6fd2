"""The built-in default model: converted from its GGUF file once per cache, also under concurrency."""

import os
import subprocess
import sys

LOAD = (
    "from selfprune.models import load_model\n"
    "model, tokenizer = load_model('default')\n"
    "print(model.config.num_hidden_layers, len(tokenizer('The cat sat.').input_ids))\n"
)


def test_processes_started_together_convert_the_default_model_once(tmp_path):
    # Two benchmark seeds started side by side on a fresh machine: both must load, and only one
    # converts (the other waits for it instead of replacing the directory it is reading).
    env = dict(os.environ, SELFPRUNE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", LOAD], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    for out, err, rc in results:
        assert rc == 0, err[-2000:]
        layers, tokens = map(int, out.split())
        assert layers == 30 and tokens > 1
    conversions = sum(err.count("converting the default model") for _, err, _ in results)
    assert conversions == 1
    converted = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    assert (converted / "tokenizer.json").exists() and (converted / "config.json").exists()
    assert [p.name for p in converted.parent.iterdir() if ".tmp-" in p.name] == []  # no leftovers


def test_a_gguf_file_is_a_model_converted_once(tmp_path, monkeypatch, capfd, default_model):
    # The default model's own GGUF file passed as MODEL (or as the operator, local:FILE) must give
    # the default model's weights, converted on the first load only.
    import shutil

    import torch

    from selfprune.evolution.llm.backends import make_backend
    from selfprune.models import load_model
    from selfprune.models.loading import _default_gguf_path, gguf_cache_target

    monkeypatch.setenv("SELFPRUNE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "smollm2.gguf"
    shutil.copy(_default_gguf_path(), gguf)
    capfd.readouterr()
    model, tokenizer = load_model(str(gguf))
    assert capfd.readouterr().err.count("converting 'smollm2.gguf'") == 1
    ids = tokenizer("The cat sat on the mat because", return_tensors="pt").input_ids
    reference, reference_tokenizer = default_model
    assert ids.tolist() == reference_tokenizer("The cat sat on the mat because", return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)

    backend = make_backend(f"local:{gguf}")  # loads the cached copy
    assert "converting" not in capfd.readouterr().err
    reply = backend.chat([{"role": "user", "content": "Say hello."}], n=1, max_tokens=8, temperature=0.0)[0]
    assert backend.name == f"local:{gguf}" and reply.completion_tokens > 0 and reply.text.strip()

    # A changed file is converted again, into a new folder.
    before = gguf_cache_target(gguf)
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert gguf_cache_target(gguf) != before and not gguf_cache_target(gguf).exists()


def test_a_file_that_is_not_gguf_is_one_clear_error(tmp_path, monkeypatch):
    import pytest

    from selfprune.errors import SelfpruneError
    from selfprune.models import load_model

    monkeypatch.setenv("SELFPRUNE_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_text("not a GGUF file")
    with pytest.raises(SelfpruneError, match="cannot load the GGUF file .*model.gguf"):
        load_model(str(fake))
    other = tmp_path / "weights.bin"
    other.write_text("x")
    with pytest.raises(SelfpruneError, match="is a file; pass the directory .* or a .gguf file"):
        load_model(str(other))
