"""The agent's HTTP view: health, Prometheus metrics, a read-only JSON API, webhooks.

Bound to 127.0.0.1 by default: nothing outside the machine needs a door into it. The
view reads the scheduler's per-source state and the store (through ``records``); it
changes nothing but a source's pending trigger (``sync`` and webhooks).

    GET  /, /env/ENV, /runs/ID  the status pages (``pages``), HTML
    GET, POST /login            sign in for the pages' actions (actions = true)
    POST /actions/sync/NAME, /actions/suspend/ENV, /actions/resume/ENV
                                the pages' actions: a signed-in session and its CSRF field,
                                or ``Authorization: Bearer TOKEN``
    GET  /healthz               the agent loop is alive
    GET  /readyz                config loaded, store open, first cycle of every source done
    GET  /metrics               Prometheus text format 0.0.4
    GET  /api/v1/status         every source: revisions, suspension, drift, backoff, next cycle
    GET  /api/v1/runs/RUN_ID    one run with its per-host and per-task results
    POST /api/v1/sync/NAME      a cycle of that source (name or env) now
    POST /hooks/github          X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body)
    POST /hooks/gitlab          X-Gitlab-Token: secret
    POST /hooks/generic         X-Signature: sha256=HMAC-SHA256(secret, body)

Metrics: counters and the run-duration histogram are counted here since the agent
started; the gauges are read from the store and the scheduler at each scrape; the text
format is written here too (``exposition``): prometheus_client was a dependency and half
a MiB of the idle agent's memory for these few lines.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import socket
import threading
import time
import urllib.parse
from contextlib import closing
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import records, webhooks
from .notify import read_secret
from .records import run_detail
from .records import status as env_statuses
from .source import redact_url
from .store import FAILED_OUTCOMES, EnvState, Store

MAX_BODY = 5 * 1024 * 1024
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTML = "text/html; charset=utf-8"
DURATION = "gitops_ansible_run_duration_seconds"
DURATION_HELP = "Duration of converging and drift-check runs"
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
COUNTERS = {  # name: (help, label names)
    "gitops_ansible_cycles_total": ("Pull cycles by environment and result", ("env", "result")),
    "gitops_ansible_drift_checks_total": ("Drift checks by environment and result",
                                          ("env", "result")),
    "gitops_ansible_source_fetch_failures_total": ("Failed Git fetches or ref lookups", ("env",)),
    "gitops_ansible_webhooks_total": ("Webhook requests by receiver and result",
                                      ("receiver", "result")),
    "gitops_ansible_alerts_total": ("Notifications queued, by kind", ("event",)),
    "gitops_ansible_unverified_revisions_total": ("Revisions refused by the signature policy",
                                                  ("env",)),
}
GAUGES = {  # name: (help, label names)
    "gitops_ansible_applied_revision_info": ("The revision applied last, per environment",
                                             ("env", "revision")),
    "gitops_ansible_hosts_failed": ("Hosts failed or unreachable in the last converge", ("env",)),
    "gitops_ansible_hosts_drifted": ("Hosts with drift in the last drift check", ("env",)),
    "gitops_ansible_suspended": ("1 while the environment is suspended", ("env",)),
    "gitops_ansible_pinned": ("1 while the environment is pinned (a rollback)", ("env",)),
    "gitops_ansible_held": ("1 while a newer revision is held back (a pin, the promotion "
                            "gate)", ("env",)),
    "gitops_ansible_consecutive_failures": ("Failed cycles in a row", ("env",)),
    "gitops_ansible_backoff_seconds": ("Current retry delay", ("env",)),
    "gitops_ansible_seconds_since_last_success": ("Seconds since the last cycle that succeeded "
                                                  "(converged or found nothing to do)", ("env",)),
}


class Metrics:
    """The agent's counters and run-duration histogram, and the collectors given (the
    gauges): each has ``collect()``, giving metric families (``Family``).

    Bucket bounds are written as ``le="30"`` (as the agent always has: a query on
    ``le="30"`` keeps matching), and counters have no ``_created`` samples.
    """

    def __init__(self, *collectors):
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self.histograms: dict[str, dict] = {}
        self.collectors = (self, *collectors)

    def inc(self, name: str, amount: float = 1, **labels) -> None:
        key = (name, tuple(str(labels[label]) for label in COUNTERS[name][1]))
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

    def collect(self) -> list[Family]:
        """The counters and the histogram."""
        with self.lock:
            counters = sorted(self.counters.items())
            histograms = sorted((env, dict(h, buckets=list(h["buckets"])))
                                for env, h in self.histograms.items())
        families = [Family(name, "counter", help_text, [
            ("", dict(zip(labels, values)), value)
            for (metric, values), value in counters if metric == name])
            for name, (help_text, labels) in COUNTERS.items()]
        samples, bounds = [], [*map(str, DURATION_BUCKETS), "+Inf"]
        for env, hist in histograms:
            samples += [("_bucket", {"env": env, "le": bound}, count)
                        for bound, count in zip(bounds, [*hist["buckets"], hist["count"]])]
            samples += [("_count", {"env": env}, hist["count"]),
                        ("_sum", {"env": env}, hist["sum"])]
        return families + [Family(DURATION, "histogram", DURATION_HELP, samples)]

    def text(self) -> bytes:
        """Everything collected, in the Prometheus text format 0.0.4."""
        return exposition(f for collector in self.collectors for f in collector.collect())


@dataclass
class Family:
    """One metric family: its samples are (name suffix, labels, value)."""
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, dict, float]]


def exposition(families) -> bytes:
    """The Prometheus text format 0.0.4: each family's HELP and TYPE lines, then its
    samples; label values and help escaped as the format says."""
    lines = []
    for family in families:
        lines += [f"# HELP {family.name} {_escaped(family.help, quote=False)}",
                  f"# TYPE {family.name} {family.kind}"]
        for suffix, labels, value in family.samples:
            pairs = ",".join(f'{key}="{_escaped(str(text))}"' for key, text in labels.items())
            lines.append(f"{family.name}{suffix}{{{pairs}}} {_number(value)}" if pairs
                         else f"{family.name}{suffix} {_number(value)}")
    return "".join(f"{line}\n" for line in lines).encode()


def _escaped(text: str, quote: bool = True) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _number(value: float) -> str:
    """A sample value as Prometheus' own clients write it (Go's float formatting):
    ``1.0``, ``30.5``, ``1.2345678125e+07``, ``+Inf``, ``NaN``."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go writes an exponent from 1e+06 up
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0").rstrip(".")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


