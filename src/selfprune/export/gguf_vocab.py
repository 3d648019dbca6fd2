"""The tokenizer of a model directory as GGUF metadata, for llama.cpp's byte-level BPE ("gpt2").

Tokens, token types and merges come from the Hugging Face tokenizer's own ``tokenizer.json``;
special-token ids, whether BOS/EOS are added, and the chat template come from the loaded tokenizer
(its behaviour, not a guess from the files). llama.cpp re-implements each pre-tokenizer under a
name, so the pre-tokenizer is matched to the llama.cpp name whose splitting rule is the same; one
that matches none is refused, since llama.cpp would then split text differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from selfprune.errors import SelfpruneError

# Split rules of the pre-tokenizers (as written in tokenizer.json) -> llama.cpp's name for them.
_QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLIT_PRE = {_QWEN2_RE: "qwen2", _LLAMA3_RE: "llama-bpe"}


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        w.add_token_merges(self.merges)
        for kind, tid in self.special_ids.items():
            getattr(w, f"add_{kind}_token_id")(tid)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        if self.chat_template:
            w.add_chat_template(self.chat_template)

    def describe(self) -> dict:
        return {"model": "gpt2", "pre": self.pre, "tokens": len(self.tokens), "merges": len(self.merges),
                "add_bos": self.add_bos, "add_eos": self.add_eos, "chat_template": self.chat_template is not None}


def _is_byte_level(node: dict | None, use_regex: bool) -> bool:
    return bool(node) and node.get("type") == "ByteLevel" and bool(node.get("use_regex", True)) == use_regex \
        and not node.get("add_prefix_space", False)


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or a SelfpruneError naming it."""
    if _is_byte_level(pre, use_regex=True):
        return "gpt-2"  # GPT-2's split rule, applied by ByteLevel itself
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else None
    if steps and len(steps) == 2:
        first, second = steps
        if first.get("type") == "Digits" and first.get("individual_digits") and _is_byte_level(second, use_regex=True):
            return "smollm"  # single digits, then GPT-2's rule
        if first.get("type") == "Split" and _is_byte_level(second, use_regex=False):
            regex = (first.get("pattern") or {}).get("Regex")
            if regex in _SPLIT_PRE and first.get("behavior") == "Isolated" and not first.get("invert"):
                return _SPLIT_PRE[regex]
    raise SelfpruneError(
        f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is not one llama.cpp implements "
        "(known: GPT-2, SmolLM, Qwen2, Llama 3 byte-level rules); llama.cpp would split text differently"
    )


def read_vocab(path: str | Path, n_vocab: int) -> Vocab:
    """The byte-level BPE tokenizer in ``path``, padded to the model's ``n_vocab`` embedding rows."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)  # export runs no model code
    except Exception as exc:  # noqa: BLE001 - any failure here means "no usable tokenizer"
        raise SelfpruneError(f"no usable tokenizer in '{path}' ({str(exc).splitlines()[0][:200]}); "
                             "a GGUF file must carry its tokenizer") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise SelfpruneError(f"the tokenizer in '{path}' has no tokenizer.json form; only byte-level BPE tokenizers are exported")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "BPE with byte fallback (SentencePiece style)" if model.get("byte_fallback") else model.get("type")
        raise SelfpruneError(f"the tokenizer in '{path}' is {kind}; only byte-level BPE tokenizers (GPT-2 style, as in "
                             "SmolLM2, Llama 3, Qwen2) are exported")
    normalizer = spec.get("normalizer")
    if normalizer and normalizer.get("type") != "NFC":
        raise SelfpruneError(f"the tokenizer's normalizer ({normalizer.get('type')}) is not one llama.cpp applies")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))

    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in spec.get("added_tokens", [])}
    for i, a in added.items():
        by_id[i] = a["content"]
    size = max(by_id) + 1
    if size > n_vocab:
        raise SelfpruneError(f"the tokenizer has {size} tokens but the model's embedding only {n_vocab} rows")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows no token maps to (vocabularies padded for speed)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    special = {}
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{kind}_token_id", None)
        if isinstance(tid, int) and 0 <= tid < n_vocab:
            special[kind] = tid
    # What the tokenizer adds around a text, observed rather than parsed from its templates.
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a", add_special_tokens=True)["input_ids"]
    add_bos = len(full) > len(plain) and full[0] == special.get("bos", -1)
    add_eos = len(full) > len(plain) and full[-1] == special.get("eos", -1)
    template = tok.chat_template if isinstance(getattr(tok, "chat_template", None), str) else None
    return Vocab(tokens, [int(t) for t in types], merges, pre, special, add_bos, add_eos, template)
