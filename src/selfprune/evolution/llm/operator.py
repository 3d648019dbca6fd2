"""The LLM operator: an LLM writes initial shapes, picks parents for crossover and proposes
mutations, behind the same interface as the classical operators.

What a small model can do reliably is kept small: a shape is a handful of control points over
depth (percent integers), a mutation is one to three "move X points of pruning from layer i to
layer j" edits of a parent, a crossover is two parent ids and a segment pattern like "ABBAB".
The prompts carry what an expert would look at: per-layer importance from the calibration pass
and the history of which moves helped. Replies are parsed tolerantly and then repaired like any
genome; unusable replies are retried once as a batch, replies that repeat an earlier one or copy
an example shape are dropped, and what is still missing comes from the classical operator. A move
or crossover that is the prompt's own example answer is kept (on this parent it is still a new
genome) and counted. Every call, reply, failure reason, repeat, copy and fallback is counted and
transcribed.

The server of an OpenAI-compatible backend may fail a request (an HTTP error, a timeout, a body
that is not a chat completion): each fault is counted by kind, the request is asked again after a
growing pause a bounded number of times, and a call that still gets nothing is written by the
classical operator. ``down_after`` such calls in a row stop the search with one line naming
``--resume`` (the checkpoint keeps every finished generation).

Slow calls go where they pay: the initial population, a share of each generation's offspring,
and all mutations while the search is stalled.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from selfprune.errors import SelfpruneError
from selfprune.evolution.llm.backends import ChatBackend, Reply, ServerFault
from selfprune.evolution.llm.kinds import CROSSOVER, KINDS, MOVES, SHAPE, ReplyKind, load_prompt
from selfprune.evolution.llm.replies import ReplyError, extract_json
from selfprune.evolution.operators.base import Operator
from selfprune.evolution.options import SearchOptions
from selfprune.evolution.operators.classic import GAOperator, tournament
from selfprune.evolution.operators.seeds import filler, seed_proposals
from selfprune.evolution.operators.types import Context, Individual, Proposal


@dataclass
class LLMSettings:
    """How the LLM operator works. What a search's options set (``--llm-share``) takes its default from
    ``SearchOptions``; the rest are the operator's own."""

    init_share: float = 1.0  # share of the initial population (after the seeds) the LLM writes
    share: float = SearchOptions.model_fields["llm_share"].default  # share of each generation's offspring
    plateau: int = 2  # generations without improvement after which the LLM writes all mutations
    retries: int = 1  # extra batches asked for when replies are unusable
    batch: int = 8  # replies per call (sampled together)
    points: int = 5  # control points over depth for shapes
    max_moves: int = 3
    temperature: float = 0.9
    crossover: bool = True  # the LLM also picks parents and segments for crossover
    constrained: bool = True  # fill-in-the-blanks decoding where the backend supports it
    shape_tokens: int = 64
    move_tokens: int = 80
    crossover_tokens: int = 40
    # Server faults: a failed request is asked again up to server_retries times, after backoff,
    # 2 * backoff, ... seconds; down_after calls in a row that get no reply stop the search.
    server_retries: int = 2
    backoff: float = 0.5
    down_after: int = 3

    @classmethod
    def from_options(cls, options: SearchOptions) -> "LLMSettings":
        return cls(share=options.llm_share)


# Settings that say how to wait for a server, not what the search does: a resume may change them.
_NOT_SETUP = ("server_retries", "backoff", "down_after")


