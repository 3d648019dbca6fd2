"""Chat backends for the LLM operator: any OpenAI-compatible endpoint, or a local transformers
model (by default the model being pruned, which is what makes the search self-pruning).

Both answer ``chat(messages, n, ...)`` with ``n`` sampled replies and count their tokens; both
are checked at construction (``check()``), so a wrong URL, model name or key fails at the start.
A server that fails a request later (any HTTP error, a timeout, a lost connection, a body that is
not a chat completion or too large) raises ``ServerFault``, which names the kind of fault; the
operator counts it, retries and falls back (see operator.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlparse

from selfprune.errors import SelfpruneError

REPLY_CHARS = 16 * 1024  # characters of a reply kept (parsed, transcribed); its full length is recorded
MAX_BODY = 1 << 20  # bytes of a server's answer read at most: a reply of <= 100 tokens needs a few kB


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chars: int = -1  # the reply's full length; ``text`` keeps at most REPLY_CHARS of it
    faults: list[str] = field(default_factory=list)  # faults of a reply that is still usable ("bad_usage")

    def __post_init__(self) -> None:
        if self.chars < 0:
            self.chars = len(self.text)
        self.text = self.text[:REPLY_CHARS]


class ServerFault(SelfpruneError):
    """A request the operator LLM's server failed. ``kind``: ``http_<status>``, ``timeout``,
    ``connection``, ``not_json``, ``malformed`` or ``oversized``; ``replies``: those of the same
    call received before it; ``retry``: whether asking again may help."""

    def __init__(self, kind: str, detail: str, replies: list[Reply] | None = None, retry: bool = True):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.replies = list(replies or [])
        self.retry = retry


class ChatBackend:
    name = "backend"

    def check(self) -> None:
        """Raise SelfpruneError when the backend cannot answer (called before the search starts)."""

    supports_templates = False  # fill-in-the-blanks decoding (see constrained.py)

    def chat(self, messages: Sequence[dict[str, str]], n: int = 1, max_tokens: int = 96,
             temperature: float = 0.8, seed: int = 0, schema: dict[str, Any] | None = None,
             template: Sequence[Any] | None = None) -> list[Reply]:
        """``n`` sampled replies. ``schema``: JSON schema for servers with structured output;
        ``template``: a reply template for backends that decode with one (others ignore it)."""
        raise NotImplementedError


# ---- OpenAI-compatible ------------------------------------------------------------------------
def _is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    return host in ("localhost", "127.0.0.1", "::1") if host else False


class OpenAIBackend(ChatBackend):
    """An OpenAI-compatible chat endpoint through the ``openai`` client.

    The key comes from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``);
    a server on loopback may run without one. Structured output (``response_format`` with a JSON
    schema) is asked for when ``structured`` is set, and dropped for good after the server rejects
    it once. Chat requests are not retried by the client: the operator retries them and counts
    each fault.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 2, structured: bool = True, check: bool = True):
        try:
            import openai
        except ImportError:  # pragma: no cover - a declared dependency
            raise SelfpruneError("the OpenAI-compatible backend needs the 'openai' package: pip install openai") from None
        self.model = model
        self.base_url = base_url
        self.where = base_url or "the OpenAI API"
        self.timeout = timeout
        self.name = f"openai:{model}"
        self.structured = structured
        key = os.environ.get(api_key_env)
        if not key:
            if not _is_loopback(base_url):
                where = f"the server at {base_url}" if base_url else "the OpenAI API"
                raise SelfpruneError(
                    f"no API key for {where}: set the environment variable {api_key_env} "
                    "(or point --llm-base-url at a local server that needs none)"
                )
            key = "none"
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        if check:
            self.check()

    def check(self) -> None:
        o = self._openai
        where = self.base_url or "the OpenAI API"
        try:
            models = [m.id for m in self.client.with_options(timeout=15, max_retries=1).models.list()]
        except o.APIConnectionError:
            raise SelfpruneError(f"cannot reach the LLM server at {where}: start it, or fix --llm-base-url") from None
        except o.AuthenticationError:
            raise SelfpruneError(f"the LLM server at {where} rejected the API key; check its environment variable") from None
        except o.APIError as exc:
            # Some servers answer chat but not /v1/models (an error, or no such route): a one-token
            # chat request then says whether the server, the model name and the key work.
            self._probe(where, exc)
            return
        except (AttributeError, TypeError, ValueError):  # the client could not read the answer as a model list
            self._probe(where, ValueError("its answer is not a model list"))
            return
        if models and self.model not in models:
            shown = ", ".join(map(str, models[:8])) + (" ..." if len(models) > 8 else "")
            raise SelfpruneError(f"model '{self.model}' is not served at {where}; available: {shown}")

    def _probe(self, where: str, models_error: Exception) -> None:
        o = self._openai
        try:
            self.client.with_options(timeout=30, max_retries=1).chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        except o.APIConnectionError:
            raise SelfpruneError(f"cannot reach the LLM server at {where}: start it, or fix --llm-base-url") from None
        except o.AuthenticationError:
            raise SelfpruneError(f"the LLM server at {where} rejected the API key; check its environment variable") from None
        except o.APIError as exc:
            raise SelfpruneError(f"the LLM server at {where} failed to list its models ({_short(models_error)}) and to "
                                 f"answer a one-token chat request for '{self.model}' ({_short(exc)})") from None

    def chat(self, messages, n=1, max_tokens=96, temperature=0.8, seed=0, schema=None, template=None):
        replies: list[Reply] = []
        for i in range(n):  # one request per reply: many servers ignore or reject n > 1
            try:
                replies.append(self._one(list(messages), max_tokens, temperature, seed + i, schema))
            except ServerFault as fault:
                fault.replies = replies
                raise
        return replies

    def _one(self, messages, max_tokens, temperature, seed, schema) -> Reply:
        o = self._openai
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, max_tokens=max_tokens,
                                      temperature=temperature, seed=seed)
        if schema is not None and self.structured:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "reply", "schema": schema, "strict": True}}
        # The operator retries and counts faults itself; the body is read as a stream so that an
        # oversized one is cut at MAX_BODY instead of held whole.
        create = self.client.with_options(max_retries=0).chat.completions.with_streaming_response.create
        deadline = time.monotonic() + self.timeout  # the client's timeout is per read; this bounds the whole body
        try:
            try:
                with create(**kwargs) as resp:
                    body = _read_bounded(resp, deadline)
            except (o.BadRequestError, o.UnprocessableEntityError):
                if "response_format" not in kwargs:
                    raise
                self.structured = False  # the server does not take JSON schemas: use the tolerant parser
                kwargs.pop("response_format")
                with create(**kwargs) as resp:
                    body = _read_bounded(resp, deadline)
        except o.APITimeoutError:
            raise ServerFault("timeout", f"no answer within {self.timeout:g} s", retry=False) from None
        except o.APIConnectionError as exc:
            raise ServerFault("connection", _short(exc)) from None
        except o.APIStatusError as exc:
            # A client error other than 408 (timeout) and 429 (rate limit) recurs on the same request.
            status = exc.status_code
            raise ServerFault(f"http_{status}", " ".join(str(exc).split())[:120],
                              retry=status >= 500 or status in (408, 429)) from None
        return _completion(body)


