"""The agent's HTTP endpoint: health, Prometheus metrics, a read-only JSON API, webhooks.

Bound to 127.0.0.1 by default: nothing outside the machine needs a door into it. Webhook
receivers check their signature with a constant-time comparison before they read the
payload; a bad or missing signature is 401 and starts nothing.

    GET  /healthz               the agent loop is alive
    GET  /readyz                config loaded, store open, first cycle of every source done
    GET  /metrics               Prometheus text format
    GET  /api/v1/status         every source: revisions, suspension, drift, backoff, next cycle
    GET  /api/v1/runs/RUN_ID    one run with its per-host and per-task results
    POST /api/v1/sync/NAME      a cycle of that source (name or env) now
    POST /hooks/github          X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body)
    POST /hooks/gitlab          X-Gitlab-Token: secret
    POST /hooks/generic         X-Signature: sha256=HMAC-SHA256(secret, body)
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 5 * 1024 * 1024
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """Counters and a histogram kept in memory; gauges come from the store at scrape time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = {}
        self.histograms: dict[str, dict] = {}

    def inc(self, name: str, amount: float = 1, **labels) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + amount

    def observe(self, env: str, seconds: float) -> None:
        with self.lock:
            hist = self.histograms.setdefault(env, {"buckets": [0] * len(DURATION_BUCKETS),
                                                    "sum": 0.0, "count": 0})
            for index, bound in enumerate(DURATION_BUCKETS):
                if seconds <= bound:
                    hist["buckets"][index] += 1
            hist["sum"] += seconds
            hist["count"] += 1

    def counter(self, name: str, **labels) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0)


def _labels(labels) -> str:
    if not labels:
        return ""
    def quote(value) -> str:
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{quote(v)}"' for k, v in labels) + "}"


COUNTER_HELP = {
    "gitops_ansible_cycles_total": "Pull cycles by environment and result",
    "gitops_ansible_drift_checks_total": "Drift checks by environment and result",
    "gitops_ansible_source_fetch_failures_total": "Failed Git fetches or ref lookups",
    "gitops_ansible_webhooks_total": "Webhook requests by receiver and result",
    "gitops_ansible_alerts_total": "Notifications queued, by kind",
}


def render(metrics: Metrics, gauges: list[tuple[str, str, dict, float]]) -> str:
    """Prometheus text exposition format 0.0.4."""
    out = []
    with metrics.lock:
        counters = dict(metrics.counters)
        histograms = {env: {**h, "buckets": list(h["buckets"])}
                      for env, h in metrics.histograms.items()}
    for name, help_text in COUNTER_HELP.items():
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for (metric, labels), value in sorted(counters.items()):
            if metric == name:
                out.append(f"{name}{_labels(labels)} {value:g}")
    name = "gitops_ansible_run_duration_seconds"
    out += [f"# HELP {name} Duration of converging and drift-check runs",
            f"# TYPE {name} histogram"]
    for env, hist in sorted(histograms.items()):
        for bound, count in zip(DURATION_BUCKETS, hist["buckets"]):
            out.append(f'{name}_bucket{{env="{env}",le="{bound}"}} {count}')
        out.append(f'{name}_bucket{{env="{env}",le="+Inf"}} {hist["count"]}')
        out.append(f'{name}_sum{{env="{env}"}} {hist["sum"]:.3f}')
        out.append(f'{name}_count{{env="{env}"}} {hist["count"]}')
    seen = set()
    for name, help_text, labels, value in gauges:
        if name not in seen:
            seen.add(name)
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        out.append(f"{name}{_labels(sorted(labels.items()))} {value:g}")
    return "\n".join(out) + "\n"


# -- webhooks ------------------------------------------------------------------------------
def _hmac_ok(secret: str, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), (header or "").strip().encode())


def verify(receiver: str, secret: str, headers, body: bytes) -> bool:
    if receiver == "github":
        return _hmac_ok(secret, body, headers.get("X-Hub-Signature-256"))
    if receiver == "gitlab":
        return hmac.compare_digest(secret.encode(), (headers.get("X-Gitlab-Token") or "").encode())
    return _hmac_ok(secret, body, headers.get("X-Signature"))


def push_of(receiver: str, headers, payload: dict) -> tuple[str | None, set[str], str | None]:
    """(pushed ref, repository names, default branch) of a push event; ref None: not a push."""
    if receiver == "github":
        if headers.get("X-GitHub-Event") != "push":
            return None, set(), None
        repo = payload.get("repository") or {}
        names = {repo.get(k) for k in ("full_name", "clone_url", "ssh_url", "html_url")}
        return payload.get("ref"), {n for n in names if n}, repo.get("default_branch")
    if receiver == "gitlab":
        if headers.get("X-Gitlab-Event") not in ("Push Hook", "Tag Push Hook"):
            return None, set(), None
        project = payload.get("project") or {}
        names = {project.get(k) for k in ("path_with_namespace", "git_http_url", "git_ssh_url")}
        return payload.get("ref"), {n for n in names if n}, project.get("default_branch")
    repo = payload.get("repository")
    return payload.get("ref"), {repo} if isinstance(repo, str) and repo else set(), None


class Handler(BaseHTTPRequestHandler):
    server_version = "gitops-ansible"
    agent = None  # set by serve()

    def log_message(self, fmt, *args) -> None:  # the agent logs what matters itself
        pass

    def _send(self, code: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (
            json.dumps(body, indent=1, default=str) + "\n" if content_type == "application/json"
            else str(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        agent, path = self.agent, self.path.split("?")[0].rstrip("/") or "/"
        if path == "/healthz":
            alive = agent.alive()
            self._send(200 if alive else 503, "ok\n" if alive else "loop stalled\n", "text/plain")
        elif path == "/readyz":
            ready, why = agent.ready()
            self._send(200 if ready else 503, ("ok" if ready else why) + "\n", "text/plain")
        elif path == "/metrics":
            self._send(200, agent.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/api/v1/status":
            self._send(200, agent.status())
        elif path.startswith("/api/v1/runs/"):
            run = agent.run_detail(path.rsplit("/", 1)[1])
            self._send(200 if run else 404, run or {"error": "no such run"})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        agent, path = self.agent, self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": "payload too large"})
            return
        body = self.rfile.read(length) if length else b""
        if path.startswith("/api/v1/sync/"):
            names = agent.trigger_named(path.rsplit("/", 1)[1], "sync")
            self._send(202 if names else 404, {"triggered": names} if names else
                       {"error": "no such source or environment"})
        elif path.startswith("/hooks/"):
            code, answer = agent.webhook(path.rsplit("/", 1)[1], self.headers, body)
            self._send(code, answer)
        else:
            self._send(404, {"error": "not found"})


def serve(agent, listen: str) -> ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")
    handler = type("AgentHandler", (Handler,), {"agent": agent})
    server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def read_secret(path: str | None) -> str | None:
    return Path(path).expanduser().read_text().strip() if path else None

