"""Serving pruned checkpoints in vLLM, checked against a real vLLM and transformers.

A pruned checkpoint names its own architecture (``SelfPruned<Base>``): transformers still loads it
through its remote code, vLLM with selfprune's plugin serves it, and vLLM without the plugin stops
with one line that says what to install. vLLM's pins conflict with this project's environment, so
the vLLM side runs in its own virtualenv: set SELFPRUNE_VLLM_PYTHON to its python (vllm and
selfprune installed there, see docs/serve.md). Without it, the vLLM tests are skipped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, tiny_config
from transformers import AutoModelForCausalLM

from selfprune.errors import SelfpruneError
from selfprune.models import get_adapter
from selfprune.pruning.apply import apply_plan
from selfprune.pruning.checkpoint import save_pruned
from selfprune.pruning.importance import compute_importance
from selfprune.pruning.plan import make_plan
from selfprune.serve import VLLM_HINT, architecture_for, mark_architecture, tensor_parallel_error

VLLM_PYTHON = os.environ.get("SELFPRUNE_VLLM_PYTHON")
needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON, reason="set SELFPRUNE_VLLM_PYTHON to the python of a virtualenv with vllm and selfprune "
                            "(docs/serve.md); vLLM's pins conflict with this environment")

HEAD_DIM = 32  # the smallest head size vLLM's CPU attention kernels take
TINY_PROMPTS = [list(range(3, 43)), [(7 * i) % 128 for i in range(64)], [5, 9, 2, 77, 31, 8, 100, 64, 1]]
TINY_NEW_TOKENS = 12


def tiny_pruned(family: str, out: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny random ``family`` model pruned to uneven layers, saved to ``out``: layer 0 keeps 1 of 4
    query heads and 1 of 2 KV heads, layer 1 loses its attention, layer 2 keeps all heads (GQA) and
    loses its MLP; every kept output carries a compensation bias."""
    torch.manual_seed(0)
    config = tiny_config(family)
    config.head_dim = HEAD_DIM
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    adapter = get_adapter(model.eval())
    scores = compute_importance(adapter, torch.randint(0, 128, (4, 32)), "flap", progress=False)
    plan = make_plan(adapter, scores.head_scores, scores.channel_scores, [0.6, 1.0, 0.0], [0.5, 0.2, 1.0])
    apply_plan(adapter, plan, scores, bias_compensation=True)
    save_pruned(model, None, out)
    mark_architecture(out)  # a no-op once save_pruned names the pruned architecture itself
    return out, model


def vllm_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **extra)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes a share of the machine's memory
    return env


