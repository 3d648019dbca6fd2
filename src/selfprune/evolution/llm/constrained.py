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
    """A non-negative integer slot of 1 to ``digits`` digits, at most ``max_value``."""

    digits: int = 2
    max_value: int | None = None


@dataclass(frozen=True)
class Choice:
    """One of a few words (none a prefix of another)."""

    options: tuple[str, ...]


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
                m = re.match(r"\d*", rest)
                n = len(m.group(0))
                if n < len(rest):  # the slot is closed by what follows
                    p += n
                    continue
                allowed = [t for t, d in self.digits.items() if n + len(d) <= part.digits
                           and (part.max_value is None or int(rest + d) <= part.max_value)]
                if n >= 1:
                    allowed += self._starts(k + 1)
                return allowed
            # Choice
            done = next((o for o in part.options if rest.startswith(o)), None)
            if done is not None and len(rest) > len(done):
                p += len(done)
                continue
            if done is not None:  # complete, nothing after it yet
                return self._starts(k + 1)
            return sorted({self._first(o[len(rest):]) for o in part.options if o.startswith(rest)}) or [self.eos]
        return [self.eos]

    def _starts(self, k: int) -> list[int]:
        """Tokens that can begin template part ``k`` (end of reply: EOS)."""
        if k >= len(self.template):
            return [self.eos]
        part = self.template[k]
        if isinstance(part, str):
            return [self._first(part)]
        if isinstance(part, Num):
            return [t for t, d in self.digits.items() if len(d) <= part.digits
                    and (part.max_value is None or int(d) <= part.max_value)]
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


def join_numbers(count: int, digits: int = 2) -> list[Part]:
    """``N,N,...,N``: ``count`` number slots separated by commas."""
    parts: list[Part] = []
    for i in range(count):
        if i:
            parts.append(",")
        parts.append(Num(digits))
    return parts


def shape_template(points: int, joint: bool) -> list[Part]:
    """Percent rates at ``points`` depths (at most 99, two digits)."""
    if joint:
        return ['{"rates":[', *join_numbers(points), "]}"]
    return ['{"attn":[', *join_numbers(points), '],"mlp":[', *join_numbers(points), "]}"]


def moves_template(moves: int, num_layers: int, max_pct: int = 20) -> list[Part]:
    layer = Num(len(str(num_layers - 1)), num_layers - 1)
    parts: list[Part] = ['{"moves":[']
    for i in range(moves):
        parts += [("," if i else "") + '{"from":', layer, ',"to":', layer, ',"part":"',
                  Choice(("attn", "mlp", "both")), '","pct":', Num(2, max_pct), "}"]
    return parts + ["]}"]


def crossover_template(segments: int, candidates: int) -> list[Part]:
    pick = Num(len(str(candidates)), candidates)
    return ['{"a":', pick, ',"b":', pick, ',"take":"', *[Choice(("A", "B")) for _ in range(segments)], '"}']
