"""The agent: the reconcile cycle of every configured source on its interval, until stopped.

One loop, one cycle at a time. When several jobs are due, they run in this order: cycles
asked for by a webhook or ``sync``, then due pull cycles, then due drift checks; within
each group, in the order of ``[[sources]]`` in the config file (put dev before staging
before prod). Cycles of one environment never overlap (one loop, and the environment's
lock against cron or CI runs beside the agent). A failed cycle is retried after
``retry_base`` seconds, doubling up to ``retry_max``; the last good revision stays applied.

A cycle that finds nothing to do runs in the agent's process (Git's ref and the store are
asked, nothing heavy is imported); one that converges, and every drift check, runs in a
child process (``child.py``), so that Ansible's imports and memory leave with it.

Signals: SIGTERM (and SIGINT) let the running cycle finish within ``grace`` seconds, then
cancel it (recorded as cancelled); a second one cancels it at once. SIGHUP reloads the
config file after the running cycle: a file that does not pass the checks is refused and
the running config kept.

This module is the scheduler; ``alerts`` decides what is told, ``notify`` sends it,
``server`` is the HTTP view and the metrics, ``webhooks`` checks and matches pushes.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import random
import signal
import socket
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field

from . import child
from . import config as config_mod
from .alerts import Alert, AlertState, ended_status, held_status, started_status
from .notify import Notifier
from .reconcile import cycle
from .report import ConsoleReporter
from .schedule import blocking_window
from .server import Gauges, Metrics, Sessions, gauges, serve
from .source import redact_url
from .store import Mode, RunStatus, Store, StoreError

# The loop wakes at least this often, for its heartbeat (/healthz). Everything else wakes
# it when it happens: a signal (stop, reload), a webhook or sync, the next job's time. At
# 5 s these wake-ups were a quarter of the idle agent's CPU.
TICK = 30.0

# glibc's malloc_trim (None where the C library has none, e.g. musl)
_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_memory() -> None:
    """Give back to the system the heap a job freed: glibc keeps freed memory for reuse,
    so without this the idle agent would hold what its busiest job needed (measured:
    34.0 MiB resident between cycles without, 31.2 MiB with). Only after a converge or a
    drift check: a full collection costs ~12 ms of CPU, as much as the rest of a no-change
    poll, which frees next to nothing."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


@dataclass
class SourceState:
    """The scheduler's view of one source: when it runs next, why, and how it went."""
    source: config_mod.Source
    next_cycle: float
    next_drift: float
    pending: str | None = None       # trigger waiting to run: webhook, sync, heal
    failures: int = 0
    backoff: float = 0.0
    told: AlertState = AlertState()  # what the alerts have said of it
    blocked: str | None = None       # maintenance window reason, while it blocks
    last: dict = field(default_factory=dict)
    last_drift: dict = field(default_factory=dict)
    last_success: float | None = None
    cycles: int = 0

    @property
    def env(self) -> str:
        return self.source.settings.env

    def after(self, status: RunStatus | None, now: float) -> None:
        """Set the next cycle after one that ended with ``status`` (None: a maintenance
        window, neither success nor failure): back off after a failure."""
        options = self.source.options
        self.cycles += 1
        if status and status.failure:
            self.failures += 1
            self.backoff = min(options["retry_base"] * 2 ** (self.failures - 1),
                               options["retry_max"])
            self.next_cycle = now + self.backoff
            return
        if status and status.success:
            self.last_success = time.time()
        interval = options["interval"] + random.uniform(0, options["jitter"])
        self.failures, self.backoff = 0, 0.0
        self.next_cycle = now + (min(interval, 30) if status is RunStatus.BUSY else interval)


def adopt(old: dict[str, SourceState], config, now: float) -> dict[str, SourceState]:
    """The states for a (re)loaded config: sources that stay keep their timers and what
    was told of them; new ones are due now, their alert state taken from the store."""
    states = {}
    with closing(Store(config.state_dir / "runs.db")) as store:
        for src in config.sources:
            drift = src.options["drift_interval"]
            state = old.get(src.name)
            if not state:
                state = SourceState(src, now, now + drift if drift else math.inf,
                                    told=AlertState.of(store.env_state(src.settings.env)))
            elif drift != state.source.options["drift_interval"]:
                state.next_drift = now + drift if drift else math.inf
            state.source = src
            states[src.name] = state
    return states


def take_job(states, now: float) -> tuple[SourceState, str, str] | None:
    """The next job in the documented order, as (state, kind, trigger); kind is cycle,
    heal or drift. A pending trigger that becomes the job is cleared."""
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