class Gauges:
    """A collector of the gauges in ``GAUGES``; ``read()`` gives (name, labels, value)
    samples and is called at each scrape."""

    def __init__(self, read):
        self.read = read

    def collect(self) -> list[Family]:
        families = {name: Family(name, "gauge", help_text, [])
                    for name, (help_text, _) in GAUGES.items()}
        for name, labels, value in self.read():
            families[name].samples.append(
                ("", {label: labels[label] for label in GAUGES[name][1]}, value))
        return list(families.values())


def gauges(state_dir: Path, states, wall: float) -> list[tuple[str, dict, float]]:
    """The gauge samples of the scheduler's source ``states`` and what the store knows."""
    samples = []
    with closing(Store(Path(state_dir) / "runs.db")) as store:
        for state in states:
            env, labels = store.env_state(state.env), {"env": state.env}
            if env.applied_revision:
                samples.append(("gitops_ansible_applied_revision_info",
                                {**labels, "revision": env.applied_revision}, 1))
            failed = [h for h in store.last_host_results(state.env)
                      if h["outcome"] in FAILED_OUTCOMES]
            samples += [("gitops_ansible_hosts_failed", labels, len(failed)),
                        ("gitops_ansible_hosts_drifted", labels, len(env.drifted_hosts)),
                        ("gitops_ansible_suspended", labels, 1 if env.suspended else 0),
                        ("gitops_ansible_pinned", labels, 1 if env.pinned else 0),
                        ("gitops_ansible_held", labels, 1 if env.candidate_revision else 0),
                        ("gitops_ansible_consecutive_failures", labels, state.failures),
                        ("gitops_ansible_backoff_seconds", labels, state.backoff)]
            if state.last_success:
                samples.append(("gitops_ansible_seconds_since_last_success", labels,
                                round(wall - state.last_success, 3)))
    return samples


# -- the JSON API ----------------------------------------------------------------------------
def status_view(agent) -> dict:
    """/api/v1/status: each source as the scheduler and the store see it."""
    now, states = time.monotonic(), list(agent.states.values())
    known = {s.state.env: s.state for s in env_statuses(agent.config.state_dir)}
    sources = [_source_view(state, known.get(state.env) or EnvState(state.env), now)
               for state in states]
    busy = None if agent.busy_since is None else round(now - agent.busy_since, 1)
    return {"sources": sources, "busy_seconds": busy}


