"""Reply templates produce only what the parsers accept: random walks through the template decoder
(every step picks any allowed token) and the null backend's random fills, decoded by the parsers."""

import numpy as np
import pytest

from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.llm.constrained import (TemplateDecoder, crossover_template, moves_template, random_fill,
                                                 shape_template)
from selfprune.evolution.llm.replies import parse_crossover, parse_moves, parse_shape
from synthetic import synthetic_problem


class CharTokenizer:
    """Single characters plus a few multi-character tokens, as BPE vocabularies have them."""

    def __init__(self):
        chars = [chr(c) for c in range(32, 127)]
        self.vocab = ["<eos>"] + chars + ["10", "12", "25", "99", "100", '{"', '"}', "]}", "],", "att", "mlp"]
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.eos_token_id = 0

    def __len__(self):
        return len(self.vocab)

    def encode(self, text, add_special_tokens=False):
        return [self.ids[c] for c in text]  # one token per character: always a valid encoding

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.vocab[i] for i in ids if not (skip_special_tokens and i == 0))


def walk(decoder, tok, rng, limit=400):
    """A reply sampled uniformly among the allowed tokens at every step."""
    text = ""
    for _ in range(limit):
        allowed = decoder.allowed(text)
        t = int(rng.choice(allowed))
        if t == tok.eos_token_id:
            return text
        text += tok.vocab[t]
    raise AssertionError(f"no end after {limit} tokens: {text!r}")


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


def fills(template, tok, n, seed=0):
    """``n`` replies from the decoder's random walks and ``n`` from the null backend's fill."""
    rng = np.random.default_rng(seed)
    dec = TemplateDecoder(tok, template)
    return [walk(dec, tok, rng) for _ in range(n)] + [random_fill(template, rng) for _ in range(n)]


@pytest.mark.parametrize("layers", [2, 12, 30])
def test_move_templates_always_parse(tok, layers):
    counts = set()
    for text in fills(moves_template(3, layers), tok, 150):
        moves, events = parse_moves(text, layers, 3)
        assert not events, (text, events)  # no move dropped, nothing coerced
        counts.add(len(moves))
        for m in moves:
            assert m.src != m.dst and 0 <= m.src < layers and 0 <= m.dst < layers
            assert 0.01 <= m.amount <= 0.20 and m.part in ("attn", "mlp", "both")
    assert counts == {1, 2, 3}  # the model chooses how many moves


@pytest.mark.parametrize("candidates", [2, 8, 12])
def test_crossover_templates_always_parse(tok, candidates):
    for text in fills(crossover_template(5, candidates), tok, 150):
        a, b, take, events = parse_crossover(text, candidates, 5)
        assert a != b and 0 <= a < candidates and 0 <= b < candidates and len(take) == 5 and not events


@pytest.mark.parametrize("joint, low, high", [(False, 0, 90), (True, 0, 90), (False, 10, 60)])
def test_shape_templates_always_parse_as_percent(tok, joint, low, high):
    p = synthetic_problem(12)
    space = GenomeSpace.from_problem(p, 0.3, bounds=(low / 100, high / 100), joint=joint)
    for text in fills(shape_template(5, joint, low, high), tok, 100):
        vec, events = parse_shape(text, space, 5)
        assert not events, (text, events)
        # Read as percent within the bounds (never as fractions: all values are at least 2).
        assert vec.min() >= max(low, 2) / 100 - 1e-9 and vec.max() <= high / 100 + 1e-9


def test_no_leading_zeros_or_forbidden_values(tok):
    dec = TemplateDecoder(tok, moves_template(1, 30))
    allowed = lambda s: {tok.vocab[t] for t in dec.allowed(s)}  # noqa: E731
    assert "0" not in allowed('{"moves":[{"from":4,"to":5,"part":"mlp","pct":')  # pct >= 1
    assert "4" not in allowed('{"moves":[{"from":4,"to":')  # to != from
    assert allowed('{"moves":[{"from":0') == {","}  # "05" is not JSON: after a 0 the slot closes
    assert allowed('{"moves":[{"from":4,"to":5,"part":"mlp","pct":20') == {"}"}  # pct <= 20


def test_templates_parse_with_the_default_models_own_tokenizer(default_model_dir):
    """The same random walks over the real SmolLM2 vocabulary (its multi-digit and multi-character
    tokens), as the model itself decodes: every reply parses, with nothing coerced."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    rng = np.random.default_rng(0)
    space = GenomeSpace.from_problem(synthetic_problem(30), 0.3)

    def replies(template, n=60):
        dec = TemplateDecoder(tok, template)
        out = []
        for _ in range(n):
            ids = []
            for _ in range(400):
                t = int(rng.choice(dec.allowed(tok.decode(ids))))
                if t == tok.eos_token_id:
                    break
                ids.append(t)
            else:
                raise AssertionError(f"no end: {tok.decode(ids)!r}")
            out.append(tok.decode(ids))
        return out

    counts = set()
    for text in replies(moves_template(3, 30)):
        moves, events = parse_moves(text, 30, 3)
        assert not events, (text, events)
        counts.add(len(moves))
    assert counts == {1, 2, 3}
    for text in replies(crossover_template(5, 8)):
        a, b, take, events = parse_crossover(text, 8, 5)
        assert a != b and len(take) == 5 and not events
    for text in replies(shape_template(5, False, 0, 90)):
        vec, events = parse_shape(text, space, 5)
        assert vec.shape == (60,) and not events, (text, events)
