"""Operator-LLM replies: tolerant parsing, repair of 100 malformed replies with exact counts,
and fallback to the classical operator (a scripted backend stands in for the model here; the
real backends are tested in test_search_backends.py)."""

import itertools
import json

import numpy as np
import pytest

from selfprune.evolution.llm.backends import ChatBackend, Reply
from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.loop import Search, SearchConfig
from selfprune.evolution.llm.operator import LLMOperator, LLMSettings
from selfprune.evolution.llm.replies import ReplyError, parse_crossover, parse_moves, parse_shape
from synthetic import synthetic_problem


class Scripted(ChatBackend):
    """Replays fixed reply texts in order."""

    name = "scripted"

    def __init__(self, texts):
        self.texts = itertools.cycle(texts)
        self.calls = 0

    def chat(self, messages, n=1, **kw):
        self.calls += 1
        return [Reply(next(self.texts), 50, 10) for _ in range(n)]


def malformed_replies():
    """100 replies: 20 empty, 20 prose, 15 NaN, 15 wrong length, 15 out of range, 15 wrong type."""
    rng = np.random.default_rng(0)
    out = []
    out += [("empty", t) for t in ["", "  ", "\n"] * 7][:20]
    prose = ["I would prune the later layers more.", "Sure! Here is a shape: more in the middle.",
             "As an AI model I cannot", "attn should be low, mlp high", "{not json at all"]
    out += [("prose", prose[i % 5]) for i in range(20)]
    for i in range(15):
        vals = [int(v) for v in rng.integers(10, 60, 5)]
        vals[i % 5] = "NaN"
        out.append(("nan", '{"attn": [%s], "mlp": [30, 30, 30, 30, 30]}' % ", ".join(map(str, vals))))
    for i in range(15):
        n = [1, 3, 7, 30][i % 4]
        out.append(("length", json.dumps({"attn": [30] * n, "mlp": list(range(20, 20 + n))})))
    for i in range(15):
        bad = [150, -20, 300, 99.5, -1][i % 5]
        out.append(("range", json.dumps({"attn": [bad, 30, 30, 30, 30], "mlp": [30, 30, bad, 30, 30]})))
    wrong = ['{"attn": "high", "mlp": "low"}', '{"attn": [true, false], "mlp": [1]}', '{"attn": [null, 3], "mlp": [2, 3]}',
             '{"attn": {"a": 1}, "mlp": [2]}', '{"shape": "ramp"}']
    out += [("type", wrong[i % 5]) for i in range(15)]
    assert len(out) == 100
    return out


@pytest.fixture
def space():
    return GenomeSpace.from_problem(synthetic_problem(30), 0.4)


def test_repair_of_100_malformed_replies(space):
    tally = {"invalid": {}, "nonfinite": 0, "resized": 0, "clipped": 0}
    for kind, text in malformed_replies():
        try:
            vec, events = parse_shape(text, space, 5)
        except ReplyError as err:
            tally["invalid"][err.reason] = tally["invalid"].get(err.reason, 0) + 1
            continue
        genome, repairs = space.repair(vec)
        a, m = genome.arrays()
        assert np.isfinite(a).all() and 0 <= a.min() and a.max() <= 0.9 and m.max() <= 0.9
        assert abs(space.achieved(genome) - 0.4) <= space.tolerance + 2e-3
        for ev in ("nonfinite", "resized", "clipped"):
            tally[ev] += ev in set(repairs) | set(events)
    assert tally["invalid"] == {"empty": 20, "no-json": 20, "wrong-type": 15}
    assert tally["nonfinite"] == 15 and tally["resized"] == 15 and tally["clipped"] == 15


