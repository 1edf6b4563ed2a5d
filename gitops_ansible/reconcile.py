"""One cycle, the same in every mode: source -> plan -> execute -> record -> report.

Modes: ``pull`` (fetch the configured repo and ref; skip if already applied), ``push``
(converge a local checkout now, for CI), ``plan`` (check mode with diff, from a local
checkout or the repo) and ``drift`` (check mode against the last applied revision: what
would change is drift, recorded per host and task). A suspended environment gets no
changing pull cycle. The cycle holds the environment's lock from start to end, so two
cycles for one environment never overlap.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import plan as plan_mod
from . import source
from .report import ExitCode, Redactor, Reporter
from .store import FAILED_OUTCOMES, HostResult, RunRecord, Store


@dataclass
class Result:
    exit_code: ExitCode
    status: str
    message: str
    run_id: str | None = None
    revision: str | None = None
    hosts: list[HostResult] = field(default_factory=list)
    fetch_failed: bool = False  # Git could not be reached or the ref is gone

    def as_dict(self) -> dict:
        return {"exit_code": int(self.exit_code), "status": self.status, "message": self.message,
                "run_id": self.run_id, "revision": self.revision,
                "hosts": {h.host: h.outcome for h in self.hosts}}


class Lock:
    """An exclusive flock on a file; the holder writes its pid and run into it."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self, wait: bool, timeout: float, on_wait=None) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline, told = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                if on_wait and not told:
                    on_wait(self.holder())
                    told = True
                time.sleep(0.2)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
                 .encode())
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def default_trigger(mode: str) -> str:
    """schedule (cron, timer), manual (a person at a terminal) or ci."""
    if mode == "pull" and not sys.stdin.isatty():
        return "schedule"
    return "ci" if os.environ.get("CI") and mode != "pull" else "manual"


def cycle(settings, mode: str, reporter: Reporter | None = None, trigger: str | None = None,
          cancel: threading.Event | None = None, on_start=None) -> Result:
    """Run one cycle; never raises for expected failures, the result carries the exit code."""
    reporter = reporter or Reporter(settings.json)
    settings.require("env")
    if mode == "pull":
        settings.require("repo")
        if settings.splay:
            delay = random.uniform(0, settings.splay)
            reporter.log(f"splay: sleeping {delay:.1f}s")
            time.sleep(delay)
    state_dir = settings.state_path
    lock = Lock(state_dir / "locks" / f"{settings.env}.lock")
    wait = settings.lock == "wait"
    if not lock.acquire(wait, settings.lock_timeout, lambda holder: reporter.log(
            f"waiting for the running cycle of '{settings.env}' to finish ({holder})")):
        message = (f"another cycle of '{settings.env}' is running ({lock.holder()}); "
                   + ("gave up waiting" if wait else "not waiting (lock = fail)"))
        reporter.log(message, "error")
        return Result(ExitCode.BUSY, "busy", message)
    store = Store(state_dir / "runs.db")
    try:
        for row in store.mark_interrupted(settings.env):
            _finish_off(store, row, reporter)
        suspended = store.env_state(settings.env).get("suspended_reason")
        if suspended and mode == "pull":
            message = f"{settings.env}: suspended ({suspended}); no changing run until resumed"
            reporter.bind(env=settings.env)
            reporter.log(message, "warning")
            return Result(ExitCode.NOTHING, "suspended", message)
        if suspended and mode == "push":
            reporter.log(f"{settings.env} is suspended ({suspended}); push converges anyway",
                         "warning")
        job = Cycle(settings, mode, store, reporter, trigger or default_trigger(mode),
                    cancel or threading.Event(), on_start)
        return job.run()
    finally:
        store.close()
        lock.release()