def run_vllm_script(script: str, args: list[str], tmp_path: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    path = tmp_path / "vllm_script.py"
    path.write_text(script)
    return subprocess.run([VLLM_PYTHON, str(path), *args], check=False, capture_output=True, text=True, timeout=timeout,
                          env=vllm_env(**env), cwd=tmp_path)


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


# --- without vLLM ---------------------------------------------------------------------------------

def test_importing_the_plugin_needs_no_vllm():
    code = ("import sys, selfprune, selfprune.serve, selfprune.serve.vllm_plugin; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'vllm'], 'vllm imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_names_its_architecture_and_transformers_loads_it(family, tmp_path):
    out, model = tiny_pruned(family, tmp_path / family)
    config = json.loads((out / "config.json").read_text())
    base = config["auto_map"]["AutoModelForCausalLM"].split(".")[-1]
    assert config["architectures"] == [base, VLLM_HINT] and base == architecture_for(config)
    x = torch.tensor(TINY_PROMPTS[1:2])
    with torch.no_grad():
        stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
        assert torch.equal(stock(x).logits, model(x).logits)


def test_upgrade_command_marks_earlier_checkpoints(tmp_path):
    out, _ = tiny_pruned("qwen3", tmp_path / "old")
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = ["Qwen3ForCausalLM"]  # as earlier versions wrote it
    (out / "config.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "selfprune", "upgrade", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "upgraded" in first.stdout and "already up to date" in second.stdout
    assert json.loads((out / "config.json").read_text())["architectures"] == ["SelfPrunedQwen3ForCausalLM", VLLM_HINT]
    AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)

    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    refused = subprocess.run([sys.executable, "-m", "selfprune", "upgrade", str(dense)], capture_output=True,
                             text=True, check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "not a checkpoint selfprune pruned" in refused.stderr


def test_architecture_of_an_unsupported_family_is_refused():
    with pytest.raises(SelfpruneError, match="unsupported model type 'gpt2'"):
        architecture_for({"model_type": "gpt2", "selfprune": {"layers": []}})


def test_tensor_parallel_sizes():
    layers = [{"num_heads": 6, "num_kv_heads": 3, "intermediate_size": 1152},
              {"num_heads": 0, "num_kv_heads": 0, "intermediate_size": 0},
              {"num_heads": 3, "num_kv_heads": 1, "intermediate_size": 1152}]
    assert tensor_parallel_error(layers, 1) is None and tensor_parallel_error(layers, 3) is None
    message = tensor_parallel_error(layers, 2)
    assert "layer 0: heads 6, KV heads 3" in message and "layer 2" in message and "layer 1" not in message
    assert message.endswith("serve it with --tensor-parallel-size 1")
    layers[2]["intermediate_size"] = 1151
    assert "layer 2" in tensor_parallel_error(layers, 3) and "--mlp-multiple 3" in tensor_parallel_error(layers, 3)


# --- tiny models of every family in vLLM ----------------------------------------------------------

TINY_SCRIPT = r'''
import json, sys
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    job = json.load(open(sys.argv[1]))
    results = {}
    for family, path in job["checkpoints"].items():
        llm = LLM(model=path, dtype="float32", max_model_len=256, enforce_eager=job["eager"], skip_tokenizer_init=True,
                  max_logprobs=-1, seed=0)
        params = SamplingParams(max_tokens=job["new_tokens"], temperature=0, ignore_eos=True, logprobs=0,
                                prompt_logprobs=-1, detokenize=False)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in job["prompts"]], params)
        results[family] = [{
            "tokens": list(o.outputs[0].token_ids),
            "prompt_logprobs": [[d[t].logprob for t in range(job["vocab"])] for d in o.prompt_logprobs[1:]],
        } for o in outs]
        del llm
    json.dump(results, open(sys.argv[2], "w"))
'''


def transformers_view(model, prompt: list[int], continuation: list[int]):
    """What ``model`` computes for ``prompt`` followed by ``continuation``, in one forward pass: its
    greedy choice at each continuation position, the log-probabilities over the vocabulary at
    every prompt position but the last, and the log-probability of each continuation token. The
    continuation is ``model``'s own greedy one exactly when the choices equal it."""
    ids = prompt + continuation
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    n = len(prompt)
    steps = logprobs[n - 1:-1]
    chosen = steps[torch.arange(len(continuation)), torch.tensor(continuation)]
    return steps.argmax(-1).tolist(), logprobs[:n - 1], chosen.tolist()


def check_tiny_models(families: list[str], tmp_path: Path, eager: bool, **env) -> None:
    checkpoints = {family: str(tiny_pruned(family, tmp_path / family)[0]) for family in families}
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"checkpoints": checkpoints, "prompts": TINY_PROMPTS, "new_tokens": TINY_NEW_TOKENS,
                               "vocab": 128, "eager": eager}))
    done = run_vllm_script(TINY_SCRIPT, [str(job), str(tmp_path / "got.json")], tmp_path, **env)
    assert done.returncode == 0, tail(done.stdout + done.stderr)
    got = json.loads((tmp_path / "got.json").read_text())
    for family in families:
        stock = AutoModelForCausalLM.from_pretrained(checkpoints[family], trust_remote_code=True).eval()
        for prompt, result in zip(TINY_PROMPTS, got[family]):
            greedy, prompt_logprobs, _ = transformers_view(stock, prompt, result["tokens"])
            diff = (torch.tensor(result["prompt_logprobs"], dtype=torch.float64) - prompt_logprobs).abs().max().item()
            print(f"{family}: prompt of {len(prompt)} tokens, max |d logprob| over the vocabulary {diff:.2e}")
            assert diff < 1e-4, family
            assert result["tokens"] == greedy, family


@needs_vllm
def test_tiny_models_of_every_family_match_transformers_in_vllm(tmp_path):
    # One process builds the five engines in turn (in-process engine: no start-up per model).
    check_tiny_models(FAMILIES, tmp_path, eager=True, VLLM_ENABLE_V1_MULTIPROCESSING="0")


@needs_vllm
def test_compiled_model_matches_transformers(tmp_path):
    """Without --enforce-eager vLLM traces the model with torch.compile (on a GPU, CUDA graphs capture
    that graph): Gemma 3, whose layers take every branch (q/k norms, four norms, removed blocks)."""
    check_tiny_models(["gemma3"], tmp_path, eager=False, VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache"))


NO_PLUGIN_SCRIPT = r'''
import sys
if __name__ == "__main__":
    from vllm import LLM
    LLM(model=sys.argv[1], dtype="float32", max_model_len=128, enforce_eager=True, skip_tokenizer_init=True)
'''


@needs_vllm
def test_vllm_without_the_plugin_says_what_to_install(tmp_path):
    out, _ = tiny_pruned("llama", tmp_path / "llama")
    # VLLM_PLUGINS lists the plugins vLLM may load: none, as if selfprune were not installed there.
    done = run_vllm_script(NO_PLUGIN_SCRIPT, [str(out)], tmp_path, timeout=300, VLLM_PLUGINS="")
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "pip install selfprune[vllm]" in line]
    assert len(lines) == 1 and "SelfPrunedLlamaForCausalLM" in lines[0] and "not supported" in lines[0], \
        tail(done.stdout + done.stderr)


