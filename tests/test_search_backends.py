"""Operator backends for real: a local transformers model (the default model itself), and the
OpenAI-compatible client against a `transformers serve` server started here on loopback."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from selfprune.errors import SelfpruneError
from selfprune.evolution.llm.backends import LocalBackend, OpenAIBackend, make_backend
from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.loop import Search, SearchConfig
from selfprune.evolution.llm.operator import LLMOperator, LLMSettings
from synthetic import synthetic_problem

@pytest.fixture(autouse=True)
def one_thread():
    """Token-by-token generation is latency-bound: one thread is as fast on a quiet machine and
    much faster on a busy one."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


MESSAGES = [{"role": "user", "content": 'Reply with JSON like {"a": 1, "b": 2, "take": "ABABA"}'}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(default_model_dir, tmp_path_factory):
    """`transformers serve` with the default model preloaded, on a free loopback port."""
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # decoding is latency-bound
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [exe, "serve", default_model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
             "--dtype", "float32", "--default-seed", "0"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("transformers serve did not come up within 180 s")
            time.sleep(1)
        yield url + "/v1", default_model_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_backend_against_a_real_server(served_model, monkeypatch):
    base_url, model = served_model
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # loopback needs no key
    backend = OpenAIBackend(model, base_url=base_url)
    replies = backend.chat(MESSAGES, n=1, max_tokens=12, temperature=0.7, seed=1,
                           schema={"type": "object", "properties": {"a": {"type": "integer"}}})
    assert len(replies) == 1 and isinstance(replies[0].text, str) and replies[0].text
    assert replies[0].completion_tokens > 0 and replies[0].prompt_tokens > 0


def test_openai_backend_wrong_model_fails_at_start(served_model):
    base_url, _ = served_model
    with pytest.raises(SelfpruneError, match="not served"):
        OpenAIBackend("no-such-model", base_url=base_url)


def test_openai_backend_bad_input_fails_at_start(monkeypatch):
    with pytest.raises(SelfpruneError, match="cannot reach"):
        OpenAIBackend("m", base_url=f"http://127.0.0.1:{_free_port()}/v1", timeout=5)
    monkeypatch.delenv("SELFPRUNE_TEST_KEY", raising=False)
    with pytest.raises(SelfpruneError, match="SELFPRUNE_TEST_KEY"):
        OpenAIBackend("gpt-4o", base_url="https://api.example.invalid/v1", api_key_env="SELFPRUNE_TEST_KEY")
    with pytest.raises(SelfpruneError, match="unknown --llm"):
        make_backend("gpt4")


def test_local_backend_with_the_default_model(default_model):
    model, tokenizer = default_model
    backend = make_backend("self", self_model=model, self_tokenizer=tokenizer)
    a = backend.chat(MESSAGES, n=2, max_tokens=8, temperature=0.9, seed=5)
    b = backend.chat(MESSAGES, n=2, max_tokens=8, temperature=0.9, seed=5)
    assert len(a) == 2 and all(r.completion_tokens <= 8 and r.prompt_tokens > 0 for r in a)
    assert [r.text for r in a] == [r.text for r in b]  # seeded



def test_local_backend_encodes_the_shared_prompt_once_and_samples_as_before(default_model):
    # n replies share one prompt: its KV cache is computed once and repeated. The replies are the
    # ones a batch that encodes the prompt per row samples with the same seed.
    model, tokenizer = default_model
    shared = LocalBackend(model, tokenizer, "self", share_prefix=True)
    per_row = LocalBackend(model, tokenizer, "self", share_prefix=False)
    a = shared.chat(MESSAGES, n=3, max_tokens=24, temperature=0.8, seed=11)
    b = per_row.chat(MESSAGES, n=3, max_tokens=24, temperature=0.8, seed=11)
    assert [r.text for r in a] == [r.text for r in b]
    assert len({r.text for r in a}) > 1 and all(r.prompt_tokens == b[0].prompt_tokens for r in a)

def test_local_path_backend_loads_another_model_and_answers_as_it_would_in_process(default_model, default_model_dir,
                                                                                    tmp_path):
    # local:PATH loads the operator model from a folder; with the same weights and seed it writes what
    # the model in process writes, template decoding included.
    from selfprune.evolution.llm.constrained import moves_template

    model, tokenizer = default_model
    local = make_backend(f"local:{default_model_dir}")
    assert local.name == f"local:{default_model_dir}" and local.model is not model
    inproc = make_backend("self", self_model=model, self_tokenizer=tokenizer)
    for kw in (dict(max_tokens=8), dict(template=moves_template(3, 30))):
        a = local.chat(MESSAGES, n=2, temperature=0.9, seed=3, **kw)
        b = inproc.chat(MESSAGES, n=2, temperature=0.9, seed=3, **kw)
        assert [r.text for r in a] == [r.text for r in b] and all(r.text for r in a)
    with pytest.raises(SelfpruneError, match="not a model directory"):
        make_backend(f"local:{tmp_path}")


@pytest.mark.slow
def test_self_operator_runs_a_generation(default_model):
    """The default model as its own operator on a synthetic problem: every reply is counted as
    valid or invalid with a reason, and the search completes whatever it writes."""
    model, tokenizer = default_model
    p = synthetic_problem(30)
    space = GenomeSpace.from_problem(p, 0.3)
    op = LLMOperator(LocalBackend(model, tokenizer, "self"),
                     settings=LLMSettings(init_share=0.5, share=0.5, batch=4, retries=0, crossover=False))
    res = Search(space, p.fitness, op, SearchConfig(population=6, generations=1, crossover=2, mutation=2),
                 profiles=p.profiles).run()
    st = res.report["operator_stats"]
    assert st["replies"] == 1 + 1 and st["calls"] == 2  # init: 6 - 4 priors, half by the LLM; one mutation
    assert st["valid"] + sum(st["invalid"].values()) == st["replies"]
    assert st["distinct"] + st["repeats"] + st["copies"] == st["valid"]
    assert st["fallbacks"] == st["replies"] - st["distinct"]
    assert st["completion_tokens"] > 0


def test_template_decoding_always_parses(default_model):
    """Fill-in-the-blanks decoding: the default model's replies always parse, with layer indices
    and amounts inside their ranges."""
    from selfprune.evolution.llm.constrained import crossover_template, moves_template, shape_template
    from selfprune.evolution.llm.replies import parse_shape

    model, tokenizer = default_model
    backend = LocalBackend(model, tokenizer, "self")
    ask = [{"role": "user", "content": "Propose pruning moves for a 30-layer model as JSON."}]
    (r,) = backend.chat(ask, n=1, seed=1, template=moves_template(2, 30))
    parsed = json.loads(r.text)
    assert 1 <= len(parsed["moves"]) <= 2
    assert all(0 <= m["from"] <= 29 and 0 <= m["to"] <= 29 and m["from"] != m["to"] and 1 <= m["pct"] <= 20
               for m in parsed["moves"])
    (r,) = backend.chat(ask, n=1, seed=2, template=crossover_template(5, 8))
    parsed = json.loads(r.text)
    assert 1 <= parsed["a"] <= 8 and 1 <= parsed["b"] <= 8 and parsed["a"] != parsed["b"] and len(parsed["take"]) == 5
    assert set(parsed["take"]) <= {"A", "B"}
    (r,) = backend.chat(ask, n=1, seed=3, template=shape_template(5, False))
    vec, _ = parse_shape(r.text, GenomeSpace(30, 0.3), 5)
    assert vec.shape == (60,)


def test_a_server_that_does_not_sample_is_named(served_model, monkeypatch):
    # `transformers serve` decodes the default model greedily (its generation_config.json has no
    # do_sample): two requests for the initial population, each with its own seed, get one text.
    from selfprune.cli.search import format_report
    from selfprune.evolution.llm.backends import RandomBackend

    base_url, model = served_model
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = synthetic_problem(30)
    space = GenomeSpace.from_problem(p, 0.3)
    config = SearchConfig(population=6, generations=0, crossover=0, mutation=0)
    settings = LLMSettings(batch=2, retries=0, temperature=0.8)
    op = LLMOperator(OpenAIBackend(model, base_url=base_url), settings=settings)
    res = Search(space, p.fitness, op, config, profiles=p.profiles).run()
    st = res.report["operator_stats"]
    assert st["calls"] == 1 and st["replies"] == 2 and st["identical_batches"] == 1
    assert "in 1 of 1 calls all replies were the same text" in format_report(res.report)
    assert "the server may not be sampling" in format_report(res.report)

    # The null backend's replies differ: nothing is said.
    res = Search(space, p.fitness, LLMOperator(RandomBackend(), settings=settings), config, profiles=p.profiles).run()
    assert res.report["operator_stats"]["identical_batches"] == 0
    assert "same text" not in format_report(res.report)
