"""The operator LLM's server failing in every way observed: HTTP errors, HTML, JSON of the wrong
shape, wrong types, huge bodies, hangs. A fault-injecting OpenAI-compatible server runs here on
loopback and the real openai client talks to it: each fault is counted by kind, retried, and the
call falls back to the classical operator; a server that stays down stops the search with one line
naming --resume."""

import json
import time
from collections import Counter

import pytest
from fault_server import MODEL, FaultServer
from synthetic import synthetic_problem

from selfprune.errors import SelfpruneError
from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.llm.backends import REPLY_CHARS, OpenAIBackend, RandomBackend
from selfprune.evolution.llm.operator import LLMOperator, LLMSettings
from selfprune.evolution.loop import Search, SearchConfig
from selfprune.report.llm_stats import server_faults_summary

# What each fault the server serves is counted as (None: not a fault).
KIND = {"http_500": "http_500", "http_404": "http_404", "html": "not_json", "choices_string": "malformed",
        "choices_null": "malformed", "usage_strings": "bad_usage", "big_body": "oversized", "hang": "timeout",
        "huge_content": "oversized", "drop": "connection", "cut": "connection", "long_content": None, "ok": None}


@pytest.fixture
def fault_server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # loopback needs no key
    servers = []

    def start(*args, **kw):
        servers.append(FaultServer(*args, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def problem():
    p = synthetic_problem(12)
    return p, GenomeSpace.from_problem(p, 0.3)


def llm_search(server, out=None, generations=2, timeout=1.0, **settings):
    p, space = problem()
    backend = OpenAIBackend(MODEL, base_url=server.url, timeout=timeout)
    op = LLMOperator(backend, settings=LLMSettings(share=1.0, batch=4, retries=0, backoff=0.01, **settings))
    config = SearchConfig(population=6, generations=generations, crossover=2, mutation=2)
    return Search(space, p.fitness, op, config, profiles=p.profiles, out_dir=out), op


def expected_faults(served) -> dict[str, int]:
    return dict(Counter(KIND[m] for m in served if KIND[m]))


def test_every_fault_is_counted_and_falls_back_and_the_counts_survive_a_resume(fault_server, tmp_path, capsys):
    script = ["http_500", "html", "choices_string", "choices_null", "big_body", "hang", "huge_content", "drop",
              "usage_strings", "long_content", "cut"]
    server = fault_server(script)
    t0 = time.perf_counter()
    search, _ = llm_search(server, tmp_path, generations=2)
    res = search.run()
    assert res.report["generations"] == 2 and not server.script  # every fault was served, the search went on
    st = res.report["operator_stats"]
    assert st["server_faults"] == expected_faults(server.served)
    assert set(st["server_faults"]) == {"http_500", "not_json", "malformed", "oversized", "timeout", "connection",
                                        "bad_usage"}
    assert 1 <= st["failed_calls"] <= st["fallbacks"] and st["server_retries"] >= 1
    assert st["seconds_per_reply"] == st["seconds"] / st["replies"] > 0  # the hang alone waited a whole timeout
    out = capsys.readouterr().out
    assert out.count("the classical operator writes its proposals") == st["failed_calls"]
    summary = server_faults_summary(st)
    assert f"http_500 {st['server_faults']['http_500']}" in summary and "timeout 1" in summary
    assert f"{st['failed_calls']} call" in summary
    assert server_faults_summary(LLMOperator(RandomBackend()).stats()) == ""

    # The transcript keeps at most REPLY_CHARS of a reply and records its length; 20 MB were sent.
    records = [json.loads(line) for line in open(tmp_path / "transcript.jsonl")]
    long = [(t, n) for r in records for t, n in zip(r["replies"], r["reply_chars"]) if n > REPLY_CHARS]
    assert long and all(len(t) == REPLY_CHARS and n > 100_000 for t, n in long)
    assert (tmp_path / "transcript.jsonl").stat().st_size < 200_000
    # Nothing lost: each request the server answered is in the transcript, as a reply or a fault.
    assert sum(len(r["replies"]) + len(r.get("server_faults", [])) for r in records) == len(server.served)
    faulted = [f for r in records for f in r.get("server_faults", [])]
    assert Counter(f.split(":")[0] for f in faulted) == Counter(
        {k: v for k, v in st["server_faults"].items() if k != "bad_usage"})
    assert time.perf_counter() - t0 < 30  # no fault costs more than the timeout and the short pauses

    # A resume carries the counters on: the server now answers properly, and the faults of the
    # first session are still counted.
    resumed, _ = llm_search(server, tmp_path, generations=3)
    st2 = resumed.run(resume=True).report["operator_stats"]
    assert st2["server_faults"] == expected_faults(server.served) == st["server_faults"]
    assert st2["failed_calls"] == st["failed_calls"] and st2["calls"] > st["calls"]


@pytest.mark.parametrize("fault, retried, names", [
    ("http_500", True, "restart or fix the server"),
    ("http_404", False, "restart or fix the server"),  # a client error recurs: not asked again
    ("hang", False, "--llm-timeout"),  # a timeout has waited long enough: not asked again
])
def test_a_server_that_stays_down_stops_the_search(fault_server, fault, retried, names):
    server = fault_server(then=fault, hang=1.5)
    search, op = llm_search(server, timeout=0.3)
    with pytest.raises(SelfpruneError) as err:
        search.run()
    message = str(err.value)
    assert "--resume" in message and names in message and "\n" not in message
    s = op.s
    assert op.counters["failed_calls"] == s.down_after
    assert len(server.served) == s.down_after * (1 + (s.server_retries if retried else 0))
    assert op.counters["server_faults"] == expected_faults(server.served)


@pytest.mark.parametrize("models", [b"<html>Not Found</html>", b'{"data": [null]}'])
def test_a_model_list_that_is_not_one_is_checked_by_a_chat_request(fault_server, models):
    up = fault_server(models=models)
    OpenAIBackend(MODEL, base_url=up.url)
    assert up.served == ["ok"]  # the one-token chat request answered: the server works
    down = fault_server(models=models, then="http_500")
    with pytest.raises(SelfpruneError, match="failed to list its models .* and to answer a one-token chat request"):
        OpenAIBackend(MODEL, base_url=down.url)


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir):
    """A tiny Llama (3 layers): the search's model loads, is calibrated and scored in a moment."""
    return tiny_model_dir(max_position_embeddings=4096)


def cli_argv(model, out, *extra):
    # --init noise: the start is uniform alone, so a population of 2 still has the LLM write one genome.
    return ["search", model, "--ratio", "0.3", "--operator", "llm", "--llm", f"openai:{MODEL}", "--llm-share", "1",
            "--init", "noise", "--population", "2", "--generations", "1", "--crossover", "1", "--mutation", "1",
            "--calib-samples", "2", "--calib-seqlen", "64", "--fitness-samples", "1", "--fitness-seqlen", "64",
            "--quiet", "--out", str(out), *extra]


def test_cli_server_that_hangs_stops_with_one_line(fault_server, tmp_path, capsys, tiny_dir):
    from selfprune.cli import main

    server = fault_server(then="hang", hang=2.0)
    rc = main(cli_argv(tiny_dir, tmp_path, "--llm-base-url", server.url, "--llm-timeout", "0.5"))
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--resume" in err and "--llm-timeout" in err and server.url in err
    assert (tmp_path / "checkpoint.json").exists()  # the initial population is kept for the resume
    # Until then each failed call said so and went on.
    assert captured.out.count("the classical operator writes its proposals") == LLMSettings().down_after - 1


@pytest.mark.slow
def test_cli_resumes_once_the_server_is_back(fault_server, tmp_path, capsys, tiny_dir):
    from selfprune.cli import main

    down = fault_server(then="http_503")
    assert main(cli_argv(tiny_dir, tmp_path, "--llm-base-url", down.url)) == 2
    err = capsys.readouterr().err
    assert "http_503" in err and "--resume" in err and "Traceback" not in err
    up = fault_server()
    assert main(cli_argv(tiny_dir, tmp_path, "--llm-base-url", up.url, "--resume")) == 0
    st = json.loads((tmp_path / "report.json").read_text())["operator_stats"]
    # The failed initial call is in the checkpoint; the two of generation 1 are asked again, and answered.
    assert st["server_faults"] == {"http_503": 1 + LLMSettings().server_retries} and st["failed_calls"] == 1
    assert len(up.served) == 2 and st["replies"] == st["valid"] == 2
