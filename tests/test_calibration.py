"""Calibration sources: the offline Wikipedia passages are Wikipedia text, mixed in both halves, and
share nothing with the WikiText-2 test split they stand in for."""

from __future__ import annotations

import pytest

from selfprune.data.calibration import CALIBRATION_SOURCES, calibration_text, token_blocks
from selfprune.data.overlap import ngram_overlap
from selfprune.errors import SelfpruneError


@pytest.fixture(scope="module")
def wiki_passages() -> str:
    return calibration_text("wiki-passages")


def test_wiki_passages_are_distinct_paragraphs_of_both_sets_in_both_halves(wiki_passages):
    paragraphs = wiki_passages.split("\n\n")
    assert len(paragraphs) == len(set(paragraphs)) > 1000  # questions share paragraphs: each is kept once
    assert len(wiki_passages) > 1_000_000
    half = len(wiki_passages) // 2
    for part in (wiki_passages[:half], wiki_passages[half:]):  # calibration takes one half, fitness the other
        assert "touchdown" in part  # DROP's NFL game articles
        assert "Question:" not in part and "Background:" not in part  # only the SQuAD paragraphs, not the prompts
    assert "Harvard" in wiki_passages  # a SQuAD article


def test_wiki_passages_share_no_13_gram_with_wikitext2_test(wiki_passages, wikitext_test_path):
    test_text = wikitext_test_path.read_text(encoding="utf-8")
    overlap = ngram_overlap(wiki_passages, test_text)
    assert overlap.total > 200_000 and overlap.shared == 0, overlap.describe()
    # The check itself sees overlap where there is some: a WikiText-2 line planted in the passages is found.
    planted = wiki_passages + "\n\n" + next(line for line in test_text.splitlines() if len(line.split()) > 40)
    assert ngram_overlap(planted, test_text).shared > 0


def test_wiki_passages_give_token_blocks_for_calibration_and_fitness(default_model, wiki_passages):
    _, tokenizer = default_model
    calib = token_blocks(tokenizer, wiki_passages, 32, 256, seed=0, split="first")
    fitness = token_blocks(tokenizer, wiki_passages, 8, 512, seed=1, split="second")
    assert calib.shape == (32, 256) and fitness.shape == (8, 512)
    assert "wiki-passages" in CALIBRATION_SOURCES


def test_unknown_source_names_the_choices():
    with pytest.raises(SelfpruneError, match="wiki-passages"):
        calibration_text("wikipedia")