TP_SCRIPT = r'''
import sys
if __name__ == "__main__":
    from vllm.engine.arg_utils import EngineArgs
    EngineArgs(model=sys.argv[1], tensor_parallel_size=int(sys.argv[2]), dtype="float32", max_model_len=128,
               skip_tokenizer_init=True).create_engine_config()
'''


@needs_vllm
def test_tensor_parallelism_that_cannot_split_a_layer_is_one_error(tmp_path):
    out, _ = tiny_pruned("qwen2", tmp_path / "qwen2")  # the dense model's 4 heads would split in 2
    done = run_vllm_script(TP_SCRIPT, [str(out), "2"], tmp_path, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "tensor parallelism of 2 cannot split" in line]
    assert len(lines) == 1 and "layer 0: heads 1, KV heads 1" in lines[0], tail(done.stderr)
    assert "--tensor-parallel-size 1" in lines[0]


# --- the default model, pruned at 30%, behind vLLM's OpenAI server ----------------------------------

REMOVED_ATTN, REMOVED_MLP = 10, 25
PROMPTS = [
    "The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
    "The three primary colors are", "Water boils at a temperature of", "In 1969, the first humans",
    "The best way to learn a new language is", "Photosynthesis is the process by which",
    "import numpy as np\n", "My favourite recipe for pancakes:", "The theory of relativity states that",
    "Dear hiring manager,", "The stock market fell today because", "A haiku about autumn:",
    "To install the package, run", "The largest planet in the solar system is",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def pruned_default(tmp_path_factory, default_model_dir):
    from selfprune import prune

    # ~30% of attention+MLP: one attention and one MLP block removed, the rest at 27.6%.
    rates = [{"attn": 0.276, "mlp": 0.276} for _ in range(30)]
    rates[REMOVED_ATTN]["attn"] = 1.0
    rates[REMOVED_MLP]["mlp"] = 1.0
    result = prune(default_model_dir, rates=rates, calib_samples=8, calib_seqlen=128)
    out = tmp_path_factory.mktemp("vllm") / "pruned30"
    result.save(out)
    mark_architecture(out)
    layers = json.loads((out / "config.json").read_text())["selfprune"]["layers"]
    assert layers[REMOVED_ATTN]["num_heads"] == 0 and layers[REMOVED_MLP]["intermediate_size"] == 0
    assert layers[REMOVED_ATTN]["o_bias"] and layers[REMOVED_MLP]["down_bias"]  # constants to carry
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def vllm_server(model_dir: Path, log_path: Path, name: str = "pruned", timeout: float = 300):
    """vLLM's OpenAI-compatible server for ``model_dir`` on 127.0.0.1, stopped on exit."""
    port = free_port()
    # The module `vllm serve` runs: vllm-cpu's `vllm` command looks up a distribution named "vllm".
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--max-model-len", "512", "--enforce-eager"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, f"vLLM server exited:\n{tail(log_path.read_text())}"
            assert time.monotonic() < deadline, f"vLLM server not ready in {timeout:.0f} s:\n{tail(log_path.read_text())}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as health:
                    if health.status == 200:
                        break
            except OSError:  # not listening yet
                pass
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the engine processes it started
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@needs_vllm
def test_vllm_serves_the_pruned_default_model_as_transformers_computes_it(pruned_default, tmp_path):
    from openai import OpenAI
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pruned_default)
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    with vllm_server(pruned_default, tmp_path / "server.log") as url:
        client = OpenAI(base_url=url, api_key="unused")
        reply = client.completions.create(
            model="pruned", prompt=prompts, max_tokens=NEW_TOKENS, temperature=0, logprobs=0,
            extra_body={"prompt_logprobs": 0, "return_tokens_as_token_ids": True, "ignore_eos": True})
    choices = sorted(reply.choices, key=lambda c: c.index)

    model = AutoModelForCausalLM.from_pretrained(pruned_default, trust_remote_code=True, dtype=torch.float32).eval()
    diffs = []
    for ids, choice in zip(prompts, choices):
        served = [int(t.removeprefix("token_id:")) for t in choice.logprobs.tokens]
        greedy, prompt_logprobs, logprobs = transformers_view(model, ids, served)
        assert served == greedy, f"prompt {tokenizer.decode(ids)!r}: vLLM {served}, transformers' choices {greedy}"
        served_prompt = [entry[str(t)]["logprob"] for entry, t in zip(choice.model_extra["prompt_logprobs"][1:], ids[1:])]
        expected_prompt = prompt_logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()
        diffs += [abs(a - b) for a, b in zip(served_prompt, expected_prompt)]
        diffs += [abs(a - b) for a, b in zip(choice.logprobs.token_logprobs, logprobs)]
    print(f"{len(PROMPTS)} prompts x {NEW_TOKENS} greedy tokens equal; max |d logprob| {max(diffs):.2e} "
          f"over {len(diffs)} prompt and generated tokens")
    assert max(diffs) < 1e-3