class LLMOperator(Operator):
    name = "llm"

    def __init__(self, backend: ChatBackend, fallback: Operator | None = None, settings: LLMSettings | None = None):
        self.backend = backend
        self.fallback = fallback or GAOperator()
        self.s = settings or LLMSettings()
        self.system = load_prompt("system").template.strip()
        self.prompts = {kind.name: kind.load() for kind in KINDS}
        self.counters: dict[str, Any] = {
            "calls": 0, "replies": 0, "valid": 0, "invalid": {}, "retries": 0, "fallbacks": 0,
            # Valid replies that said nothing new: the same as an earlier reply to the same prompt,
            # or a copy of an example shape the prompt showed. Dropped (the GA fills in) and counted.
            "distinct": 0, "repeats": 0, "copies": 0,
            # Distinct moves and crossovers that are the prompt's own example answer: kept, counted,
            # since a small model may answer with the example instead of a choice of its own.
            "example_answers": {"crossover": 0, "mutate": 0},
            # Batches of two or more replies, sampled with different seeds, that are all the same
            # text: the LLM is not sampling (a server that decodes greedily) or has collapsed.
            "identical_batches": 0,
            "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0,
            "by_kind": {kind.name: {"replies": 0, "valid": 0} for kind in KINDS},
            # Faulty answers of the server by kind (http_500, timeout, not_json, ...), requests asked
            # again after one, and calls that got too few replies (the classical operator wrote the rest).
            "server_faults": {}, "server_retries": 0, "failed_calls": 0,
        }
        self._down = 0  # calls in a row that got no reply

    # ---- bookkeeping ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        c = self.counters
        out = dict(c)
        out["valid_rate"] = c["valid"] / c["replies"] if c["replies"] else None
        out["seconds_per_reply"] = c["seconds"] / c["replies"] if c["replies"] else None
        out["backend"] = self.backend.name
        out["structured"] = getattr(self.backend, "structured", None)
        out["settings"] = asdict(self.s)
        return out

    def setup(self) -> dict[str, Any]:
        return {"llm": self.backend.name, **{f"llm_{k}": v for k, v in asdict(self.s).items() if k not in _NOT_SETUP}}

    def state_dict(self) -> dict[str, Any]:
        return {"counters": self.counters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters = {**self.counters, **state["counters"]}  # a checkpoint from before a counter existed
        self._down = 0  # a resumed search gives the server a fresh start

    def _ask(self, ctx: Context, reply_kind: ReplyKind, prompt: str | Callable[[list[str]], str], n: int,
             parse: Callable[[str], Proposal], template: list | None = None,
             examples: tuple[str, ...] = ()) -> list[Proposal]:
        """Ask for ``n`` replies of ``reply_kind`` (in batches, with retries) and read them into proposals
        with ``parse``; returns the new proposals that could be read, at most ``n``. ``prompt`` may be a
        function of the replies accepted so far (so a later batch is shown what was already proposed);
        replies equal to an earlier one or to one of ``examples`` are counted and dropped; replies equal
        to the example answer a fixed prompt ends with are counted and kept."""
        kind = reply_kind.name
        schema, max_tokens = reply_kind.schema_for(ctx.space), getattr(self.s, reply_kind.tokens)
        out: list[Proposal] = []
        seen = {_canonical(e) for e in examples}
        answer = None if callable(prompt) else prompt_example(prompt)
        accepted: list[str] = []
        for attempt in range(1 + self.s.retries):
            missing = n - len(out)
            if missing <= 0:
                break
            if attempt:
                self.counters["retries"] += 1
            while missing > 0:
                size = min(missing, self.s.batch)
                text = prompt(accepted) if callable(prompt) else prompt
                messages = [{"role": "system", "content": self.system}, {"role": "user", "content": text}]
                seed = int(ctx.rng.integers(2**31))
                t0 = time.perf_counter()
                replies, faults = self._chat(messages, size, max_tokens, seed, schema, self._template(template))
                seconds = time.perf_counter() - t0
                self.counters["calls"] += 1
                if len(replies) > 1 and self.s.temperature > 0 and len({r.text.strip() for r in replies}) == 1:
                    self.counters["identical_batches"] += 1
                self.counters["seconds"] += seconds
                outcomes = []
                for reply in replies:
                    self.counters["replies"] += 1
                    self.counters["by_kind"][kind]["replies"] += 1
                    self.counters["prompt_tokens"] += reply.prompt_tokens
                    self.counters["completion_tokens"] += reply.completion_tokens
                    for fault in reply.faults:
                        self._count_fault(fault)
                    try:
                        prop = parse(reply.text)
                    except ReplyError as err:
                        self.counters["invalid"][err.reason] = self.counters["invalid"].get(err.reason, 0) + 1
                        outcomes.append(err.reason)
                        continue
                    self.counters["valid"] += 1
                    self.counters["by_kind"][kind]["valid"] += 1
                    key = _canonical(reply.text)
                    if key in seen:
                        copy = key in {_canonical(e) for e in examples}
                        self.counters["copies" if copy else "repeats"] += 1
                        outcomes.append("copy of an example" if copy else "repeat")
                        continue
                    seen.add(key)
                    self.counters["distinct"] += 1
                    notes = list(prop.events)
                    if answer is not None and key == answer and kind in self.counters["example_answers"]:
                        self.counters["example_answers"][kind] += 1
                        notes.append("the prompt's example answer")
                    outcomes.append("ok" + (f" ({', '.join(notes)})" if notes else ""))
                    if len(out) < n:
                        out.append(prop)
                        accepted.append(key)
                record = {"kind": kind, "backend": self.backend.name, "seed": seed, "prompt": text,
                          "replies": [r.text for r in replies], "reply_chars": [r.chars for r in replies],
                          "outcomes": outcomes, "seconds": round(seconds, 3),
                          "prompt_tokens": sum(r.prompt_tokens for r in replies),
                          "completion_tokens": sum(r.completion_tokens for r in replies)}
                if faults:
                    record["server_faults"] = [str(f) for f in faults]
                ctx.log(record)
                self._down = 0 if replies else self._down + 1
                if len(replies) < size:  # the server failed the call: the classical operator writes the rest
                    self._server_failed(faults[-1])
                    return out
                missing -= size
        return out

    def _chat(self, messages: list[dict], size: int, max_tokens: int, seed: int, schema: dict,
              template: list | None) -> tuple[list[Reply], list[ServerFault]]:
        """Up to ``size`` replies, and the server faults met: after a fault the missing replies are
        asked again, after a growing pause, up to ``server_retries`` times (a timeout is not: it
        has already waited the backend's whole timeout)."""
        replies: list[Reply] = []
        faults: list[ServerFault] = []
        for attempt in range(1 + self.s.server_retries):
            if attempt:
                self.counters["server_retries"] += 1
                time.sleep(self.s.backoff * 2 ** (attempt - 1))
            try:
                replies += self.backend.chat(messages, n=size - len(replies), max_tokens=max_tokens,
                                             temperature=self.s.temperature, seed=seed + len(replies),
                                             schema=schema, template=template)
                break
            except ServerFault as fault:
                replies += fault.replies
                faults.append(fault)
                self._count_fault(fault.kind)
                if not fault.retry:
                    break
        return replies, faults

    def _count_fault(self, kind: str) -> None:
        self.counters["server_faults"][kind] = self.counters["server_faults"].get(kind, 0) + 1

    def _server_failed(self, fault: ServerFault) -> None:
        """Say that a call failed; after ``down_after`` calls in a row without a reply, stop."""
        self.counters["failed_calls"] += 1
        where = getattr(self.backend, "where", self.backend.name)
        if self._down >= self.s.down_after:
            fix = ("if it is only slow, raise --llm-timeout" if fault.kind == "timeout"
                   else "restart or fix the server")
            raise SelfpruneError(f"the operator LLM server at {where} failed {self._down} calls in a row "
                                 f"(last: {fault}); {fix}, then run the same command with --resume to continue "
                                 "from the last finished generation")
        print(f"operator LLM: the server at {where} failed a call ({fault}); the classical operator writes "
              "its proposals", flush=True)

    def _fill(self, got: list[Proposal], wanted: int, make: Callable[[int], list[Proposal]], kind: str) -> list[Proposal]:
        """Replace what the LLM did not deliver with classical proposals, counted as fallbacks."""
        short = wanted - len(got)
        if short <= 0:
            return got
        self.counters["fallbacks"] += short
        extra = make(short)
        for p in extra:
            p.origin = f"fallback-{kind}"
        return got + extra

    def _template(self, template: list | None) -> list | None:
        return template if self.s.constrained and getattr(self.backend, "supports_templates", False) else None

    def _llm_count(self, ctx: Context, n: int, kind: str) -> int:
        if kind == "mutate" and ctx.stalled >= self.s.plateau:
            return n
        if kind == "crossover" and not self.s.crossover:
            return 0
        return int(round(self.s.share * n))

    # ---- prompt pieces ----------------------------------------------------------------------
    def _importance(self, ctx: Context, key: str, points: int | None = None) -> str:
        imp = ctx.profiles.get(key)
        if imp is None:
            return "(not measured)"
        imp = np.asarray(imp, dtype=float)
        if points:
            imp = _segment_means(imp, points)
        span = imp.max() - imp.min()
        digits = np.zeros(imp.size, dtype=int) if span <= 0 else np.round(9 * (imp - imp.min()) / span).astype(int)
        return " ".join(map(str, digits))

    def _points(self, vec: np.ndarray, ctx: Context, segments: int) -> tuple[list[int], list[int]]:
        x = ctx.space.expand(np.asarray(vec, dtype=float))
        L = ctx.space.num_layers
        seg = lambda v: [int(round(100 * m)) for m in _segment_means(v, segments)]  # noqa: E731
        return seg(x[:L]), seg(x[L:])

    def _format(self, attn: list[int], mlp: list[int], joint: bool) -> str:
        if joint:
            return '{"rates": [' + ", ".join(str(round((a + m) / 2)) for a, m in zip(attn, mlp)) + "]}"
        return '{"attn": [' + ", ".join(map(str, attn)) + '], "mlp": [' + ", ".join(map(str, mlp)) + "]}"

    # ---- operator ---------------------------------------------------------------------------
    def initial(self, ctx: Context, n: int) -> list[Proposal]:
        """The shared start's head (the priors, or uniform under ``init=noise``), then shapes the
        LLM writes where the other operators have the shared filler."""
        space, k = ctx.space, self.s.points
        heads = seed_proposals(ctx)[:n]
        want = int(round(self.s.init_share * (n - len(heads))))
        # The examples are the head of the shared start as control points (seeded: the priors, i.e.
        # uniform, OWL, importance-derived shapes, block removal; noise: uniform alone), so the prompt carries no
        # prior the other operators do not start from.
        examples = tuple(self._format(*self._points(p.vector, ctx, k), space.joint) for p in seed_proposals(ctx))
        lo, hi = space.bounds
        fields = dict(
            num_layers=space.num_layers, target_pct=int(round(100 * space.target)), low_pct=int(round(100 * lo)),
            high_pct=int(round(100 * hi)), points=k,
            attn_importance=self._importance(ctx, "attn_importance", k),
            mlp_importance=self._importance(ctx, "mlp_importance", k),
            examples="\n".join(examples),
            example_names="uniform" if ctx.init == "noise" else "uniform, OWL, and shapes from the importance above",
            format='{"rates": [...]}' if space.joint else '{"attn": [...], "mlp": [...]}',
        )

        def prompt(accepted: list[str]) -> str:
            shown = accepted[-6:]
            already = ("\nAlready proposed (write a shape different from all of these):\n" + "\n".join(shown) + "\n"
                       if shown else "")
            return self.prompts[SHAPE.name].substitute(fields, already=already)

        def parse(text: str) -> Proposal:
            vec, events = SHAPE.parse(text, space, k)
            return Proposal(vec, "llm-init", events=tuple(events))

        got = self._ask(ctx, SHAPE, prompt, want, parse,
                        SHAPE.template(k, space.joint, fields["low_pct"], fields["high_pct"]),
                        examples=examples) if want else []
        got = self._fill(got, want, lambda m: filler(ctx, m, heads), "init")
        rest = n - len(heads) - want
        return heads + got + (filler(ctx, rest, heads) if rest > 0 else [])

    def crossover(self, ctx: Context, n: int) -> list[Proposal]:
        want = min(n, self._llm_count(ctx, n, "crossover"))
        got: list[Proposal] = []
        if want and len(ctx.population) >= 2:
            shown = ctx.population[: min(8, len(ctx.population))]
            segments = self.s.points
            lines = []
            for i, ind in enumerate(shown, 1):
                a, m = self._points(ind.genome.vector, ctx, segments)
                lines.append(f"{i}: {ctx.fitness_name} {ind.fitness:.4g}; attn {' '.join(map(str, a))}; mlp {' '.join(map(str, m))}")
            prompt = self.prompts[CROSSOVER.name].substitute(
                num_layers=ctx.space.num_layers, segments=segments, candidates="\n".join(lines),
                fitness_name=ctx.fitness_name,
                ex_take="AB" * (segments // 2) + "A" * (segments % 2),
            )

            def parse(text: str) -> Proposal:
                ia, ib, pattern, events = CROSSOVER.parse(text, len(shown), segments)
                return self._mix(ctx, shown[ia], shown[ib], pattern, events)

            got = self._ask(ctx, CROSSOVER, prompt, want, parse, CROSSOVER.template(segments, len(shown)))
            got = self._fill(got, want, lambda m: self.fallback.crossover(ctx, m), "crossover")
        return got + (self.fallback.crossover(ctx, n - len(got)) if n > len(got) else [])

    def _mix(self, ctx: Context, a: Individual, b: Individual, pattern: str, events: list[str]) -> Proposal:
        L = ctx.space.num_layers
        from_b = np.zeros(L, dtype=bool)
        for seg, ch in zip(np.array_split(np.arange(L), len(pattern)), pattern):
            from_b[seg] = ch == "B"
        mask = from_b if ctx.space.joint else np.concatenate([from_b, from_b])
        vec = np.where(mask, np.array(b.genome.vector), np.array(a.genome.vector))
        return Proposal(vec, "llm-crossover", (a.id, b.id), events=tuple(events))

    def mutate(self, ctx: Context, n: int) -> list[Proposal]:
        want = min(n, self._llm_count(ctx, n, "mutate"))
        got: list[Proposal] = []
        per_prompt = 4  # replies per parent: one batched call each
        for i in range(-(-want // per_prompt)):
            parent = ctx.best if i == 0 else tournament(ctx.population, ctx.rng)
            got += self._mutate_one(ctx, parent, min(per_prompt, want - i * per_prompt))
        got = self._fill(got, want, lambda m: self.fallback.mutate(ctx, m), "mutate")
        return got + (self.fallback.mutate(ctx, n - len(got)) if n > len(got) else [])

    def _mutate_one(self, ctx: Context, parent: Individual, count: int) -> list[Proposal]:
        space = ctx.space
        L = space.num_layers
        x = space.expand(np.array(parent.genome.vector))
        pct = lambda v: " ".join(str(int(round(100 * r))) for r in v)  # noqa: E731
        ex_from, ex_to = self._example_move(ctx)
        prompt = self.prompts[MOVES.name].substitute(
            num_layers=L, attn_rates=pct(x[:L]), mlp_rates=pct(x[L:]),
            fitness=f"{parent.fitness:.4g}", best=f"{ctx.best.fitness:.4g}",
            attn_importance=self._importance(ctx, "attn_importance"),
            mlp_importance=self._importance(ctx, "mlp_importance"),
            history=self._history(ctx), max_moves=self.s.max_moves, last_layer=L - 1, fitness_name=ctx.fitness_name,
            ex_from=ex_from, ex_to=ex_to,
        )

        def parse(text: str) -> Proposal:
            moves, events = MOVES.parse(text, L, self.s.max_moves)
            vec = np.array(parent.genome.vector, dtype=float)
            for mv in moves:
                vec = mv.apply(vec, space)
            return Proposal(vec, "llm-mutate", (parent.id,), tuple(moves), tuple(events))

        return self._ask(ctx, MOVES, prompt, count, parse, MOVES.template(self.s.max_moves, L))

    def _example_move(self, ctx: Context) -> tuple[int, int]:
        """A plausible example: from the most to the least important layer (by MLP importance)."""
        imp = ctx.profiles.get("mlp_importance")
        if imp is None:
            return 1, ctx.space.num_layers - 2
        imp = np.asarray(imp)
        return int(imp.argmax()), int(imp.argmin())

    def _history(self, ctx: Context, shown: int = 6) -> str:
        records = [r for r in ctx.moves if r.moves]
        if not records:
            return "(none yet)"
        records = sorted(records, key=lambda r: -r.gain)
        pick = records[: shown // 2] + [r for r in records[-(shown // 2):] if r not in records[: shown // 2]]
        lines = []
        for r in pick:
            desc = ", ".join(f"from {m.src} to {m.dst} {m.part} {int(round(100 * m.amount))}" for m in r.moves)
            lines.append(f"{desc}: {ctx.fitness_name} {-100 * r.gain:+.1f}%")
        return "\n".join(lines)


def _segment_means(values: np.ndarray, segments: int) -> np.ndarray:
    """The mean of each of ``segments`` consecutive parts of ``values``; a model with fewer layers than
    segments gives empty parts, which take the value interpolated at their depth instead of NaN."""
    values = np.asarray(values, dtype=float)
    centers = (np.arange(segments) + 0.5) * values.size / segments - 0.5
    return np.array([part.mean() if part.size else np.interp(c, np.arange(values.size), values)
                     for part, c in zip(np.array_split(values, segments), centers)])


def prompt_example(prompt: str) -> str | None:
    """The example answer a prompt ends with (``... like {JSON}``), canonical, or None."""
    tail = prompt.rstrip().rsplit("like ", 1)
    if len(tail) != 2:
        return None
    try:
        return canonical_json(json.loads(tail[1]))
    except ValueError:
        return None


def canonical_json(value: Any) -> str:
    """A JSON value as one string, independent of spacing and key order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _canonical(text: str) -> str:
    """A reply's content, independent of spacing and key order (the text itself if no JSON)."""
    try:
        return canonical_json(extract_json(text))
    except ReplyError:
        return text.strip()