def test_operator_counts_and_falls_back(space):
    p = synthetic_problem(30)
    texts = [t for _, t in malformed_replies()]
    backend = Scripted(texts)
    op = LLMOperator(backend, settings=LLMSettings(retries=0, batch=10))
    # 4 priors head the population (uniform, OWL, two importance shapes); the LLM writes the other 100.
    res = Search(space, p.fitness, op, SearchConfig(population=104, generations=0, crossover=0, mutation=0), profiles=p.profiles).run()
    st = res.report["operator_stats"]
    assert st["replies"] == 100 and st["valid"] == 45 and st["calls"] == 10
    assert st["invalid"] == {"empty": 20, "no-json": 20, "wrong-type": 15}
    # Of the 45 valid replies, the 15 NaN ones differ, the 15 wrong-length ones take 4 lengths in turn
    # and the 15 out-of-range ones 5 values: 24 distinct, 21 repeats (dropped, filled by the GA).
    assert st["distinct"] == 24 and st["repeats"] == 21 and st["copies"] == 0
    assert st["fallbacks"] == 76 and st["valid_rate"] == 0.45
    assert st["prompt_tokens"] == 5000 and st["completion_tokens"] == 1000
    origins = res.report["origins"]
    assert origins["llm-init"]["proposed"] == 24 and origins["fallback-init"]["proposed"] == 76
    assert res.report["repairs"]["nonfinite"] == 15
    assert res.report["budget"]["total_evals"] + res.report["budget"]["dropped"] == 104


def test_retry_then_fallback_in_generations(space):
    p = synthetic_problem(30)
    backend = Scripted(["nonsense"])
    op = LLMOperator(backend, settings=LLMSettings(retries=1, share=0.5, batch=4))
    res = Search(space, p.fitness, op, SearchConfig(population=6, generations=2, crossover=4, mutation=4),
                 profiles=p.profiles).run()
    st = res.report["operator_stats"]
    assert st["valid"] == 0 and st["retries"] > 0
    assert st["fallbacks"] == 2 + 2 * (2 + 2)  # init (6 - 4 priors) + 2 gens x (2 crossover + 2 mutation)
    assert res.report["budget"]["total_evals"] >= 6 + 2 * 7


def test_moves_and_crossover_parse():
    moves, events = parse_moves('ok: {"moves": [{"from": 2, "to": 9, "part": "mlp", "pct": "5%"}, [1, 40, 3]]}', 30, 3)
    assert len(moves) == 1 and moves[0].amount == pytest.approx(0.05) and "coerced" in events and "bad-move" in events
    with pytest.raises(ReplyError):
        parse_moves('{"moves": [{"from": 3, "to": 3, "pct": 5}]}', 30, 3)
    a, b, take, _ = parse_crossover("{'a': 2, 'b': 5, 'take': 'ab-ba-a',}", 8, 5)
    assert (a, b, take) == (1, 4, "ABBAA")


def test_llm_moves_improve_on_synthetic(space):
    """Sensible moves (from important early layers to unimportant middle ones) are applied."""
    p = synthetic_problem(30)
    backend = Scripted(['{"moves": [{"from": 0, "to": 14, "part": "both", "pct": 10}]}',
                        '{"a": 1, "b": 2, "take": "ABABA"}'])
    op = LLMOperator(backend, settings=LLMSettings(init_share=0.0, share=1.0, batch=2))
    res = Search(space, p.fitness, op, SearchConfig(population=2, generations=1, crossover=0, mutation=1),
                 profiles=p.profiles).run()
    assert res.report["origins"]["llm-mutate"]["evaluated"] == 1
    assert res.report["origins"]["llm-mutate"]["best"] == 1


class Echo(ChatBackend):
    """A model that answers every prompt with the example answer the prompt ends with."""

    name = "echo"

    def chat(self, messages, n=1, **kw):
        prompt = messages[-1]["content"]
        return [Reply(prompt.rstrip().rsplit("like ", 1)[1], 50, 10) for _ in range(n)]


def test_replies_that_are_the_prompts_example_answer_are_counted_and_kept(space):
    p = synthetic_problem(30)
    op = LLMOperator(Echo(), settings=LLMSettings(init_share=0.0, share=1.0, batch=4, retries=0))
    res = Search(space, p.fitness, op, SearchConfig(population=6, generations=2, crossover=4, mutation=4),
                 profiles=p.profiles).run()
    st = res.report["operator_stats"]
    # A crossover prompt is one call for all 4 children: its echoes are one distinct reply and 3 repeats.
    # A mutation prompt is one call per parent (4 replies): one distinct echo each, the rest repeats.
    assert st["example_answers"] == {"crossover": 2, "mutate": 2} and st["distinct"] == 4
    assert st["repeats"] == 12 and st["copies"] == 0
    assert res.report["origins"]["llm-mutate"]["evaluated"] == 2  # kept: on its parent it is a new genome
    from selfprune.cli.search import format_report

    assert "of them the prompt's own example answer: 2 moves, 2 crossovers; kept" in format_report(res.report)