def _finish_off(store: Store, row: dict, reporter: Reporter) -> None:
    """A run whose process died: stop its leftover Ansible processes, drop its artifacts."""
    from .execute import stop_orphans

    stopped = stop_orphans(row["id"])
    _discard_artifacts(store, row["id"], row["artifacts"])
    extra = f"; stopped {len(stopped)} leftover Ansible processes" if stopped else ""
    reporter.log(f"run {row['id']} was interrupted; recorded as such{extra}", "warning")


def _discard_artifacts(store: Store, run_id: str, path: str | None) -> None:
    """Artifacts of a run that never reached redaction are not kept."""
    if path:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    store.forget_artifacts(run_id)


class Cycle:
    def __init__(self, settings, mode, store, reporter, trigger, cancel, on_start=None):
        self.settings, self.mode, self.store, self.reporter = settings, mode, store, reporter
        self.trigger, self.cancel, self.on_start = trigger, cancel, on_start
        self.env = settings.env
        self.check = bool(settings.check or mode in ("plan", "drift"))
        self.remote = mode == "pull" or (mode == "plan" and bool(settings.repo))
        self.run_record: RunRecord | None = None

    # -- source ---------------------------------------------------------------------
    def run(self) -> Result:
        if self.mode == "drift":
            return self._drift()
        if not self.remote:
            checkout = Path(self.settings.path).expanduser().resolve()
            revision = source.local_revision(checkout)
            self._start(revision)
            return self._converge(checkout, revision)
        state = self.store.env_state(self.env)
        try:
            revision = source.resolve(self.settings)
        except source.SourceError as exc:
            return self._fetch_failed(state, str(exc))
        decision = plan_mod.decide(state, revision, self.settings.force, self.check)
        if not decision.converge:
            return self._nothing(state, revision, decision)
        self._start(revision)
        self.reporter.log(f"{self.env}: converging {revision[:12]} ({decision.reason}), "
                          f"run {self.run_record.id}")
        try:
            revision = source.fetch(self.settings, revision)
            checkout = source.export(self.settings, revision)
        except (source.SourceError, OSError) as exc:
            return self._fetch_failed(state, str(exc))
        return self._converge(checkout, revision)

    def _drift(self) -> Result:
        """Check mode against the applied revision's checkout (fetched again if pruned)."""
        revision = self.store.env_state(self.env).get("applied_revision")
        if not revision:
            message = f"{self.env}: nothing applied yet; no drift check"
            self.reporter.bind(env=self.env)
            self.reporter.log(message)
            return Result(ExitCode.NOTHING, "nothing", message)
        self._start(revision)
        checkout = source.checkout_path(self.settings, revision)
        if not checkout.is_dir():
            pinned = type(self.settings)({**self.settings.values, "ref": revision},
                                         self.settings.sources)
            try:
                source.fetch(pinned, revision)
                checkout = source.export(pinned, revision)
            except (source.SourceError, OSError) as exc:
                return self._fetch_failed(self.store.env_state(self.env), str(exc))
        self.reporter.log(f"{self.env}: drift check of the applied revision {revision[:12]}, "
                          f"run {self.run_record.id}")
        return self._converge(checkout, revision)

    def _start(self, revision: str | None) -> None:
        if self.run_record is None:
            self.run_record = RunRecord(env=self.env, mode=self.mode, trigger=self.trigger,
                                        ref=self.settings.ref if self.remote else None,
                                        revision=revision, check_mode=self.check)
            private = self.settings.state_path / "artifacts" / self.env / self.run_record.id
            self.store.start_run(self.run_record, str(private))
            if self.on_start and revision and not self.check:
                self.on_start(self.run_record)
        self.run_record.revision = revision
        self.reporter.bind(run_id=self.run_record.id, env=self.env, revision=revision)

    def _nothing(self, state: dict, revision: str, decision) -> Result:
        self.store.update_env(self.env, checked_revision=revision, checked_at=time.time(),
                              fetch_error=None, fetch_error_at=None)
        self.reporter.bind(env=self.env, revision=revision)
        if decision.reason == "refused":
            message = (f"{self.env}: revision {revision[:12]} was refused (run "
                       f"{state.get('refused_run')}): {state.get('refused_message')}")
            self.reporter.log(message, "error")
            return Result(ExitCode.REFUSED, "refused", message, revision=revision)
        message = (f"{self.env}: nothing to do, revision {revision[:12]} already applied "
                   f"(run {state.get('applied_run')})")
        self.reporter.log(message)
        return Result(ExitCode.NOTHING, "nothing", message, revision=revision)

    def _fetch_failed(self, state: dict, error: str) -> Result:
        self.store.update_env(self.env, fetch_error=error, fetch_error_at=time.time())
        good = state.get("good_revision")
        fallback = source.checkout_path(self.settings, good) if good else None
        if self.settings.force and fallback and fallback.is_dir():
            self.reporter.log(f"fetch failed ({error}); --force: converging the last good "
                              f"revision {good[:12]}", "warning")
            self._start(good)
            return self._converge(fallback, good)
        self._start(self.run_record.revision if self.run_record else None)
        kept = f"; the last good revision {good[:12]} stays in use" if good else ""
        message = f"fetch failed: {error}{kept}"
        self.store.finish_run(self.run_record, "error", ExitCode.ERROR, message)
        self.reporter.log(message, "error")
        result = self._result(ExitCode.ERROR, "error", message)
        result.fetch_failed = True
        return result

    # -- plan -> execute -> record ------------------------------------------------------
    def _converge(self, checkout: Path, revision: str) -> Result:
        from . import inventory as inventory_mod  # YAML and Ansible: only when there is work

        try:
            inventory = inventory_mod.load(checkout, self.settings)
        except inventory_mod.Refused as exc:
            return self._refused(revision, exc.problems)
        if self.remote and not self.check:
            source.switch(self.settings, revision)
        token = self.settings.git_token() if self.remote else None
        redactor = Redactor(inventory.secrets | ({token} if token else set()))
        the_plan = plan_mod.build(self.settings, inventory, checkout, revision, self.check)
        self._preflight(inventory, the_plan)
        excluded = {h: why for h, why in the_plan.excluded.items()}
        if excluded and set(excluded) >= set(the_plan.hosts):
            outcome = None
        else:
            from .execute import execute
            private = self.settings.state_path / "artifacts" / self.env / self.run_record.id
            outcome = execute(the_plan, self.run_record.id, private, redactor, self.reporter,
                              self.cancel)
        return self._record(the_plan, outcome, redactor)

    def _preflight(self, inventory, the_plan) -> None:
        if self.settings.preflight == "off":
            return
        from .preflight import check_hosts
        checks = check_hosts(inventory, self.settings)
        bad = [c for c in checks if not c.ok]
        for check in bad:
            self.reporter.log(f"pre-flight: {check.host} ({check.address}:{check.port}): "
                              f"{check.status}: {check.detail}", "warning")
        if self.settings.preflight == "skip":
            the_plan.excluded = {c.host: f"{c.status}: {c.detail}" for c in bad}

    def _refused(self, revision: str, problems) -> Result:
        for problem in problems:
            self.reporter.log(f"refused: {problem}", "error")
        message = "; ".join(str(p) for p in problems)
        update = None
        if self.remote and not self.check:
            update = {"refused_revision": revision, "refused_run": self.run_record.id,
                      "refused_message": message}
        self.store.finish_run(self.run_record, "refused", ExitCode.REFUSED, message,
                              env_update=update)
        return self._result(ExitCode.REFUSED, "refused", f"revision {revision[:12]} refused: "
                            f"{message}")

    def _record(self, the_plan, outcome, redactor: Redactor) -> Result:
        hosts = dict(outcome.hosts) if outcome else {}
        for host, why in the_plan.excluded.items():
            platform = next((p for p, names in the_plan.platforms.items() if host in names), None)
            hosts[host] = HostResult(host, platform, unreachable=1, message=f"pre-flight: {why}")
        host_list = [hosts[h] for h in sorted(hosts)]
        status, code, message = self._verdict(outcome, host_list)
        message = redactor.scrub(message)
        run = self.run_record
        update = None
        partial = bool(the_plan.limit or the_plan.tags or the_plan.skip_tags)
        if not self.check and not partial and status in ("changed", "unchanged", "failed"):
            now = time.time()
            update = {"applied_revision": run.revision, "applied_run": run.id, "applied_at": now,
                      "refused_revision": None, "refused_message": None, "refused_run": None}
            if status != "failed":
                update.update(good_revision=run.revision, good_run=run.id, good_at=now)
            if self.remote:
                update.update(checked_revision=run.revision, checked_at=now, fetch_error=None,
                              fetch_error_at=None)
            update.update(drift_revision=None, drift_run=None, drift_at=None, drifted_hosts=None)
        if self.mode == "drift" and status in ("drifted", "unchanged"):
            update = {"drift_revision": run.revision, "drift_run": run.id, "drift_at": time.time(),
                      "drifted_hosts": json.dumps([h.host for h in host_list
                                                   if h.outcome == "changed"])}
        self.store.finish_run(run, status, code, message, host_list,
                              outcome.tasks if outcome else [], update)
        self.reporter.summary(host_list)
        if self.check and outcome:
            self._pending(outcome.tasks)
        self.reporter.log(message, "error" if code in (ExitCode.ERROR, ExitCode.FAILED) else "info")
        self._retention()
        return self._result(code, status, message, host_list)

    def _verdict(self, outcome, hosts) -> tuple[str, ExitCode, str]:
        failed = [h.host for h in hosts if h.outcome in FAILED_OUTCOMES]
        changed = [h.host for h in hosts if h.outcome == "changed"]
        verb = "would change" if self.check else "changed"
        if outcome and outcome.status == "error":
            return "error", ExitCode.ERROR, f"ansible failed: {outcome.message}"
        if outcome and outcome.status in ("timeout", "canceled"):
            return "cancelled", ExitCode.ERROR, outcome.message
        if failed:
            return "failed", ExitCode.FAILED, (f"{len(failed)} of {len(hosts)} hosts failed or "
                                               f"unreachable: {', '.join(failed)}")
        if changed and self.mode == "drift":
            return "drifted", ExitCode.CHANGED, (f"drift on {len(changed)} of {len(hosts)} hosts: "
                                                 + ", ".join(changed))
        if changed:
            return "changed", ExitCode.CHANGED, f"{len(changed)} of {len(hosts)} hosts {verb}"
        return "unchanged", ExitCode.OK, f"{len(hosts)} hosts converged, nothing " + (
            "would change" if self.check else "changed")

    def _pending(self, tasks) -> None:
        by_host: dict[str, list[str]] = {}
        for task in tasks:
            if task.status == "changed":
                by_host.setdefault(task.host, []).append(task.task)
        drift = self.mode == "drift"
        if self.reporter.json_mode:
            self.reporter.emit("drift" if drift else "pending_changes", hosts=by_host)
            return
        for host in sorted(by_host):
            self.reporter.log((f"drift on {host}: " if drift else f"{host} would change: ")
                              + "; ".join(by_host[host]))

    def _retention(self) -> None:
        for run_id, path in self.store.old_artifacts(self.env, self.settings.keep_runs):
            _discard_artifacts(self.store, run_id, path)
        if self.remote:
            state = self.store.env_state(self.env)
            protect = {r for r in (state.get("good_revision"), state.get("applied_revision")) if r}
            current = source.current(self.settings)
            if current:
                protect.add(current[0])
            source.prune_checkouts(self.settings, self.settings.keep_checkouts, protect)

    def _result(self, code, status, message, hosts=()) -> Result:
        run = self.run_record
        return Result(code, status, message, run.id if run else None,
                      run.revision if run else None, list(hosts))
