"""The three kinds of reply the LLM operator asks for, one object each: the prompt it is asked with,
the JSON schema a structured backend holds it to, the fill-in template a constrained decoder
follows, the parser that reads it (replies.py), and its token budget.

* ``SHAPE`` (initial population): control points over depth of the attention and MLP rates.
* ``CROSSOVER``: two parents of the shown candidates and a segment pattern like "ABBAB".
* ``MOVES`` (mutation): up to a few "move X points from layer i to layer j" edits of a parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any, Callable

from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.llm.constrained import crossover_template, moves_template, shape_template
from selfprune.evolution.llm.replies import parse_crossover, parse_moves, parse_shape


def load_prompt(name: str) -> Template:
    return Template(resources.files("selfprune.evolution.llm").joinpath(f"prompts/{name}.txt").read_text())


_INT_LIST = {"type": "array", "items": {"type": "integer"}}
_SHAPE_SCHEMA = {
    "type": "object", "properties": {"attn": _INT_LIST, "mlp": _INT_LIST},
    "required": ["attn", "mlp"], "additionalProperties": False,
}
_JOINT_SCHEMA = {
    "type": "object", "properties": {"rates": _INT_LIST}, "required": ["rates"], "additionalProperties": False,
}
_MOVES_SCHEMA = {
    "type": "object",
    "properties": {"moves": {"type": "array", "items": {
        "type": "object",
        "properties": {"from": {"type": "integer"}, "to": {"type": "integer"},
                       "part": {"type": "string", "enum": ["attn", "mlp", "both"]}, "pct": {"type": "integer"}},
        "required": ["from", "to", "part", "pct"], "additionalProperties": False}}},
    "required": ["moves"], "additionalProperties": False,
}
_CROSSOVER_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "take": {"type": "string"}},
    "required": ["a", "b", "take"], "additionalProperties": False,
}


@dataclass(frozen=True)
class ReplyKind:
    name: str  # the operator's counters and transcript key it
    prompt: str  # prompts/<prompt>.txt
    schema_for: Callable[[GenomeSpace], dict]  # the JSON schema of a reply, for the search space
    template: Callable[..., list]  # the fill-in-the-blanks template of a reply (constrained.py)
    parse: Callable[..., Any]  # the tolerant parser (replies.py); raises ReplyError
    tokens: str  # the LLMSettings field holding the reply's token budget

    def load(self) -> Template:
        return load_prompt(self.prompt)


SHAPE = ReplyKind("initial", "initial", lambda space: _JOINT_SCHEMA if space.joint else _SHAPE_SCHEMA,
                  shape_template, parse_shape, "shape_tokens")
CROSSOVER = ReplyKind("crossover", "crossover", lambda space: _CROSSOVER_SCHEMA, crossover_template, parse_crossover,
                      "crossover_tokens")
MOVES = ReplyKind("mutate", "mutate", lambda space: _MOVES_SCHEMA, moves_template, parse_moves, "move_tokens")
KINDS = (SHAPE, CROSSOVER, MOVES)
