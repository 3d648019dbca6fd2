"""The OpenAI-compatible backend's preflight against real HTTP servers started here: a server whose
/v1/models fails but whose chat endpoint works is accepted (one-token chat request), one whose
chat fails too is refused in one line naming both."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from selfprune.errors import SelfpruneError
from selfprune.evolution.llm.backends import OpenAIBackend


def serve(chat_ok: bool):
    """A loopback server: 500 on /v1/models; chat completions answered (or 500); requests recorded."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            seen.append(("GET", self.path, None))
            self._send(500, {"error": {"message": "models listing is broken", "type": "server_error"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(("POST", self.path, body))
            if not chat_ok or not self.path.endswith("/chat/completions"):
                self._send(500, {"error": {"message": "chat is broken too", "type": "server_error"}})
                return
            self._send(200, {
                "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": '{"a": 1, "b": 2, "take": "ABABA"}'}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            })

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1", seen


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("SELFPRUNE_TEST_KEY", raising=False)


def test_models_endpoint_fails_but_chat_works(no_key):
    server, url, seen = serve(chat_ok=True)
    try:
        backend = OpenAIBackend("tiny-0.5b", base_url=url, api_key_env="SELFPRUNE_TEST_KEY", max_retries=0)
        probes = [b for method, path, b in seen if method == "POST"]
        assert any(path.endswith("/models") for _, path, _ in seen)
        assert len(probes) == 1 and probes[0]["max_tokens"] == 1 and probes[0]["model"] == "tiny-0.5b"
        (reply,) = backend.chat([{"role": "user", "content": "x"}], n=1, max_tokens=20, seed=3)
        assert json.loads(reply.text)["take"] == "ABABA" and reply.prompt_tokens == 7 and reply.completion_tokens == 3
    finally:
        server.shutdown()


def test_models_and_chat_fail_is_one_line(no_key):
    server, url, _ = serve(chat_ok=False)
    try:
        with pytest.raises(SelfpruneError) as err:
            OpenAIBackend("tiny-0.5b", base_url=url, api_key_env="SELFPRUNE_TEST_KEY", max_retries=0)
    finally:
        server.shutdown()
    msg = str(err.value)
    assert "\n" not in msg and "failed to list its models (500" in msg and "one-token chat request" in msg
