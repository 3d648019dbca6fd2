"""An OpenAI-compatible server on 127.0.0.1 that answers with the faults of real servers (HTTP
errors, HTML, JSON of the wrong shape, wrong types, huge bodies, hangs): for the operator-LLM tests
and benchmarks/probe_faults.py."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "tiny"
BIG = 10 * 2**20  # the 10 MB answers observed
class FaultServer:
    """An OpenAI-compatible server that answers /v1/models properly (or with the bytes ``models``)
    and each chat request with the next fault of ``script``, then with ``then`` ("ok": a valid
    reply); it records what it served."""

    def __init__(self, script=(), then="ok", hang=2.0, models=None):
        self.script, self.then, self.hang = list(script), then, hang
        self.served: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models" and models is not None:
                    self._send(200, models, "text/html")  # not a model list
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                                 "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "no such route"}})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    mode = server.script.pop(0) if server.script else server.then
                    server.served.append(mode)
                try:
                    server.answer(self, mode, request)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: as it should
                    pass

            def _send(self, status, body, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, h, mode, request):
        text = valid_answer(request)
        usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        if mode == "hang":
            time.sleep(self.hang)
        elif mode == "drop":  # the connection closes without an answer
            return
        elif mode == "cut":  # the connection closes in the middle of the body
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "1000")
            h.end_headers()
            return h.wfile.write(b'{"choices": [')
        elif mode.startswith("http_"):
            return h._send(int(mode[5:]), {"error": {"message": "injected fault"}})
        elif mode == "html":
            return h._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        elif mode == "choices_string":
            return h._send(200, {"id": "x", "object": "chat.completion", "choices": "none", "usage": usage})
        elif mode == "choices_null":
            return h._send(200, {"id": "x", "object": "chat.completion", "choices": [None], "usage": usage})
        elif mode == "usage_strings":
            usage = {"prompt_tokens": "100", "completion_tokens": "20"}
        elif mode == "big_body":
            return h._send(200, b"x" * BIG)
        elif mode == "huge_content":
            text += " " * BIG
        elif mode == "long_content":
            text += " " + "z" * 100_000  # under the body bound, over the reply bound
        h._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL, "usage": usage,
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": text}}]})


def valid_answer(request) -> str:
    """A reply of the kind the request's schema asks for (shape, moves or crossover), varied by seed."""
    seed = request.get("seed", 0)
    required = request.get("response_format", {}).get("json_schema", {}).get("schema", {}).get("required", [])
    if "moves" in required:
        return json.dumps({"moves": [{"from": seed % 2, "to": 1 - seed % 2, "part": "mlp", "pct": 1 + seed % 20}]})
    if "take" in required:
        return json.dumps({"a": 1, "b": 2, "take": "ABABA"})
    base = 10 + seed % 40
    shape = [base + 3 * i for i in range(5)]
    return json.dumps({"attn": shape, "mlp": shape[::-1]})
