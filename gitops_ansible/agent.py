"""The agent: the reconcile cycle of every configured source on its interval, until stopped.

One loop, one cycle at a time. When several jobs are due, they run in this order: cycles
asked for by a webhook or ``sync``, then due pull cycles, then due drift checks; within
each group, in the order of ``[[sources]]`` in the config file (put dev before staging
before prod). Cycles of one environment never overlap (one loop, and the environment's
lock against cron or CI runs beside the agent). A failed cycle is retried after
``retry_base`` seconds, doubling up to ``retry_max``; the last good revision stays applied.

Signals: SIGTERM (and SIGINT) let the running cycle finish within ``grace`` seconds, then
cancel it (recorded as cancelled); SIGHUP reloads the config file after the running cycle:
a file that does not pass the checks is refused and the running config kept.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field

from . import config as config_mod
from . import status as status_mod
from .notify import Notifier
from .report import ConsoleReporter
from .schedule import blocking_window
from .server import Metrics, push_of, read_secret, render, serve, verify
from .source import SHA_RE, redact_url
from .store import Mode, RunStatus
TICK = 5.0  # the loop wakes at least this often (health heartbeat, reload, stop)


@dataclass
class SourceState:
    source: config_mod.Source
    next_cycle: float
    next_drift: float
    pending: str | None = None      # trigger waiting to run: webhook, sync, heal
    failures: int = 0
    backoff: float = 0.0
    failing: bool = False           # alert state: a failure alert went out
    drift_alerted: frozenset = frozenset()
    refused_alerted: str | None = None
    blocked: str | None = None      # maintenance window reason, while it blocks
    last: dict = field(default_factory=dict)
    last_drift: dict = field(default_factory=dict)
    last_success: float | None = None
    cycles: int = 0

    @property
    def env(self) -> str:
        return self.source.settings.env


class Agent:
    def __init__(self, config_path: str, flags: dict | None = None, out=None, err=None,
                 environ=None):
        self.config_path, self.flags, self.environ = config_path, flags or {}, environ or {}
        self.out, self.err = out, err
        self.config = config_mod.load_agent(config_path, self.flags, self.environ)
        self.reporter = self._reporter()
        self.metrics = Metrics()
        self.states: dict[str, SourceState] = {}
        self._adopt(self.config)
        self.notifier = Notifier(self.config.notify, self.config.agent["alert_interval"],
                                 self.reporter.log)
        self.wake = threading.Event()
        self.stopping = self.reload_requested = False
        self.cancel: threading.Event | None = None
        self.busy_since: float | None = None
        self.heartbeat = time.monotonic()
        self.server = None

    def _reporter(self, **context) -> ConsoleReporter:
        reporter = ConsoleReporter(self.config.json, out=self.out, err=self.err, tagged=True)
        reporter.bind(**context)
        return reporter

    def _store(self):
        from .store import Store
        return Store(self.config.state_dir / "runs.db")

    def _adopt(self, config) -> None:
        """Take a (re)loaded config: keep the timers of sources that stay, start new ones."""
        now, old = time.monotonic(), self.states
        store = self._store()
        try:
            self.states = {}
            for src in config.sources:
                state = old.get(src.name)
                if state:
                    drift = src.options["drift_interval"]
                    if drift != state.source.options["drift_interval"]:
                        state.next_drift = now + drift if drift else math.inf
                    state.source = src
                else:
                    drift = src.options["drift_interval"]
                    state = SourceState(src, now, now + drift if drift else math.inf)
                    env = store.env_state(src.settings.env)
                    state.failing = bool(env.fetch_error) or env.failing
                self.states[src.name] = state
        finally:
            store.close()
        self.config = config

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        listen = self.config.agent["listen"]
        self.server = serve(self, listen)
        host, port = self.server.server_address[:2]
        self.reporter.log(f"agent started: {len(self.states)} sources ("
                          + ", ".join(f"{s.source.name}: {redact_url(s.source.settings.repo)} "
                                      f"{s.source.settings.ref} -> {s.env}"
                                      for s in self.states.values())
                          + f"); listening on {host}:{port}")
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            while not self.stopping:
                self.heartbeat = time.monotonic()
                if self.reload_requested:
                    self._reload()
                job = self._next_job()
                if job:
                    self._run_job(*job)
                    continue
                self.wake.wait(self._sleep())
                self.wake.clear()
        finally:
            self.server.shutdown()
            self.notifier.close()
            self.reporter.log("agent stopped")
        return 0

    def _on_stop(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.stopping and self.cancel:  # a second signal: cancel now
            self.cancel.set()
            return
        self.stopping = True
        self.wake.set()
        grace = self.config.agent["grace"]
        if self.busy_since is not None and self.cancel:
            self.reporter.log(f"{name}: letting the running cycle finish (up to {grace:g}s), "
                              "then stopping", "warning")
            cancel = self.cancel
            timer = threading.Timer(grace, self._grace_over, (cancel,))
            timer.daemon = True
            timer.start()
        else:
            self.reporter.log(f"{name}: stopping")

    def _grace_over(self, cancel: threading.Event) -> None:
        if not cancel.is_set() and self.busy_since is not None:
            self.reporter.log("grace period over: cancelling the running cycle", "warning")
            cancel.set()

    def _on_hup(self, _signum, _frame) -> None:
        self.reload_requested = True
        self.wake.set()

    def _reload(self) -> None:
        self.reload_requested = False
        try:
            config = config_mod.load_agent(self.config_path, self.flags, self.environ)
        except config_mod.ConfigError as exc:
            self.reporter.log(f"config reload refused, keeping the running config: {exc}",
                              "error")
            return
        if config.agent["listen"] != self.config.agent["listen"]:
            self.reporter.log("config reload: a new listen address takes a restart", "warning")
        self._adopt(config)
        self.notifier.targets = config.notify
        self.notifier.alert_interval = config.agent["alert_interval"]
        self.reporter.log(f"config reloaded: {len(self.states)} sources")

    def _sleep(self) -> float:
        now = time.monotonic()
        due = [min(s.next_cycle, s.next_drift) for s in self.states.values()]
        return max(0.0, min([TICK] + [d - now for d in due]))

    def _next_job(self) -> tuple[SourceState, str, str] | None:
        now = time.monotonic()
        states = list(self.states.values())
        for state in states:
            if state.pending:
                trigger, state.pending = state.pending, None
                return state, "heal" if trigger == "heal" else "cycle", trigger
        for state in states:
            if state.next_cycle <= now:
                return state, "cycle", "schedule"
        for state in states:
            if state.next_drift <= now:
                return state, "drift", "drift"
        return None

    def _run_job(self, state: SourceState, kind: str, trigger: str) -> None:
        self.cancel = threading.Event()
        self.busy_since = time.monotonic()
        try:
            if kind == "drift":
                self._drift(state)
            else:
                self._cycle(state, trigger, force=kind == "heal")
        except Exception as exc:  # a bug must not end the agent: record, back off, go on
            self.reporter.log(f"{state.source.name}: cycle crashed: {type(exc).__name__}: {exc}",
                              "error")
            self._schedule(state, RunStatus.ERROR)
        finally:
            self.busy_since = None
            self.cancel = None

    # -- one job ---------------------------------------------------------------------------
    def _settings(self, state: SourceState, **overrides):
        return dataclasses.replace(state.source.settings, lock="fail", splay=0, json=False,
                                   **overrides)

    def _cycle(self, state: SourceState, trigger: str, force: bool = False) -> None:
        from .reconcile import cycle

        src = state.source
        blocked = blocking_window(src.windows, time.time())
        if blocked:
            if blocked != state.blocked:
                self.reporter.log(f"{src.name}: maintenance window: no changing run ({blocked})",
                                  env=state.env)
            state.blocked = blocked
            self.metrics.inc("gitops_ansible_cycles_total", env=state.env, result="blocked")
            self._schedule(state, None)  # a window: neither success nor failure
            return
        state.blocked = None
        reporter = self._reporter(env=state.env)
        started = time.monotonic()
        posted = []

        def on_start(run) -> None:
            posted.append(run.revision)
            self.notifier.commit_status(src.commit_status, state.env, run.revision, "pending",
                                        f"gitops-ansible: converging {state.env}")

        result = cycle(self._settings(state, force=force or src.settings.force), Mode.PULL,
                       reporter, trigger, self.cancel, on_start)
        self.metrics.inc("gitops_ansible_cycles_total", env=state.env, result=result.status)
        if result.run_id and result.status not in (RunStatus.NOTHING, RunStatus.SUSPENDED):
            self.metrics.observe(state.env, time.monotonic() - started)
        if result.fetch_failed:
            self.metrics.inc("gitops_ansible_source_fetch_failures_total", env=state.env)
        if posted:
            ok = result.status.success
            self.notifier.commit_status(src.commit_status, state.env, posted[-1],
                                        "success" if ok else "failure",
                                        f"{state.env}: {result.status}: {result.message}")
        self._alerts(state, result)
        state.last = {"kind": "heal" if force else "cycle", "trigger": trigger,
                      **result.as_dict(), "at": time.time()}
        self._schedule(state, result.status)

    def _drift(self, state: SourceState) -> None:
        from .reconcile import cycle

        src = state.source
        started = time.monotonic()
        result = cycle(self._settings(state, diff=False), Mode.DRIFT, self._reporter(env=state.env),
                       "drift", self.cancel)
        state.next_drift = time.monotonic() + src.options["drift_interval"]
        self.metrics.inc("gitops_ansible_drift_checks_total", env=state.env, result=result.status)
        if result.run_id:
            self.metrics.observe(state.env, time.monotonic() - started)
        drifted = frozenset(h.host for h in result.hosts if h.outcome == "changed")
        if result.status is RunStatus.DRIFTED and drifted != state.drift_alerted:
            self._alert("drift", state, f"drift on {', '.join(sorted(drifted))}", result)
        state.drift_alerted = drifted if result.status in (RunStatus.DRIFTED,
                                                           RunStatus.UNCHANGED) else \
            state.drift_alerted
        state.last_drift = {**result.as_dict(), "at": time.time()}
        if result.status is RunStatus.DRIFTED and src.options["drift"] == "heal":
            self.reporter.log(f"{src.name}: drift policy heal: converging the applied revision "
                              "again", env=state.env)
            state.pending = "heal"

    def _schedule(self, state: SourceState, status: RunStatus | None) -> None:
        src, now = state.source, time.monotonic()
        if self.stopping:
            return
        interval = src.options["interval"] + random.uniform(0, src.options["jitter"])
        state.cycles += 1
        if status and status.failure:
            state.failures += 1
            state.backoff = min(src.options["retry_base"] * 2 ** (state.failures - 1),
                                src.options["retry_max"])
            state.next_cycle = now + state.backoff
            self.reporter.log(f"{src.name}: backing off {state.backoff:g}s after "
                              f"{state.failures} failed cycle(s) (cap {src.options['retry_max']:g}s)",
                              "warning", env=state.env)
            return
        if status and status.success:
            state.last_success = time.time()
        state.failures, state.backoff = 0, 0.0
        state.next_cycle = now + (min(interval, 30) if status is RunStatus.BUSY else interval)

    # -- alerts ------------------------------------------------------------------------------
    def _alert(self, event: str, state: SourceState, message: str, result) -> None:
        if self.notifier.alert(event, state.env, message, result.revision, result.run_id):
            self.metrics.inc("gitops_ansible_alerts_total", event=event)

    def _alerts(self, state: SourceState, result) -> None:
        """On a change of state: failure once, recovery once, a refused revision once."""
        if self.stopping and result.status is RunStatus.CANCELLED:
            return  # stopped by the operator, not a failure of the estate
        if result.status.failure and not state.failing:
            state.failing = True
            self._alert("failure", state, result.message, result)
        elif result.status.success and result.status is not RunStatus.SUSPENDED and \
                state.failing:
            state.failing = False
            self._alert("recovery", state, f"{state.env} is converging again: {result.message}",
                        result)
        if result.status is RunStatus.REFUSED and result.revision != state.refused_alerted:
            state.refused_alerted = result.revision
            self._alert("refused", state, result.message, result)

    # -- what the HTTP endpoint asks -----------------------------------------------------------
    def alive(self) -> bool:
        now = time.monotonic()
        if self.busy_since is not None:
            return True  # a cycle runs; its own timeout bounds it
        return now - self.heartbeat < TICK * 6

    def ready(self) -> tuple[bool, str]:
        waiting = [s.source.name for s in self.states.values() if not s.cycles]
        return (not waiting, "waiting for the first cycle of: " + ", ".join(waiting))

    def trigger_named(self, name: str, trigger: str) -> list[str]:
        hits = [s for s in self.states.values() if name in (s.source.name, s.env)]
        return self._trigger(hits, trigger)

    def _trigger(self, states, trigger: str) -> list[str]:
        for state in states:
            state.pending = state.pending or trigger
            self.reporter.log(f"{state.source.name}: {trigger}: cycle requested", env=state.env)
        if states:
            self.wake.set()
        return [s.source.name for s in states]

    def webhook(self, receiver: str, headers, body: bytes) -> tuple[int, dict]:
        secret_key = {"github": "github_secret_file", "gitlab": "gitlab_token_file",
                      "generic": "hmac_secret_file"}.get(receiver)
        try:
            secret = read_secret(self.config.agent.get(secret_key)) if secret_key else None
        except OSError as exc:
            self.reporter.log(f"webhook {receiver}: cannot read its secret: {exc.strerror}",
                              "error")
            return 503, {"error": f"the {receiver} receiver's secret cannot be read"}
        if not secret:
            return 404, {"error": f"no {receiver} receiver configured"}
        if not verify(receiver, secret, headers, body):
            self.metrics.inc("gitops_ansible_webhooks_total", receiver=receiver,
                             result="unauthorized")
            self.reporter.log(f"webhook {receiver}: bad or missing signature: refused (401)",
                              "warning")
            return 401, {"error": "bad or missing signature"}
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": "body is not JSON"}
        ref, names, default = push_of(receiver, headers, payload if isinstance(payload, dict)
                                      else {})
        hits = [s for s in self.states.values() if ref and _matches(s.source, ref, names, default)]
        self.metrics.inc("gitops_ansible_webhooks_total", receiver=receiver,
                         result="triggered" if hits else "ignored")
        if not hits:
            return 200, {"ignored": "not a push to a tracked ref"}
        return 202, {"triggered": self._trigger(hits, f"webhook:{receiver}")}

    def status(self) -> dict:
        store, now = self._store(), time.monotonic()
        try:
            sources = []
            for state in self.states.values():
                src, env = state.source, store.env_state(state.env)
                sources.append({
                    "name": src.name, "env": state.env, "repo": redact_url(src.settings.repo),
                    "ref": src.settings.ref, "applied_revision": env.applied_revision,
                    "good_revision": env.good_revision,
                    "suspended": env.suspended_reason,
                    "drifted_hosts": list(env.drifted_hosts) if env.drift_at else None,
                    "drift_run": env.drift_run, "fetch_error": env.fetch_error,
                    "failures": state.failures, "backoff_seconds": state.backoff,
                    "maintenance": state.blocked, "pending": state.pending,
                    "next_cycle_in": round(max(0.0, state.next_cycle - now), 1),
                    "next_drift_in": None if math.isinf(state.next_drift) else
                    round(max(0.0, state.next_drift - now), 1),
                    "cycles": state.cycles, "last": state.last, "last_drift": state.last_drift})
        finally:
            store.close()
        busy = None if self.busy_since is None else round(now - self.busy_since, 1)
        return {"sources": sources, "busy_seconds": busy}

    def run_detail(self, run_id: str) -> dict | None:
        return status_mod.run_detail(self.config.state_dir, run_id)

    def metrics_text(self) -> str:
        gauges, store, wall = [], self._store(), time.time()
        try:
            for state in self.states.values():
                env = store.env_state(state.env)
                labels = {"env": state.env}
                if env.applied_revision:
                    gauges.append(("gitops_ansible_applied_revision_info",
                                   "The revision applied last, per environment",
                                   {**labels, "revision": env.applied_revision}, 1))
                last = store.last_converge(state.env)
                failed = [h for h in store.host_results(last["id"])
                          if h["outcome"] in ("failed", "unreachable")] if last else []
                gauges += [
                    ("gitops_ansible_hosts_failed", "Hosts failed or unreachable in the last "
                     "converge", labels, len(failed)),
                    ("gitops_ansible_hosts_drifted", "Hosts with drift in the last drift check",
                     labels, len(env.drifted_hosts)),
                    ("gitops_ansible_suspended", "1 while the environment is suspended", labels,
                     1 if env.suspended else 0),
                    ("gitops_ansible_consecutive_failures", "Failed cycles in a row", labels,
                     state.failures),
                    ("gitops_ansible_backoff_seconds", "Current retry delay", labels,
                     state.backoff)]
                if state.last_success:
                    gauges.append(("gitops_ansible_seconds_since_last_success",
                                   "Seconds since the last cycle that succeeded (converged or "
                                   "found nothing to do)", labels, round(wall - state.last_success,
                                                                         3)))
        finally:
            store.close()
        return render(self.metrics, gauges)


def _matches(src: config_mod.Source, ref: str, names: set[str], default: str | None) -> bool:
    """Does a push of ``ref`` in a repository called ``names`` concern this source?

    A false match only costs a cheap ``git ls-remote``; a missed one costs an interval.
    """
    wanted = src.settings.ref
    if SHA_RE.match(wanted):
        return False
    if wanted == "HEAD":
        ref_ok = default is None or ref == f"refs/heads/{default}"
    else:
        ref_ok = ref in (wanted, f"refs/heads/{wanted}", f"refs/tags/{wanted}")
    if not ref_ok:
        return False
    if not names:
        return True
    url = _repo_path(src.settings.repo)
    return any(url.endswith(_repo_path(name)) or _repo_path(name).endswith(url) for name in names)


def _repo_path(url: str) -> str:
    """'/org/estate' from https://host/org/estate.git, git@host:org/estate, org/estate."""
    text = url.strip().lower()
    if "://" in text:
        rest = text.split("://", 1)[1]
        text = rest.split("/", 1)[1] if "/" in rest else ""
    elif ":" in text and not text.startswith("/"):
        text = text.split(":", 1)[1]
    return "/" + text.strip("/").removesuffix(".git")