def _source_view(state, env: EnvState, now: float) -> dict:
    src = state.source
    return {
        "name": src.name, "env": state.env, "repo": redact_url(src.settings.repo),
        "ref": src.settings.ref, "applied_revision": env.applied_revision,
        "applied_signer": env.applied_signer, "verify": src.settings.verify,
        "good_revision": env.good_revision, "suspended": env.suspended_reason,
        "pinned": {"revision": env.pinned_revision, "reason": env.pinned_reason,
                   "since": env.pinned_at} if env.pinned else None,
        "promote_from": src.settings.promote_from, "candidate": env.candidate_revision,
        "waiting": env.waiting_reason, "ahead": env.ahead,
        "drifted_hosts": list(env.drifted_hosts) if env.drift_at else None,
        "drift_run": env.drift_run, "fetch_error": env.fetch_error,
        "failures": state.failures, "backoff_seconds": state.backoff,
        "maintenance": state.blocked, "pending": state.pending,
        "next_cycle_in": round(max(0.0, state.next_cycle - now), 1),
        "next_drift_in": None if math.isinf(state.next_drift) else
        round(max(0.0, state.next_drift - now), 1),
        "cycles": state.cycles, "last": state.last, "last_drift": state.last_drift}


# -- the pages' actions -----------------------------------------------------------------------
SESSION_COOKIE = "gitops_session"
SESSION_SECONDS = 8 * 3600


@dataclass(frozen=True)
class SessionView:
    """What a page needs to know of its visitor: are actions on, is the visitor signed in,
    and the CSRF value its forms carry."""
    actions: bool
    signed_in: bool = False
    csrf: str = ""


class Sessions:
    """Sign-in for the pages' actions. The actions token (a file) is checked once, at
    sign-in; the browser then holds a random session id in an HttpOnly, SameSite=Strict
    cookie, and every form carries a CSRF value derived from that id with a key that
    lives only in this process. A request from another site has neither."""

    def __init__(self, agent_options: dict):
        self.enabled = bool(agent_options["actions"])
        self.token_file = agent_options["actions_token_file"]
        external = urllib.parse.urlsplit(agent_options["external_url"] or "")
        self.secure = external.scheme == "https"  # the cookie goes over HTTPS only
        # a proxy may pass on its own Host header
        self.external_host = _host(external.netloc, external.scheme)
        self.key = secrets.token_bytes(32)
        self.ids: dict[str, float] = {}
        self.lock = threading.Lock()

    def _token(self) -> str:
        return read_secret(self.token_file)

    def sign_in(self, given: str) -> str | None:
        """A new session id when ``given`` is the actions token."""
        if not (self.enabled and given and hmac.compare_digest(given.encode(),
                                                               self._token().encode())):
            return None
        session = secrets.token_urlsafe(32)
        with self.lock:
            now = time.time()
            self.ids = {k: v for k, v in self.ids.items() if v > now}
            self.ids[session] = now + SESSION_SECONDS
        return session

    def csrf(self, session: str) -> str:
        return hmac.new(self.key, session.encode(), hashlib.sha256).hexdigest()

    def _session(self, headers) -> str | None:
        cookie = headers.get("Cookie") or ""
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE:
                with self.lock:
                    if self.ids.get(value, 0) > time.time():
                        return value
        return None

    def view(self, headers) -> SessionView:
        session = self._session(headers) if self.enabled else None
        return SessionView(self.enabled, bool(session), self.csrf(session) if session else "")

    def allowed(self, headers, form: dict) -> bool:
        """An action may run: the bearer token, or a live session whose CSRF value the
        form carries, from a page of this agent (Origin, when the browser sends one)."""
        if not self.enabled:
            return False
        bearer = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if bearer and hmac.compare_digest(bearer.encode(), self._token().encode()):
            return True
        session = self._session(headers)
        if not same_site(headers, self.external_host):
            return False
        given = (form.get("csrf") or [""])[0]
        return bool(session) and hmac.compare_digest(given, self.csrf(session))


def _host(netloc: str | None, scheme: str = "http") -> str:
    """host[:port] lowercased, the scheme's default port dropped ('' for none)."""
    host = (netloc or "").strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return host[:-len(default)] if default and host.endswith(default) else host


def same_site(headers, external_host: str = "") -> bool:
    """The request came from a page of this agent, as far as the browser says: an Origin
    header, when there is one, names the agent's host (as asked, or its external URL's).
    ``Origin: null`` (a sandboxed frame, a file) is another site."""
    origin = headers.get("Origin")
    if not origin:
        return True
    parts = urllib.parse.urlsplit(origin)
    return _host(parts.netloc, parts.scheme) in {_host(headers.get("Host")),
                                                 _host(headers.get("Host"), "https"),
                                                 external_host} - {""}


