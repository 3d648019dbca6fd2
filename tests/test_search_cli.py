"""`selfprune search`: user mistakes fail at the start with one line and exit code 2."""

import json

import pytest

from selfprune.cli import main


LLM = ["--operator", "llm"]


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "0.95"], "option --ratio: 0.95 lies outside"),
    (["--ratio", "0.3", "--min-rate", "0.5", "--max-rate", "0.2"], "option --min-rate: 0.5 is above max_rate"),
    ([], "option --ratio is required"),
    ([*LLM, "--ratio", "0.3", "--llm", "openai:m", "--llm-base-url", "http://127.0.0.1:9/v1"], "cannot reach"),
    ([*LLM, "--ratio", "0.3", "--llm", "openai:gpt-4o", "--llm-api-key-env", "SELFPRUNE_NO_SUCH_KEY"],
     "SELFPRUNE_NO_SUCH_KEY"),
    ([*LLM, "--ratio", "0.3", "--llm", "gpt4"], "'gpt4' is not one of: self, local:PATH, openai:MODEL"),
    (["--ratio", "0.3", "--operator", "ga", "--llm-base-url", "http://x/v1"], "no 'llm' operator runs"),
    (["--ratio", "0.3", "--operator", "gaa"], "option --operator"),
    (["--ratio", "0.3", "--fitness-samples", "2,8", "--stage-keep", "0.5,0.5"], "option --stage-keep"),
    (["--ratio", "0.3", "--fitness-samples", "a"], "comma-separated"),
])
def test_bad_input_fails_fast(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SELFPRUNE_NO_SUCH_KEY", raising=False)
    rc = main(["search", "default", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_existing_search_needs_resume(tmp_path, capsys):
    from selfprune.outputs import SEARCH, write_marker

    write_marker(tmp_path, SEARCH, complete=False)
    (tmp_path / "checkpoint.json").write_text(json.dumps({}))
    rc = main(["search", "default", "--ratio", "0.3", "--operator", "ga", "--out", str(tmp_path)])
    assert rc == 2 and "--resume" in capsys.readouterr().err


def test_search_output_says_how_many_llm_proposals_were_new():
    from selfprune.cli.search import format_report

    budget = {"total_evals": 8, "evals": {"0": 8}, "total_tokens": 4096, "cache_hits": 0, "duplicates": 0,
              "dropped": 0, "seconds": {"total": 1.0}}
    stats = {"backend": "openai:tiny", "calls": 1, "replies": 6, "valid": 6, "valid_rate": 1.0, "invalid": {},
             "retries": 0, "fallbacks": 6, "prompt_tokens": 10, "completion_tokens": 5, "seconds": 0.1,
             "distinct": 0, "repeats": 0, "copies": 6, "seconds_per_reply": 0.1 / 6}
    text = format_report({"operator": "llm", "best_fitness": 1.0, "generations": 0, "achieved": 0.3, "budget": budget,
                          "repairs": {}, "operator_stats": stats})
    assert "0 distinct" in text and "6 copies of an example shape" in text
    assert "0.1 s (0.02 s per reply)" in text


def test_init_flag_is_generated(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "--init {seeded,noise}" in capsys.readouterr().out
