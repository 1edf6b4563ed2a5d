"""A local HTTP server that records the requests it gets: the stand-in for third-party SaaS
(Slack incoming webhooks, the GitHub and GitLab commit status APIs), nothing else.

    with Recorder() as rec:
        url = rec.url("/slack")
        ...
        rec.wait_for(lambda reqs: len(reqs) >= 2)
        rec.requests  # [{"method", "path", "headers" (lower-case names), "json"}, ...]
"""
from __future__ import annotations

import http.server
import json
import threading
import time


class Recorder:
    def __init__(self, status: int = 201):
        self.requests: list[dict] = []
        self.status = status
        self.lock = threading.Lock()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    data = json.loads(body)
                except ValueError:
                    data = None
                with recorder.lock:
                    recorder.requests.append({"method": "POST", "path": self.path,
                                              "headers": {k.lower(): v for k, v in self.headers.items()}, "json": data,
                                              "at": time.time()})
                self.send_response(recorder.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, prefix: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"].startswith(prefix)]

    def wait_for(self, predicate, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                snapshot = list(self.requests)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.1)
        raise TimeoutError(f"recorder: condition not met in {timeout}s; got {self.requests}")

    def __enter__(self) -> "Recorder":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