def _name(host: str) -> str:
    """The host name or address of host[:port] ([v6]:port included)."""
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(headers, external_host: str = "") -> bool:
    """The Host a request for the pages or the API names is this agent's: an IP address,
    localhost, or the external URL's host. Another site's name (DNS rebinding to
    127.0.0.1, which would let its pages read these) is not."""
    name = _name(_host(headers.get("Host")))
    if name and name in ("localhost", _name(external_host)):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# What a page of another site must not read or drive through a name of its own; the
# webhooks check their signatures, health and metrics hold nothing of the estate.
GUARDED = ("/", "/env/", "/runs/", "/login", "/actions/", "/api/")


def guarded(path: str) -> bool:
    return path == "/" or any(path.startswith(prefix) for prefix in GUARDED[1:])


# Content types a page of any site may POST without the browser asking first (CORS
# "simple" requests): an API request carrying one of them could be cross-site.
SIMPLE_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def cross_site_api(headers, external_host: str) -> bool:
    """A POST to the JSON API that a page of another site could have sent."""
    kind = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return kind in SIMPLE_TYPES or not same_site(headers, external_host)


def action(agent, kind: str, env: str, form: dict) -> tuple[int, str]:
    """Run one page action on an environment; (HTTP code, where to go back to, or the
    error)."""
    state = next((s for s in agent.states.values() if s.env == env), None)
    if state is None:
        return 404, "no such environment"
    if kind == "sync":
        agent.trigger([s.source.name for s in agent.states.values() if s.env == env], "sync")
    elif kind == "suspend":
        reason = (form.get("reason") or [""])[0].strip()
        if not reason:
            return 400, "a reason is needed to suspend"
        records.suspend(agent.config.state_dir, state.env, reason)
        agent.reporter.log(f"{state.env}: suspended from the status page: {reason}",
                           env=state.env)
    elif kind == "resume":
        records.resume(agent.config.state_dir, state.env)
        agent.reporter.log(f"{state.env}: resumed from the status page", env=state.env)
    else:
        return 404, "no such action"
    return 303, f"/env/{state.env}"


def webhook(agent, receiver: str, headers, body: bytes) -> tuple[int, dict]:
    """/hooks/RECEIVER: count the delivery, and queue a cycle of the sources it concerns."""
    sources = [state.source for state in agent.states.values()]
    delivery = webhooks.receive(receiver, agent.config.agent, headers, body, sources,
                                agent.reporter.log)
    if delivery.result:
        agent.metrics.inc("gitops_ansible_webhooks_total", receiver=receiver,
                          result=delivery.result)
    agent.trigger([src.name for src in delivery.sources], f"webhook:{receiver}")
    return delivery.code, delivery.answer


def _named(agent, name: str) -> list[str]:
    """The sources that ``sync NAME`` means: the one called so, or every one of that env."""
    return [s.source.name for s in agent.states.values() if name in (s.source.name, s.env)]


