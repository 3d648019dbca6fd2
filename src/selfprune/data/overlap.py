"""How much of the evaluation text another text contains, counted in shared 13-word sequences.

A hash check only catches the evaluation file itself; a slice of it, or a corpus that quotes it,
would leak evaluation text into calibration and fitness unseen. Thirteen words in a row (the
n-gram length of the usual contamination checks) almost never repeat between independent texts,
so a shared one means shared text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NGRAM = 13
REFUSE_SHARE = 0.01  # above 1% of the evaluation text's sequences, the calibration text contains part of it
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Overlap:
    shared: int  # distinct n-grams of the evaluation text that the other text contains
    total: int  # distinct n-grams of the evaluation text

    @property
    def share(self) -> float:
        return self.shared / self.total if self.total else 0.0

    def describe(self) -> str:
        return f"{self.shared:,} of the evaluation text's {self.total:,} {NGRAM}-word sequences ({100 * self.share:.2f}%)"


def ngram_hashes(text: str, n: int = NGRAM) -> set[int]:
    """The distinct n-grams of lower-cased words, as hashes (a set of tuples of a million words is large)."""
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


def ngram_overlap(text: str, eval_text: str, n: int = NGRAM) -> Overlap:
    """How many of ``eval_text``'s distinct n-grams ``text`` contains."""
    target = ngram_hashes(eval_text, n)
    return Overlap(shared=len(target & ngram_hashes(text, n)), total=len(target))
