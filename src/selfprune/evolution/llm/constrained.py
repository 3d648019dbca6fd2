"""Fill-in-the-blanks decoding for small local operator models.

A 135M model asked for JSON mostly writes prose or code. With a *reply template* the fixed parts
of the JSON are forced token by token and the model only chooses what matters: the digits of
each number slot and one of a few words in each choice slot. Every reply then parses; whether
its content is any good is left to the fitness. Implemented as ``prefix_allowed_tokens_fn`` for
transformers ``generate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Num:
    """An integer slot from ``min_value`` to ``max_value`` (default: all of ``digits`` digits),
    written without leading zeros (JSON has none). ``unlike``: a negative offset to an earlier
    Num part of the template whose value this one must differ from (from != to, a != b)."""

    digits: int = 2
    max_value: int | None = None
    min_value: int = 0
    unlike: int = 0

    def legal(self, other: int | None = None) -> list[str]:
        top = 10 ** self.digits - 1 if self.max_value is None else min(self.max_value, 10 ** self.digits - 1)
        return [str(v) for v in range(self.min_value, top + 1) if v != other]


@dataclass(frozen=True)
class Choice:
    """One of a few words (none a prefix of another). Choosing one of ``stop`` ends the reply:
    how a template offers a variable number of items (``"]}"`` or ``","`` and one more)."""

    options: tuple[str, ...]
    stop: tuple[str, ...] = ()


Part = str | Num | Choice  # a str is literal text


class TemplateDecoder:
    """Builds the allowed-token function for one template and one tokenizer."""

    def __init__(self, tokenizer: Any, template: Sequence[Part], digits: dict[int, str] | None = None):
        self.tok = tokenizer
        self.template = list(template)
        self.eos = tokenizer.eos_token_id
        self.digits = digits if digits is not None else digit_tokens(tokenizer)
        self._first_cache: dict[str, int] = {}

    def _first(self, text: str) -> int:
        if text not in self._first_cache:
            self._first_cache[text] = self.tok.encode(text, add_special_tokens=False)[0]
        return self._first_cache[text]

    def allowed(self, generated: str) -> list[int]:
        """Token ids allowed after ``generated`` (the reply so far)."""
        p = 0
        values: dict[int, int] = {}  # part index -> value of a completed Num
        for k, part in enumerate(self.template):
            rest = generated[p:]
            if isinstance(part, str):
                if rest.startswith(part):
                    p += len(part)
                    continue
                if part.startswith(rest):
                    return [self._first(part[len(rest):])]
                return [self.eos]  # off the template (cannot happen with forced tokens)
            if isinstance(part, Num):
                n = len(re.match(r"\d*", rest).group(0))
                legal = self._legal(k, values)
                if n < len(rest):  # the slot is closed by what follows
                    values[k] = int(rest[:n]) if n else -1
                    p += n
                    continue
                allowed = [t for t, d in self.digits.items() if any(v.startswith(rest + d) for v in legal)]
                if rest in legal:
                    allowed += self._starts(k + 1, values | {k: int(rest)})
                return sorted(set(allowed)) or [self.eos]
            # Choice
            done = next((o for o in part.options if rest.startswith(o)), None)
            if done is not None and done in part.stop:
                return [self.eos]
            if done is not None and len(rest) > len(done):
                p += len(done)
                continue
            if done is not None:  # complete, nothing after it yet
                return self._starts(k + 1, values)
            return sorted({self._first(o[len(rest):]) for o in part.options if o.startswith(rest)}) or [self.eos]
        return [self.eos]

    def _legal(self, k: int, values: dict[int, int]) -> list[str]:
        part = self.template[k]
        return part.legal(values.get(k + part.unlike) if part.unlike else None)

    def _starts(self, k: int, values: dict[int, int]) -> list[int]:
        """Tokens that can begin template part ``k`` (end of reply: EOS)."""
        if k >= len(self.template):
            return [self.eos]
        part = self.template[k]
        if isinstance(part, str):
            return [self._first(part)]
        if isinstance(part, Num):
            legal = self._legal(k, values)
            return [t for t, d in self.digits.items() if any(v.startswith(d) for v in legal)]
        return sorted({self._first(o) for o in part.options})

    def prefix_fn(self, prompt_len: int) -> Callable[[int, Any], list[int]]:
        def fn(batch_id: int, input_ids) -> list[int]:
            return self.allowed(self.tok.decode(input_ids[prompt_len:].tolist(), skip_special_tokens=True))

        return fn

    @property
    def max_tokens(self) -> int:
        """An upper bound on the reply's length in tokens."""
        n = 1
        for part in self.template:
            if isinstance(part, str):
                n += len(self.tok.encode(part, add_special_tokens=False))
            elif isinstance(part, Num):
                n += part.digits
            else:
                n += max(len(self.tok.encode(o, add_special_tokens=False)) for o in part.options)
        return n


def digit_tokens(tokenizer: Any) -> dict[int, str]:
    """Token id -> text, for the tokens that are 1 to 3 digits."""
    out = {}
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        if re.fullmatch(r"\d{1,3}", text):
            out[tid] = text
    return out


def join_numbers(count: int, slot: Num) -> list[Part]:
    """``N,N,...,N``: ``count`` number slots separated by commas."""
    parts: list[Part] = []
    for i in range(count):
        if i:
            parts.append(",")
        parts.append(slot)
    return parts


def shape_template(points: int, joint: bool, low_pct: int = 0, high_pct: int = 99) -> list[Part]:
    """Percent rates at ``points`` depths, within the bounds. At least 2: a shape of only 0s and
    1s would read as fractions."""
    hi = max(2, min(99, high_pct))
    slot = Num(2, hi, min(hi, max(2, low_pct)))
    if joint:
        return ['{"rates":[', *join_numbers(points, slot), "]}"]
    return ['{"attn":[', *join_numbers(points, slot), '],"mlp":[', *join_numbers(points, slot), "]}"]


def moves_template(max_moves: int, num_layers: int, max_pct: int = 20) -> list[Part]:
    """One to ``max_moves`` moves: after each but the last the model chooses to stop or go on.
    Layers differ (from != to), pct is 1 to ``max_pct``."""
    digits = len(str(num_layers - 1))
    src, dst = Num(digits, num_layers - 1), Num(digits, num_layers - 1, unlike=-2)
    parts: list[Part] = ['{"moves":[']
    for i in range(max_moves):
        parts += ['{"from":', src, ',"to":', dst, ',"part":"', Choice(("attn", "mlp", "both")), '","pct":',
                  Num(len(str(max_pct)), max_pct, 1), "}"]
        parts.append(Choice(("]}", ","), stop=("]}",)) if i < max_moves - 1 else "]}")
    return parts


def crossover_template(segments: int, candidates: int) -> list[Part]:
    """Two different parents among ``candidates`` (1-based) and a segment pattern."""
    digits = len(str(candidates))
    return ['{"a":', Num(digits, candidates, 1), ',"b":', Num(digits, candidates, 1, unlike=-2), ',"take":"',
            *[Choice(("A", "B")) for _ in range(segments)], '"}']


def random_fill(template: Sequence[Part], rng: Any) -> str:
    """A reply with random legal values in every slot: what the null backend answers."""
    out: list[str] = []
    values: dict[int, int] = {}
    for k, part in enumerate(template):
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, Num):
            legal = part.legal(values.get(k + part.unlike) if part.unlike else None)
            text = legal[int(rng.integers(len(legal)))]
            values[k] = int(text)
            out.append(text)
        else:
            word = part.options[int(rng.integers(len(part.options)))]
            out.append(word)
            if word in part.stop:
                break
    return "".join(out)
