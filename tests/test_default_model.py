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
