"""Chat backends for the LLM operator: any OpenAI-compatible endpoint, or a local transformers
model (by default the model being pruned, which is what makes the search self-pruning).

Both answer ``chat(messages, n, ...)`` with ``n`` sampled replies and count their tokens; both
are checked at construction (``check()``), so a wrong URL, model name or key fails at the start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlparse

from selfprune.errors import SelfpruneError


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


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
    it once.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 2, structured: bool = True, check: bool = True):
        try:
            import openai
        except ImportError:  # pragma: no cover - a declared dependency
            raise SelfpruneError("the OpenAI-compatible backend needs the 'openai' package: pip install openai") from None
        self.model = model
        self.base_url = base_url
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
        if models and self.model not in models:
            shown = ", ".join(models[:8]) + (" ..." if len(models) > 8 else "")
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
            replies.append(self._one(list(messages), max_tokens, temperature, seed + i, schema))
        return replies

    def _one(self, messages, max_tokens, temperature, seed, schema) -> Reply:
        o = self._openai
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, max_tokens=max_tokens,
                                      temperature=temperature, seed=seed)
        if schema is not None and self.structured:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "reply", "schema": schema, "strict": True}}
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except (o.BadRequestError, o.UnprocessableEntityError):
            if "response_format" not in kwargs:
                raise
            self.structured = False  # the server does not take JSON schemas: use the tolerant parser
            kwargs.pop("response_format")
            resp = self.client.chat.completions.create(**kwargs)
        except o.APIConnectionError as exc:
            raise SelfpruneError(f"lost the LLM server at {self.base_url or 'the OpenAI API'}: {exc}") from None
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        usage = getattr(resp, "usage", None)
        return Reply(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)


def _short(exc: Exception) -> str:
    """An API error in one short line (status and the start of the message)."""
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split())[:120]
    return f"{status}: {text}" if status else text


# ---- local transformers -------------------------------------------------------------------------
class LocalBackend(ChatBackend):
    """``generate`` on a local causal LM with a chat template; ``n`` replies are sampled in one
    batch, which on a CPU costs little more than one.

    With the model being pruned as operator, generation happens only between fitness evaluations
    (the loop is sequential), when the model is dense.
    """

    supports_templates = True

    def __init__(self, model: Any, tokenizer: Any, name: str = "local", threads: int | None = 1):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        # Token-by-token decoding of a small model is latency-bound: one CPU thread is about as
        # fast as two on a quiet machine and many times faster on a busy one. None: torch's choice.
        self.threads = threads
        self._decoders: dict[tuple, Any] = {}
        if getattr(tokenizer, "chat_template", None) is None:
            raise SelfpruneError(f"the operator model '{name}' has no chat template; use an instruct/chat model")

    @classmethod
    def from_path(cls, path: str) -> "LocalBackend":
        from selfprune.models.loading import load_model

        model, tokenizer = load_model(path)
        return cls(model, tokenizer, name=f"local:{path}")

    def _decoder(self, template: Sequence[Any]):
        from selfprune.evolution.llm.constrained import TemplateDecoder

        key = tuple(template)
        if key not in self._decoders:
            digits = next(iter(self._decoders.values())).digits if self._decoders else None
            self._decoders[key] = TemplateDecoder(self.tokenizer, template, digits=digits)
        return self._decoders[key]

    def chat(self, messages, n=1, max_tokens=96, temperature=0.8, seed=0, schema=None, template=None):
        import torch

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
        torch.manual_seed(seed)
        saved = torch.get_num_threads()
        if self.threads and device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                out = self.model.generate(
                    **enc, do_sample=temperature > 0, temperature=max(temperature, 1e-3), top_p=0.95,
                    max_new_tokens=max_tokens, num_return_sequences=n, pad_token_id=pad, **extra,
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
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0) -> ChatBackend:
    """``self`` (the model being pruned), ``local:PATH``, ``openai:MODEL`` or ``random`` (null)."""
    if spec == "random":
        return RandomBackend()
    if spec == "self":
        if self_model is None:
            raise SelfpruneError("--llm self needs the model being pruned")
        return LocalBackend(self_model, self_tokenizer, name="self")
    kind, _, arg = spec.partition(":")
    if kind == "local" and arg:
        return LocalBackend.from_path(arg)
    if kind == "openai" and arg:
        return OpenAIBackend(arg, base_url=base_url, api_key_env=api_key_env, timeout=timeout)
    raise SelfpruneError(f"unknown --llm '{spec}': use self, local:PATH, openai:MODEL or random")