def sleep_for(states, now: float) -> float:
    """How long the loop may sleep: until the first job is due, at most one ``TICK``."""
    return max(0.0, min([TICK] + [min(s.next_cycle, s.next_drift) - now for s in states]))


class Agent:
    """``gitops-ansible agent``: ``run()`` serves the HTTP view and loops until stopped."""

    def __init__(self, config_path: str, flags: dict | None = None, out=None, err=None,
                 environ=None):
        self.config_path, self.flags, self.environ = config_path, flags or {}, environ or {}
        self.out, self.err = out, err
        self.config = config_mod.load_agent(config_path, self.flags, self.environ)
        self.reporter = self._reporter()
        self.states: dict[str, SourceState] = adopt({}, self.config, time.monotonic())
        self.metrics = Metrics(Gauges(lambda: gauges(self.config.state_dir,
                                                     list(self.states.values()), time.time())))
        self.notifier = Notifier(self.config.notify, self.config.agent["alert_interval"],
                                 self.reporter.log, self.config.agent["external_url"])
        self.sessions = Sessions(self.config.agent)
        self.wake = threading.Event()
        self.stopping = self.reload_requested = False
        self.cancel: threading.Event | None = None
        self.busy_since: float | None = None
        self.heartbeat = time.monotonic()
        self.server = None
        self.who = f"agent@{socket.gethostname()}"  # what starts its runs

    def _reporter(self, **context) -> ConsoleReporter:
        reporter = ConsoleReporter(self.config.json, out=self.out, err=self.err, tagged=True)
        reporter.bind(**context)
        return reporter

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        self.server = serve(self, self.config.agent["listen"])
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
                job = take_job(list(self.states.values()), time.monotonic())
                if job:
                    if self._run_job(*job):
                        release_memory()
                    continue
                self.wake.wait(sleep_for(self.states.values(), time.monotonic()))
                self.wake.clear()
        finally:
            self.server.stop()
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
            timer = threading.Timer(grace, self._grace_over, (self.cancel,))
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
        try:
            self.states = adopt(self.states, config, time.monotonic())
        except StoreError as exc:  # locked or full: the reload is tried again soon
            self.reporter.log(f"config reload postponed: {exc}", "error")
            self.reload_requested = True
            return
        self.config = config
        self.notifier.targets = config.notify
        self.notifier.alert_interval = config.agent["alert_interval"]
        self.notifier.external_url = config.agent["external_url"]
        self.sessions = Sessions(config.agent)  # a changed token signs everyone out
        self.reporter.log(f"config reloaded: {len(self.states)} sources")

    def _run_job(self, state: SourceState, kind: str, trigger: str) -> bool:
        """Run one job; did it converge or check (a child process, whose events and result
        the agent took in), rather than only ask Git and the store?"""
        self.cancel = threading.Event()
        self.busy_since = time.monotonic()
        try:
            if kind == "drift":
                self._drift(state)
                return True
            return self._cycle(state, trigger, force=kind == "heal")
        except StoreError as exc:  # locked or full: said as it is, retried with backoff
            self.reporter.log(f"{state.source.name}: {exc}", "error", env=state.env)
            self._schedule(state, RunStatus.ERROR)
        except Exception as exc:  # a bug must not end the agent: record, back off, go on
            self.reporter.log(f"{state.source.name}: cycle crashed: {type(exc).__name__}: {exc}",
                              "error")
            self._schedule(state, RunStatus.ERROR)
        finally:
            self.busy_since = None
            self.cancel = None
        return True

    # -- one job ---------------------------------------------------------------------------
    def _settings(self, state: SourceState, **overrides):
        return dataclasses.replace(state.source.settings, lock="fail", splay=0, json=False,
                                   **overrides)

    def _blocked(self, state: SourceState) -> bool:
        """Inside a maintenance window: no changing run (logged when the window starts)."""
        blocked = blocking_window(state.source.windows, time.time())
        if blocked and blocked != state.blocked:
            self.reporter.log(f"{state.source.name}: maintenance window: no changing run "
                              f"({blocked})", env=state.env)
        state.blocked = blocked
        return bool(blocked)

    def _cycle(self, state: SourceState, trigger: str, force: bool = False) -> bool:
        """One pull cycle; did it converge (in a child process)?"""
        src, env = state.source, state.env
        if self._blocked(state):
            self.metrics.inc("gitops_ansible_cycles_total", env=env, result="blocked")
            self._schedule(state, None)
            return False
        started, posted = time.monotonic(), []

        def on_start(run) -> None:
            posted.append(run.revision)
            self.notifier.commit_status(src.commit_status, env, run.revision,
                                        *started_status(env), run.id)

        # Diffs are recorded for the run's page unless the source turns them off (diff =
        # false); the agent's log does not print them.
        diff = src.settings.diff or src.settings.sources.get("diff", "default") == "default"
        settings = self._settings(state, force=force or src.settings.force, diff=diff)
        reporter = self._reporter(env=env)
        # Asked here (Git's ref, the store): with something to converge, the cycle runs in a
        # process of its own, and Ansible leaves with it.
        result = cycle(settings, Mode.PULL, reporter, trigger, self.cancel, on_start, self.who,
                       elsewhere=True)
        converged = result.status is RunStatus.RUNNING
        if converged:
            result = child.cycle(settings, Mode.PULL, reporter, trigger, self.cancel, on_start,
                                 self.who)
        self.metrics.inc("gitops_ansible_cycles_total", env=env, result=result.status)
        if result.run_id and result.status not in (RunStatus.NOTHING, RunStatus.SUSPENDED):
            self.metrics.observe(env, time.monotonic() - started)
        if result.fetch_failed:
            self.metrics.inc("gitops_ansible_source_fetch_failures_total", env=env)
        if result.unverified:
            self.metrics.inc("gitops_ansible_unverified_revisions_total", env=env)
        # An unverified revision never started converging (no pending), but its commit
        # says it was refused.
        ended = posted[-1] if posted else result.revision if result.unverified else None
        if ended:
            self.notifier.commit_status(src.commit_status, env, ended, *ended_status(env, result),
                                        result.run_id)
        state.told, held = held_status(env, state.told, result, src.settings.promote_from)
        if held:
            self.notifier.commit_status(src.commit_status, env, result.candidate, *held)
        state.told, news = state.told.after_cycle(env, result, self.stopping)
        self._tell(state, news, result)
        state.last = {"kind": "heal" if force else "cycle", "trigger": trigger,
                      **result.as_dict(), "at": time.time()}
        self._schedule(state, result.status)
        return converged

    def _drift(self, state: SourceState) -> None:
        src, env = state.source, state.env
        started = time.monotonic()
        result = child.cycle(self._settings(state, diff=False), Mode.DRIFT,
                             self._reporter(env=env), "drift", self.cancel, started_by=self.who)
        state.next_drift = time.monotonic() + src.options["drift_interval"]
        self.metrics.inc("gitops_ansible_drift_checks_total", env=env, result=result.status)
        if result.run_id:
            self.metrics.observe(env, time.monotonic() - started)
        state.told, news = state.told.after_drift(result)
        self._tell(state, news, result)
        state.last_drift = {**result.as_dict(), "at": time.time()}
        if result.status is RunStatus.DRIFTED and src.options["drift"] == "heal":
            self.reporter.log(f"{src.name}: drift policy heal: converging the applied revision "
                              "again", env=env)
            state.pending = "heal"

    def _schedule(self, state: SourceState, status: RunStatus | None) -> None:
        if self.stopping:
            return
        state.after(status, time.monotonic())
        if status and status.failure:
            self.reporter.log(f"{state.source.name}: backing off {state.backoff:g}s after "
                              f"{state.failures} failed cycle(s) (cap "
                              f"{state.source.options['retry_max']:g}s)", "warning", env=state.env)

    def _tell(self, state: SourceState, news: list[Alert], result) -> None:
        for alert in news:
            if self.notifier.alert(alert.event, state.env, alert.message, result.revision,
                                   result.run_id):
                self.metrics.inc("gitops_ansible_alerts_total", event=alert.event)

    # -- what the HTTP view asks -----------------------------------------------------------
    def alive(self) -> bool:
        if self.busy_since is not None:
            return True  # a cycle runs; its own timeout bounds it
        return time.monotonic() - self.heartbeat < TICK * 2

    def ready(self) -> tuple[bool, str]:
        waiting = [s.source.name for s in self.states.values() if not s.cycles]
        return (not waiting, "waiting for the first cycle of: " + ", ".join(waiting))

    def trigger(self, names, trigger: str) -> list[str]:
        """Queue a cycle of the sources called ``names``; the names of those that exist."""
        states = [self.states[name] for name in names if name in self.states]
        for state in states:
            state.pending = state.pending or trigger
            self.reporter.log(f"{state.source.name}: {trigger}: cycle requested", env=state.env)
        if states:
            self.wake.set()
        return [s.source.name for s in states]