# -- HTTP --------------------------------------------------------------------------------------
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

    @staticmethod
    def _pages():
        """The status pages' module: jinja2 is imported when a person first opens a page,
        not when the agent starts (health checks and scrapes never need it)."""
        from . import pages
        return pages

    def _page(self, html: str | None, code: int = 200) -> None:
        if html is None:
            self._send(404, "<!doctype html><title>not found</title><p>Not found. "
                            "<a href=\"/\">All environments</a></p>\n", HTML)
        else:
            self._send(code, html, HTML)

    def _redirect(self, where: str, cookie: str | None = None) -> None:
        self.send_response(303)
        self.send_header("Location", where)
        if cookie:
            secure = "; Secure" if self.agent.sessions.secure else ""
            self.send_header("Set-Cookie", f"{SESSION_COOKIE}={cookie}; HttpOnly; "
                                           f"SameSite=Strict; Path=/; Max-Age={SESSION_SECONDS}"
                                           f"{secure}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _guarded(self, handle) -> None:
        """A bug in a page must not leave the browser without an answer, nor show it the
        traceback: 500, and one line in the agent's log."""
        path = self.path.split("?")[0].rstrip("/") or "/"
        try:
            if guarded(path) and not host_allowed(self.headers,
                                                  self.agent.sessions.external_host):
                self._send(421, {"error": "this agent does not answer to that Host name"})
                return
            handle()
        except Exception as exc:  # noqa: BLE001
            self.agent.reporter.log(f"HTTP {self.command} {self.path.split('?')[0]}: internal "
                                    f"error: {type(exc).__name__}: {exc}", "error")
            self._send(500, {"error": "internal error (see the agent's log)"})

    def _get(self) -> None:
        agent, path = self.agent, self.path.split("?")[0].rstrip("/") or "/"
        session = agent.sessions.view(self.headers)
        parts = path.split("/")
        if path == "/":
            self._page(self._pages().overview(agent, session))
        elif parts[1] == "env":
            self._page(self._pages().environment(agent, parts[2], session)
                       if len(parts) == 3 else None)
        elif parts[1] == "runs":
            self._page(self._pages().run(agent, parts[2], session) if len(parts) == 3
                       else None)
        elif path == "/login":
            self._page(self._pages().login(session))
        elif path == "/healthz":
            alive = agent.alive()
            self._send(200 if alive else 503, "ok\n" if alive else "loop stalled\n", "text/plain")
        elif path == "/readyz":
            ready, why = agent.ready()
            self._send(200 if ready else 503, ("ok" if ready else why) + "\n", "text/plain")
        elif path == "/metrics":
            self._send(200, agent.metrics.text(), METRICS_TYPE)
        elif path == "/api/v1/status":
            self._send(200, status_view(agent))
        elif path.startswith("/api/v1/runs/"):
            run = run_detail(agent.config.state_dir, path.rsplit("/", 1)[1])
            self._send(200 if run else 404, run or {"error": "no such run"})
        else:
            self._send(404, {"error": "not found"})

    def _post(self) -> None:
        agent, path = self.agent, self.path.split("?")[0].rstrip("/")
        length = _length(self.headers)
        if length is None:
            self._send(400, {"error": "Content-Length is not a number of bytes"})
            return
        if length > MAX_BODY:
            self._send(413, {"error": "payload too large"})
            return
        body = self.rfile.read(length) if length else b""
        form = urllib.parse.parse_qs(body.decode(errors="replace")) if path == "/login" or \
            path.startswith("/actions/") else {}
        if path == "/login":
            session = agent.sessions.sign_in((form.get("token") or [""])[0])
            if session:
                self._redirect("/", session)
            else:
                self._page(self._pages().login(agent.sessions.view(self.headers),
                                               "That is not the actions token." if
                                               agent.sessions.enabled else None), 401)
        elif path.startswith("/actions/"):
            parts = path.split("/")
            if len(parts) != 4 or not agent.sessions.enabled:
                self._page(None)
            elif not agent.sessions.allowed(self.headers, form):
                self._send(403, "sign in first (the actions token), from this agent's pages\n",
                           "text/plain")
            else:
                code, where = action(agent, parts[2], parts[3], form)
                if code == 303:
                    self._redirect(where)
                else:
                    self._send(code, where + "\n", "text/plain")
        elif path.startswith("/api/v1/sync/") and cross_site_api(
                self.headers, agent.sessions.external_host):
            self._send(403, {"error": "a form or text body, or another site's Origin: send no "
                                      "body or Content-Type: application/json"})
        elif path.startswith("/api/v1/sync/"):
            names = agent.trigger(_named(agent, path.rsplit("/", 1)[1]), "sync")
            self._send(202 if names else 404, {"triggered": names} if names else
                       {"error": "no such source or environment"})
        elif path.startswith("/hooks/"):
            self._send(*webhook(agent, path.rsplit("/", 1)[1], self.headers, body))
        else:
            self._send(404, {"error": "not found"})


def _length(headers) -> int | None:
    """The body's length; None when it is not a count (a negative one would read until
    the client hangs up)."""
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        return None
    return length if length >= 0 else None


# How often the idle server's thread wakes to look for a stop. The standard 0.5 s was
# 2 wake-ups a second, ~0.9 CPU s an hour: more than all of the idle agent's polls. A stop
# wakes it at once by connecting (``Server.stop``); this is only the fallback.
WAKE_INTERVAL = 60.0


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def stop(self) -> None:
        """Stop serving and close the socket. ``shutdown()`` waits until ``serve_forever``
        sees the request, which it looks for only when a connection or its wake interval
        wakes it: connect until it has. The connection is dropped unread (or, if it came
        first, read as an empty request, which closes without a reply or a log line)."""
        stopping = threading.Thread(target=self.shutdown, name="http-stop", daemon=True)
        stopping.start()
        address = self.server_address[:2]
        while stopping.is_alive():
            try:
                socket.create_connection(address, timeout=1).close()
            except OSError:
                pass  # the fallback wake-up still comes
            stopping.join(0.05)
        self.server_close()


def serve(agent, listen: str) -> Server:
    host, _, port = listen.rpartition(":")
    handler = type("AgentHandler", (Handler,), {"agent": agent})
    server = Server((host.strip("[]") or "127.0.0.1", int(port)), handler)
    threading.Thread(target=server.serve_forever, args=(WAKE_INTERVAL,), name="http",
                     daemon=True).start()
    return server
