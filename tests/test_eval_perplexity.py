"""Perplexity on the real default model against a reference computed with plain transformers."""

from __future__ import annotations

import http.server
import math
import os
import socket
import subprocess
import sys
import threading

import pytest
import torch

from selfprune.data.eval_text import HUB_JOIN, EvalText, load_eval_text
from selfprune.errors import SelfpruneError
from selfprune.eval.perplexity import perplexity


def reference_ppl(model, tokenizer, text: str, seqlen: int, windows: int, stride: int) -> tuple[float, int]:
    """One window at a time through the model's own loss: the textbook sliding-window computation."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(windows):
            window = ids[i * stride : i * stride + seqlen][None]
            labels = window.clone()
            if i > 0:
                labels[:, : seqlen - stride] = -100  # context only; scored by the previous window
            n = int((labels[:, 1:] != -100).sum())
            nll += model(input_ids=window, labels=labels).loss.item() * n
            count += n
    return math.exp(nll / count), count


@pytest.fixture(scope="module")
def wikitext(wikitext_test_path):
    """The start of WikiText-2 test: enough for a few windows, quick to tokenize twice."""
    full = load_eval_text(wikitext_test_path)
    return EvalText(full.text[:40_000], full.source, full.join)


def test_matches_plain_transformers(default_model, wikitext):
    model, tokenizer = default_model
    result = perplexity(model, tokenizer, wikitext, seqlen=128, max_windows=4, batch_size=4)
    ref, count = reference_ppl(model, tokenizer, wikitext.text, 128, 4, 128)
    assert math.isfinite(result.ppl) and 1 < result.ppl < 1000
    assert result.ppl == pytest.approx(ref, rel=1e-4)
    assert result.tokens_scored == count == 4 * 127
    assert result.windows == 4
    p = result.protocol
    assert (p["seqlen"], p["stride"], p["windows"], p["dtype"]) == (128, 128, 4, "float32")
    assert p["join"] == wikitext.join and p["text_sha256"] == wikitext.sha256


def test_overlapping_windows_score_each_token_once(default_model, wikitext):
    model, tokenizer = default_model
    result = perplexity(model, tokenizer, wikitext, seqlen=64, stride=32, max_windows=3, batch_size=2)
    ref, count = reference_ppl(model, tokenizer, wikitext.text, 64, 3, 32)
    assert result.tokens_scored == count == 63 + 2 * 32
    assert result.ppl == pytest.approx(ref, rel=1e-4)


def test_batch_size_does_not_change_the_number(default_model, wikitext):
    model, tokenizer = default_model
    one = perplexity(model, tokenizer, wikitext, seqlen=64, max_windows=3, batch_size=1)
    three = perplexity(model, tokenizer, wikitext, seqlen=64, max_windows=3, batch_size=3)
    assert one.ppl == pytest.approx(three.ppl, rel=1e-5)


def test_source_path_and_token_ids_agree(default_model, wikitext_test_path, wikitext):
    model, tokenizer = default_model
    from_path = perplexity(model, tokenizer, str(wikitext_test_path), seqlen=64, max_windows=2)
    ids = tokenizer(wikitext.text)["input_ids"]
    from_ids = perplexity(model, tokenizer, torch.tensor(ids), seqlen=64, max_windows=2)
    assert from_path.ppl == pytest.approx(from_ids.ppl, rel=1e-5)
    assert from_path.protocol["source"] == str(wikitext_test_path.resolve())
    assert from_path.protocol["tokens_in_text"] > 290_000  # the whole file was read


def _load_wikitext2_with_hub_at(endpoint: str, tmp_path) -> str:
    """load_eval_text("wikitext2") in a fresh process whose hub is ``endpoint`` (read when the hub library is
    imported) and whose cache is empty; its SelfpruneError message, or "loaded"."""
    code = ("from selfprune.data.eval_text import load_eval_text\n"
            "from selfprune.errors import SelfpruneError\n"
            "try:\n    load_eval_text('wikitext2')\n    print('loaded')\n"
            "except SelfpruneError as exc:\n    print(exc)\n")
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf")}
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=True).stdout.strip()


def test_wikitext2_with_the_hub_unreachable_says_how_to_pass_a_local_copy(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = _load_wikitext2_with_hub_at(f"http://127.0.0.1:{port}", tmp_path)
    assert "the Hugging Face hub cannot be reached" in line and "--ppl path/to/wiki.test.raw" in line


def test_wikitext2_when_the_hub_answers_without_it_is_one_clear_line(tmp_path):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "Repository not found"}')

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        line = _load_wikitext2_with_hub_at(f"http://127.0.0.1:{server.server_address[1]}", tmp_path)
    finally:
        server.shutdown()
    assert line.startswith("could not load WikiText-2 (wikitext/wikitext-2-raw-v1, test) through `datasets`")
    assert "pass the path of a local copy" in line and "\n" not in line


def test_wikitext2_from_the_hub_joins_rows_as_the_literature_does():
    from selfprune.data.eval_text import _hub_reachable

    if not _hub_reachable():
        pytest.skip("the Hugging Face hub cannot be reached from here")
    text = load_eval_text("wikitext2")
    assert text.join == HUB_JOIN and len(text.text) > 1_000_000


def test_bad_inputs(default_model, tmp_path):
    model, tokenizer = default_model
    with pytest.raises(SelfpruneError, match="longer than the model's context of 8192"):
        perplexity(model, tokenizer, EvalText("a b c " * 5000, "test", "given"), seqlen=9000)
    with pytest.raises(SelfpruneError, match="not found"):
        perplexity(model, tokenizer, tmp_path / "missing.txt", seqlen=128)
    with pytest.raises(SelfpruneError, match="fewer than one window"):
        perplexity(model, tokenizer, EvalText("just a few words", "test", "given"), seqlen=128)
    with pytest.raises(SelfpruneError, match="stride"):
        perplexity(model, tokenizer, EvalText("a b c " * 100, "test", "given"), seqlen=16, stride=32)


def test_more_seqlens_scores_each_length(tiny_model):
    """``more_seqlens``: every length in ``perplexity_by_seqlen``, the main one equal to ``perplexity``."""
    from types import SimpleNamespace

    from selfprune.eval.options import EvalOptions
    from selfprune.eval.suite import EvalSuite
    from selfprune.report.tables import comparison_rows

    model = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (200,), generator=torch.Generator().manual_seed(0))
    options = EvalOptions(ppl=None, seqlen=32, more_seqlens=[8], max_windows=3, tasks=[])
    out = EvalSuite(options, ids)(model, None)
    assert list(out["perplexity_by_seqlen"]) == ["32", "8"]
    assert out["perplexity_by_seqlen"]["32"] == out["perplexity"]
    assert out["perplexity"]["protocol"]["seqlen"] == 32
    direct = perplexity(model, None, ids, seqlen=8, max_windows=3).to_dict()
    assert out["perplexity_by_seqlen"]["8"] == direct
    assert direct["protocol"]["seqlen"] == 8 and direct["tokens_scored"] == 3 * 7
    assert out["perplexity_by_seqlen"]["8"]["ppl"] != out["perplexity"]["ppl"]

    plain = EvalSuite(EvalOptions(ppl=None, seqlen=32, max_windows=3, tasks=[]), ids)(model, None)
    assert "perplexity_by_seqlen" not in plain and plain["perplexity"] == out["perplexity"]

    # the report's comparison table: one perplexity row per length, each with its own numbers
    other = EvalSuite(options, ids)(tiny_model("llama", seed=1), None)
    rows = comparison_rows(SimpleNamespace(models={"dense": {"params": 1, **out}, "pruned": {"params": 1, **other}},
                                           speed=None))
    ppl_rows = [r for r in rows if r[0].startswith("perplexity")]
    assert [r[0].split(", ")[1] for r in ppl_rows] == ["seqlen 32", "seqlen 8"]
    assert ppl_rows[1][1:3] == (f"{direct['ppl']:.2f}", f"{other['perplexity_by_seqlen']['8']['ppl']:.2f}")
    assert len(comparison_rows(SimpleNamespace(models={"dense": {"params": 1, **plain}, "pruned": {"params": 1}},
                                               speed=None))) == 2