def _read_bounded(resp: Any, deadline: float) -> bytes:
    """The body of a streamed response, at most MAX_BODY bytes, before ``deadline``."""
    chunks, size = [], 0
    try:
        for chunk in resp.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY:
                raise ServerFault("oversized", f"an answer of more than {MAX_BODY:,} bytes")
            if time.monotonic() > deadline:
                raise ServerFault("timeout", "the answer did not arrive within the timeout", retry=False)
    except ServerFault:
        raise
    except Exception as exc:  # the HTTP library's own read errors: a stall or a lost connection mid-body
        kind = "timeout" if any("Timeout" in c.__name__ for c in type(exc).__mro__) else "connection"
        raise ServerFault(kind, f"reading the answer: {type(exc).__name__}", retry=kind != "timeout") from None
    return b"".join(chunks)


def _completion(body: bytes) -> Reply:
    """The first choice's text and the token counts of a chat completion, checked field by field:
    a server's answer is not trusted to have the documented shape."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to read
        start = " ".join(body[:60].decode("utf-8", "replace").split())
        raise ServerFault("not_json", f"the answer is not JSON ({len(body):,} bytes: {start!r})") from None
    if not isinstance(data, dict):
        data = {}
    choices = data.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    # No content is an empty reply (a refusal, a tool call), which the parser counts as invalid.
    if not isinstance(message, dict) or not (content is None or isinstance(content, str)):
        error = data.get("error")
        said = f" (it says: {' '.join(str(error)[:100].split())})" if error else ""
        raise ServerFault("malformed", f"the answer has no choices[0].message.content string{said}")
    usage = data.get("usage")
    counts = [usage.get(k, 0) if isinstance(usage, dict) else 0 for k in ("prompt_tokens", "completion_tokens")]
    faults = []
    if usage is not None and not all(type(c) is int and c >= 0 for c in counts):
        faults, counts = ["bad_usage"], [0, 0]  # the text is still usable; only the token counts are lost
    return Reply(content or "", counts[0], counts[1], faults=faults)


def _short(exc: Exception) -> str:
    """An API error in one short line (status and the start of the message)."""
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split())[:120]
    return f"{status}: {text}" if status else text


# ---- local transformers -------------------------------------------------------------------------
class LocalBackend(ChatBackend):
    """``generate`` on a local causal LM with a chat template; ``n`` replies are sampled in one
    batch, which on a CPU costs little more than one. Their shared prompt is encoded once: its
    KV cache is computed for one sequence and repeated for the ``n`` rows.

    With the model being pruned as operator, generation happens only between fitness evaluations
    (the loop is sequential), when the model is dense.
    """

    supports_templates = True

    def __init__(self, model: Any, tokenizer: Any, name: str = "local", threads: int | None = 1,
                 share_prefix: bool = True):
        self.model = model
        self.share_prefix = share_prefix  # False: every row encodes the prompt (benchmarks compare the two)
        self.tokenizer = tokenizer
        self.name = name
        # Token-by-token decoding of a small model is latency-bound: one CPU thread is about as
        # fast as two on a quiet machine and many times faster on a busy one. None: torch's choice.
        self.threads = threads
        self._decoders: dict[tuple, Any] = {}
        if getattr(tokenizer, "chat_template", None) is None:
            raise SelfpruneError(f"the operator model '{name}' has no chat template; use an instruct/chat model")

    @classmethod
    def from_path(cls, path: str, trust_remote_code: bool = False) -> "LocalBackend":
        from selfprune.models.loading import load_model

        model, tokenizer = load_model(path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, name=f"local:{path}")

    def _decoder(self, template: Sequence[Any]):
        from selfprune.evolution.llm.constrained import TemplateDecoder

        key = tuple(template)
        if key not in self._decoders:
            digits = next(iter(self._decoders.values())).digits if self._decoders else None
            self._decoders[key] = TemplateDecoder(self.tokenizer, template, digits=digits)
        return self._decoders[key]

    def _shared_prefix(self, enc: dict, n: int):
        """The KV cache of the prompt but its last token, computed once and repeated for ``n`` rows
        (``generate`` then runs only the last prompt token per row before sampling)."""
        from selfprune.models.kv_cache import cache_of

        prefix = {k: v[:, :-1] for k, v in enc.items()}
        cache = cache_of(self.model(**prefix, use_cache=True))
        cache.batch_repeat_interleave(n)
        return cache

    def chat(self, messages, n=1, max_tokens=96, temperature=0.8, seed=0, schema=None, template=None):
        import torch

        from selfprune.models.kv_cache import cache_kwarg

        enc = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        prompt_len = enc["input_ids"].shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        extra: dict[str, Any] = {}
        if template is not None:
            decoder = self._decoder(template)
            extra["prefix_allowed_tokens_fn"] = decoder.prefix_fn(prompt_len)
            max_tokens = decoder.max_tokens
        saved = torch.get_num_threads()
        if self.threads and device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                rows = 1
                if n > 1 and prompt_len > 1 and self.share_prefix:
                    extra[cache_kwarg(self.model)] = self._shared_prefix(enc, n)
                    enc = {k: v.repeat(n, 1) for k, v in enc.items()}
                    rows = n
                torch.manual_seed(seed)
                out = self.model.generate(
                    **enc, do_sample=temperature > 0, temperature=max(temperature, 1e-3), top_p=0.95,
                    max_new_tokens=max_tokens, num_return_sequences=n // rows, pad_token_id=pad, **extra,
                )
        finally:
            torch.set_num_threads(saved)
        replies = []
        for row in out[:, prompt_len:]:
            toks = row.tolist()
            used = next((i + 1 for i, t in enumerate(toks) if t == self.tokenizer.eos_token_id), len(toks))
            replies.append(Reply(self.tokenizer.decode(toks[:used], skip_special_tokens=True), prompt_len, used))
        return replies


# ---- null backend ------------------------------------------------------------------------------
class RandomBackend(ChatBackend):
    """The null operator LLM: fills the same reply templates with random legal values (seeded by
    the request's seed, so a search with it is deterministic). Against it, what the LLM operator
    gains over ``--llm random`` is the LLM's, not the prompt's priors or the loop's."""

    name = "random"
    supports_templates = True

    def chat(self, messages, n=1, max_tokens=96, temperature=0.8, seed=0, schema=None, template=None):
        import numpy as np

        from selfprune.evolution.llm.constrained import random_fill

        if template is None:
            raise SelfpruneError("the random operator backend needs reply templates (LLMSettings.constrained)")
        rng = np.random.default_rng(seed)
        return [Reply(random_fill(template, rng)) for _ in range(n)]


def make_backend(spec: str, base_url: str | None = None, self_model: Any = None, self_tokenizer: Any = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 trust_remote_code: bool = False) -> ChatBackend:
    """``self`` (the model being pruned), ``local:PATH``, ``openai:MODEL`` or ``random`` (null);
    ``trust_remote_code`` lets a ``local:`` model run the code it ships."""
    if spec == "random":
        return RandomBackend()
    if spec == "self":
        if self_model is None:
            raise SelfpruneError("--llm self needs the model being pruned")
        return LocalBackend(self_model, self_tokenizer, name="self")
    kind, _, arg = spec.partition(":")
    if kind == "local" and arg:
        return LocalBackend.from_path(arg, trust_remote_code)
    if kind == "openai" and arg:
        return OpenAIBackend(arg, base_url=base_url, api_key_env=api_key_env, timeout=timeout)
    raise SelfpruneError(f"unknown --llm '{spec}': use self, local:PATH, openai:MODEL or random")
