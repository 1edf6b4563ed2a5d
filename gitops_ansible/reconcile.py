"""One cycle, the same in every mode: source -> plan -> execute -> record -> report.

Modes: ``pull`` (fetch the configured repo and ref; skip if already applied), ``push``
(converge a local checkout now, for CI), ``plan`` (check mode with diff, from a local
checkout or the repo) and ``drift`` (check mode against the last applied revision: what
would change is drift, recorded per host and task). A suspended environment gets no
changing pull cycle. The cycle holds the environment's lock from start to end, so two
cycles for one environment never overlap.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import random
import shutil
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from . import gate, journal, source
from . import plan as plan_mod
from .config import ConfigError
from .report import ExitCode, Redactor, Reporter, free_mb, free_space, plural, save_traceback
from .store import (FAILED_OUTCOMES, EnvState, HostResult, HostRevision, Mode, RunRecord,
                    RunStatus, Store, StoreUnavailable, Transition, Verdict, new_run_id)


@dataclass
class Result:
    """What a cycle returns: the exit code, how it ended and where it is recorded."""
    exit_code: ExitCode
    status: RunStatus
    message: str
    run_id: str | None = None
    revision: str | None = None
    hosts: list[HostResult] = field(default_factory=list)
    fetch_failed: bool = False  # Git could not be reached or the ref is gone
    unverified: bool = False    # the signature policy refused the revision
    candidate: str | None = None  # a revision held back (a pin, the promotion gate)
    waiting: str | None = None    # why it is held back
    scope: dict | None = None     # the targets a converge ran (scope.Scope.as_dict())

    def as_dict(self) -> dict:
        return {"exit_code": int(self.exit_code), "status": str(self.status),
                "message": self.message, "run_id": self.run_id, "revision": self.revision,
                "hosts": {h.host: h.outcome for h in self.hosts},
                "candidate": self.candidate, "waiting": self.waiting, "scope": self.scope}


class Stop(Exception):
    """A step ends the cycle early with this verdict (nothing to do, fetch failed, refused)."""

    def __init__(self, verdict: Verdict, fetch_failed: bool = False, logged: bool = False,
                 message: str | None = None):
        super().__init__(verdict.message)
        self.verdict, self.fetch_failed, self.logged = verdict, fetch_failed, logged
        self.message = message  # the result's message, when it differs from the record's


class Cancelled(Exception):
    """A signal stopped the cycle before Ansible ran."""


class Elsewhere(Exception):
    """The cycle has a changing run to do, and was asked to leave it to another process
    (``Start.elsewhere``): it ends before the run starts, recording nothing."""


class Cancel(threading.Event):
    """Asks a cycle to stop. ``request()`` (from a signal handler) sets it; while the cycle
    waits for its lock, fetches or validates (``interruptible``), it also raises
    ``Cancelled`` there and then, so that a slow step stops at once. Once Ansible runs,
    ansible-runner stops it and the run is recorded as cancelled."""

    def __init__(self):
        super().__init__()
        self.interruptible = False

    def request(self) -> None:
        self.set()
        if self.interruptible:
            raise Cancelled()


def _interruptible(cancel, flag: bool) -> None:
    if isinstance(cancel, Cancel):
        cancel.interruptible = flag
        if flag and cancel.is_set():
            raise Cancelled()


class Lock:
    """An exclusive flock on a file; the holder writes its pid and start into it."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def holder(self) -> str:
        """Who holds the lock, as its line says. A holder writes its line just after it
        locked: an empty file is read again for a moment before it counts as unknown."""
        for _ in range(20):
            try:
                line = self.path.read_text().partition("\n")[0].strip()
            except OSError:
                return "unknown"
            if line:
                return line
            time.sleep(0.01)
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
        # One write over what was there, then the cut: a reader never finds the file
        # emptied by its new holder.
        line = (f"pid {os.getpid()} since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n").encode()
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def cycle(settings, mode: Mode | str, reporter: Reporter | None = None,
          trigger: str | None = None, cancel: threading.Event | None = None,
          on_start=None, started_by: str | None = None, elsewhere: bool = False) -> Result:
    """Run one cycle; the result carries the exit code. What the cycle meets after it took
    its lock (Git, the repository, Ansible, a bug) ends in the result, recorded; before
    that, a ``ConfigError`` (a missing setting), a ``StoreError``, an ``OSError`` (the
    state directory) or ``Cancelled`` (a ``Cancel`` requested while waiting) is raised.

    ``reporter`` receives the cycle's events (a silent one when not given); ``trigger`` is
    recorded with the run (schedule, manual, ci, webhook:..., sync, drift, heal; default
    manual); ``on_start`` is called with the ``RunRecord`` when a changing run of a known
    revision starts, once its revision has passed the signature policy; ``started_by``
    (who or what started it: ``user@host``, ``agent@host``) is recorded. ``elsewhere``
    (pull mode, the agent): a cycle that finds a revision to converge ends there, with
    status ``running`` and nothing recorded, for the caller to run it in a process of its
    own (``child.cycle``); a cycle with nothing to do ends as usual.
    """
    mode = Mode(mode)
    reporter = reporter or Reporter()
    reporter.keep_lines()
    cancel = cancel or threading.Event()
    try:
        _interruptible(cancel, True)
        return _cycle(settings, mode, reporter, Start(trigger or "manual", on_start,
                                                      started_by, elsewhere), cancel)
    finally:
        _interruptible(cancel, False)


@dataclass(frozen=True)
class Start:
    """How a cycle was started: its trigger, who or what started it, and the callback of
    a changing run that starts."""
    trigger: str
    on_start: object = None
    started_by: str | None = None
    elsewhere: bool = False


def _cycle(settings, mode: Mode, reporter: Reporter, start: Start, cancel) -> Result:
    settings.require("env")
    if mode is Mode.PULL:
        settings.require("repo")
        if settings.splay:
            delay = random.uniform(0, settings.splay)
            reporter.log(f"splay: sleeping {delay:.1f}s")
            time.sleep(delay)
    lock = Lock(settings.state_path / "locks" / f"{settings.env}.lock")
    wait = settings.lock == "wait"
    if not lock.acquire(wait, settings.lock_timeout, lambda holder: reporter.log(
            f"waiting for the running cycle of '{settings.env}' to finish ({holder})")):
        message = (f"another cycle of '{settings.env}' is running ({lock.holder()}); "
                   + ("gave up waiting" if wait else "not waiting (lock = fail)"))
        reporter.log(message, "error")
        return Result(ExitCode.BUSY, RunStatus.BUSY, message)
    try:
        with closing(Store(settings.state_path / "runs.db")) as store:
            return _locked(settings, mode, store, reporter, start, cancel)
    finally:
        lock.release()


def _locked(settings, mode: Mode, store: Store, reporter: Reporter, start: Start,
            cancel) -> Result:
    """The cycle, once it holds the environment's lock: finish off runs a killed process
    left, honour a suspension, run the steps."""
    for row in store.running(settings.env):
        _finish_off(settings, store, row, reporter)
    _sweep_journals(settings, store)
    suspended = store.env_state(settings.env).suspended_reason
    if suspended and mode is Mode.PULL:
        message = f"{settings.env}: suspended ({suspended}); no changing run until resumed"
        reporter.bind(env=settings.env)
        reporter.log(message, "warning")
        return Result(ExitCode.NOTHING, RunStatus.SUSPENDED, message)
    if suspended and mode is Mode.PUSH:
        reporter.log(f"{settings.env} is suspended ({suspended}); push converges anyway",
                     "warning")
    return Cycle(settings, mode, store, reporter, start, cancel).run()


def _finish_off(settings, store: Store, row: dict, reporter: Reporter) -> None:
    """A run whose process died (or could not record it): stop its leftover Ansible
    processes, record it interrupted with what its journal holds, then drop its
    artifacts unless they were redacted."""
    from .execute import REDACTED, stop_leftovers

    stopped = stop_leftovers(row["id"])
    if settings.execution_nodes:
        from .nodes import stop_everywhere
        stop_everywhere(settings, row["id"], reporter.log)
    path = journal.path_for(settings.state_path, row["id"])
    found = journal.replay(path) or journal.Replayed()
    hosts = _replayed_hosts(found)
    changed = [h.host for h in hosts if h.outcome == "changed"]
    if found.verdict:  # it ended, and could not be recorded
        message = f"the run ended ({found.verdict[0]}) but could not be recorded: " \
                  f"{found.verdict[1]}"
    elif not path.exists():  # a journal starts right before Ansible does
        message = ("not completed before Ansible ran (its process ended, or its record "
                   "could not be written): nothing was changed")
    else:
        what = ("Ansible had finished" if found.stats is not None else
                f"{plural(len(found.tasks), 'task result')} recorded from its journal")
        message = f"the process ended before the run completed ({what})"
    message += f"; changed: {', '.join(changed)}" if changed else ""
    store.interrupted(row["id"], message, found.last_at or time.time(), hosts, found.tasks,
                      kept(found.lines), found.run)
    path.unlink(missing_ok=True)
    artifacts = Path(row["artifacts"]) if row["artifacts"] else None
    if not (artifacts and (artifacts / REDACTED).exists()):
        _discard_artifacts(store, row["id"], row["artifacts"])
    extra = f"; stopped {len(stopped)} leftover Ansible processes" if stopped else ""
    reporter.log(f"run {row['id']} was interrupted; recorded as such: {message}{extra}",
                 "warning")


def _replayed_hosts(found: journal.Replayed) -> list[HostResult]:
    """The per-host results a journal holds, sorted by host."""
    from .execute import host_results

    hosts = host_results(found.tasks, found.stats, found.platforms)
    return [hosts[h] for h in sorted(hosts)]


def _sweep_journals(settings, store: Store) -> None:
    """Journals whose run is recorded (the process was killed between the record and the
    journal's removal): their content is in the store. Those of running runs (of any
    environment) stay."""
    for path in (settings.state_path / "journal").glob("*.jsonl"):
        run = store.run(path.stem)
        if run and run["status"] != "running":
            path.unlink(missing_ok=True)


def _discard_artifacts(store: Store, run_id: str, path: str | None) -> None:
    """Artifacts of a run that never reached redaction are not kept."""
    if path:
        shutil.rmtree(path, ignore_errors=True)
    store.forget_artifacts(run_id)


class Cycle:
    """One cycle's steps. Each returns what the next needs or raises ``Stop``; ``run``
    hands the verdict to ``_finish``, the one place that records and reports it."""

    def __init__(self, settings, mode: Mode, store, reporter, start: Start, cancel):
        self.settings, self.mode, self.store, self.reporter = settings, mode, store, reporter
        self.start, self.cancel = start, cancel
        self.env = settings.env
        self.check = bool(settings.check or mode.check)
        self.remote = mode is Mode.PULL or (mode is Mode.PLAN and bool(settings.repo))
        self.run_record: RunRecord | None = None
        self.fetch_error: str | None = None  # a failed fetch that --force went past
        self.converged = False               # Ansible ran (or every host was excluded)
        self.redactor = Redactor()
        self.target: gate.Target | None = None  # pull mode: what the gate lets through
        self.tip: str | None = None             # what Git's ref pointed to
        self.revision: str | None = None        # the revision looked at, even with no run
        self.ahead: int | None = None           # commits of the ref beyond the target
        self.unverified = False
        self.journal: journal.Journal | None = None  # the results of the run, as they come
        self.unavailable: StoreUnavailable | None = None  # the store failed during the run
        self.scope: scope_mod.Scope | None = None  # the targets this run converges

    def run(self) -> Result:
        stop = None
        try:
            try:
                verdict = self._steps()
            finally:  # a signal from here on must not cut the record short
                _interruptible(self.cancel, False)
        except Stop as early:
            stop, verdict = early, early.verdict
        except Elsewhere:
            return Result(ExitCode.OK, RunStatus.RUNNING, f"{self.env}: revision "
                          f"{self.revision[:12]} to be converged in a process of its own",
                          revision=self.revision)
        except ConfigError as exc:  # e.g. a git_token_file that cannot be read
            verdict = Verdict(RunStatus.REFUSED, f"config error: {exc}")
        except Cancelled:
            verdict = Verdict(RunStatus.CANCELLED, "cancelled by a signal "
                              "before Ansible ran; nothing was changed")
        except StoreUnavailable as exc:  # not asked again to record the run
            self.unavailable, verdict = exc, Verdict(RunStatus.ERROR, str(exc))
        except Exception as exc:  # a bug: recorded as such, never left `running`
            verdict = self._internal_error(exc)
        return self._finish(verdict, stop)

    def _steps(self) -> Verdict:
        if self.mode is not Mode.DRIFT:  # settings that cannot work: refused before a run
            gate.check(self.settings)
            self.policy  # noqa: B018 (reads and checks the key files)
        if self.mode is Mode.DRIFT:
            checkout, revision = self._drift_source()
        elif self.remote:
            checkout, revision = self._pull_source()
        else:
            checkout = Path(self.settings.path).expanduser().resolve()
            if not checkout.is_dir():
                raise Stop(Verdict(RunStatus.REFUSED,
                                   f"--path {checkout}: no such directory"))
            revision = source.local_revision(checkout)
            self._start(revision)
            self.reporter.log(f"{self.env}: {self._doing()} {checkout} at "
                              f"{(revision or 'no commit')[:12]}, run {self.run_record.id}")
            if self.mode is Mode.PUSH:
                checkout = self._push_allowed(checkout, revision)
        return self._converge(checkout, revision)

    def _free_space(self) -> None:
        """A run does not start with less than min_free_mb free where it writes: a full
        disk mid-run breaks Git, Ansible and the records at once. (A cycle with nothing
        to do starts no run and needs no room.)"""
        minimum = self.settings.min_free_mb
        for where in dict.fromkeys((self.settings.state_path, self.settings.work_path)):
            free = free_mb(where)
            if minimum and free is not None and free < minimum:
                raise Stop(Verdict(RunStatus.ERROR, f"{where} has {free:.1f} MiB free, less "
                                   f"than min_free_mb = {minimum}: nothing was run; free some "
                                   "space (or lower min_free_mb)"))

    def _push_allowed(self, checkout: Path, revision: str) -> Path:
        """Push converges what a pull cycle would: a pin and the promotion gate hold, and
        the checkout's commit passes the signature policy; then that commit's tree is what
        runs (returned), not the working tree."""
        state = self.store.env_state(self.env)
        why = gate.allows(state, revision, self.store, self.settings, time.time())
        if why:
            verdict = self._refused([why], sticky=False)
            raise Stop(verdict, logged=True, message=f"push refused: {why}")
        gated = bool(state.pinned_revision or self.settings.promote_from)  # allowed above
        self._admit(checkout, revision, state, behind=gated)
        if not self.policy.active:
            return checkout
        password = self.settings.vault_password_file  # the CI's own file, beside the tree
        if password and not Path(password).expanduser().is_absolute():
            self.settings = dataclasses.replace(self.settings,
                                                vault_password_file=str(checkout / password))
        return source.export_commit(self.settings, checkout, revision)

    # -- source ---------------------------------------------------------------------
    def _pull_source(self) -> tuple[Path, str]:
        state = self.store.env_state(self.env)
        try:
            tip = source.resolve(self.settings)
        except source.SourceError as exc:
            return self._fetch_failed(state, str(exc))
        revision, self.tip = tip, tip
        if self.mode is Mode.PULL:  # plan --repo plans the ref it is given
            self.target = gate.target(state, tip, self.store, self.settings, time.time())
            revision = self.target.revision
        gated = bool(self.target and self.target.why)  # a pin or the promotion gate
        self.revision = revision
        unclean = tuple(h.host for h in self.host_revisions.values() if h.failed_run)
        decision = plan_mod.decide(state, revision, self.settings.force, self.check,
                                   unclean) if revision else None
        if decision and decision.converge and self.start.elsewhere:
            raise Elsewhere()  # before anything that fetches (and imports GitPython)
        if self.mode is Mode.PULL:
            self.ahead = self._ahead(state, tip)
        if revision is None:
            raise Stop(self._waiting(tip))
        if not decision.converge:
            raise Stop(self._nothing(state, revision, decision))
        self._start(revision)
        why = f"; {self.target.why}" if self.target and self.target.why else ""
        self.reporter.log(f"{self.env}: {self._doing()} {revision[:12]} ({decision.reason}"
                          f"{why}), run {self.run_record.id}")
        # The gate's revision is fetched by its id: a push to the ref meanwhile cannot
        # replace it. The ref's tip may have moved: what was fetched is converged.
        fetching = dataclasses.replace(self.settings, ref=revision) if gated else self.settings
        try:
            tags = self.policy.mode in ("tag", "tag-and-head")
            fetched = source.fetch(fetching, revision, tags=tags, warn=self._warn)
        except (source.SourceError, OSError) as exc:
            return self._fetch_failed(state, str(exc))
        if fetched != revision:
            self.reporter.log(f"the ref moved since ls-remote: converging {fetched[:12]}")
            self._start(fetched)
            revision = self.revision = fetched
        self._admit(source.mirror_path(self.settings), revision, state, behind=gated)
        try:
            return source.export(self.settings, revision), revision
        except (source.SourceError, OSError) as exc:
            return self._fetch_failed(state, str(exc))

    def _ahead(self, state: EnvState, tip: str) -> int | None:
        """Commits of Git's ref beyond what the environment runs (asked of Git only when the
        tip moved or the environment is held)."""
        runs = self.target.revision or state.applied_revision
        if not runs or runs == tip:
            return 0 if runs else None
        if tip == state.checked_revision and state.ahead is not None:
            return state.ahead
        return source.ahead(self.settings, runs, tip, warn=self._warn)

    def _warn(self, problem: str) -> None:
        self.reporter.log(problem, "warning")

    @functools.cached_property
    def policy(self):
        """The source's signature policy (its key files checked, its keyring built, once
        per cycle)."""
        from . import verify
        policy = verify.Policy.of(self.settings)
        policy.prepare(self.settings.state_path,
                       self.settings.sources.get("trusted_gpg_keys", "settings"))
        return policy

    def _admit(self, repo: Path, revision: str, state: EnvState, behind: bool) -> None:
        """The revision about to be converged, from ``repo``: its commit's subject and
        author for the record, then the signature policy."""
        if source.SHA_RE.match(revision or ""):
            self.run_record.subject, self.run_record.author = source.describe(repo, revision)
        self._verify(repo, revision, state, behind)

    def _verify(self, repo: Path, revision: str, state: EnvState, behind: bool) -> None:
        """The signature policy, on the fetched objects (or the push checkout) before
        anything is exported or run; a refusal names the commit, the signer and the
        policy. Under ``strict``, a revision behind the last verified one is a rollback:
        only a pin, the promotion gate or the last good revision (``behind``) may go
        there, not a force-push (``verify.check``)."""
        from . import verify

        policy = self.policy
        self.run_record.verify = policy.mode
        if not policy.active:
            return
        try:
            if not source.SHA_RE.match(revision or ""):
                raise verify.Unverified(f"checkout at {revision or 'no commit'}: uncommitted "
                                        f"changes cannot be signed (verify = {policy.mode})")
            base = state.verified_revision if policy.mode == "strict" else None
            signature = verify.check(repo, revision, policy, base, self.settings.state_path,
                                     back=behind)
        except verify.Unverified as exc:
            self.unverified = True
            verdict = self._refused([f"signature policy: {exc}"], sticky=True)
            raise Stop(verdict, logged=True, message=f"revision {revision[:12]} refused: "
                       f"{exc}") from None
        self.run_record.signer = str(signature)
        self.reporter.log(f"signature: {signature} (verify = {policy.mode})")

    def _drift_source(self) -> tuple[Path, str]:
        """The applied revision's checkout (fetched again if pruned)."""
        state = self.store.env_state(self.env)
        revision = state.applied_revision
        if not revision:
            self.reporter.bind(env=self.env)
            raise Stop(Verdict(RunStatus.NOTHING,
                               f"{self.env}: nothing applied yet; no drift check"))
        self._start(revision)
        checkout = source.checkout_path(self.settings, revision)
        if not checkout.is_dir():
            pinned = dataclasses.replace(self.settings, ref=revision)
            try:
                source.fetch(pinned, revision, warn=self._warn)
                checkout = source.export(pinned, revision)
            except (source.SourceError, OSError) as exc:
                return self._fetch_failed(state, str(exc))
        self.reporter.log(f"{self.env}: drift check of the applied revision {revision[:12]}, "
                          f"run {self.run_record.id}")
        return checkout, revision

    def _start(self, revision: str | None) -> None:
        if self.run_record is None:
            self.run_record = RunRecord(env=self.env, mode=self.mode, trigger=self.start.trigger,
                                        ref=self.settings.ref if self.remote else None,
                                        revision=revision, check_mode=self.check,
                                        started_by=self.start.started_by)
            self.store.start_run(self.run_record, str(self._artifacts()))
            self._free_space()
        self.run_record.revision = revision
        self.reporter.bind(run_id=self.run_record.id, env=self.env, revision=revision)

    def _doing(self) -> str:
        if self.mode is Mode.PLAN:
            return "planning (check mode with diff, nothing is changed):"
        return "checking (check mode, nothing is changed):" if self.check else "converging"

    def _artifacts(self) -> Path:
        return self.settings.state_path / "artifacts" / self.env / self.run_record.id

    def _nothing(self, state: EnvState, revision: str, decision) -> Verdict:
        self.reporter.bind(env=self.env, revision=revision)
        checked = Transition.checked(revision, time.time())
        if decision.reason == "refused":
            return Verdict(RunStatus.REFUSED,
                           f"{self.env}: revision {revision[:12]} was refused (run "
                           f"{state.refused_run}): {state.refused_message}",
                           transition=checked)
        return Verdict(RunStatus.NOTHING,
                       f"{self.env}: nothing to do, revision {revision[:12]} already applied "
                       f"(run {state.applied_run}){self._held()}", transition=checked)

    def _held(self) -> str:
        """What the gate holds back, for a message ('' when nothing is)."""
        if not (self.target and self.target.waiting):
            return ""
        ahead = f"; Git is {plural(self.ahead, 'commit')} ahead" if self.ahead else ""
        return f"; {self.target.waiting}{ahead}"

    def _waiting(self, tip: str) -> Verdict:
        """Nothing may be converged yet (promotion: the upstream has nothing clean)."""
        self.reporter.bind(env=self.env, revision=tip)
        return Verdict(RunStatus.NOTHING, f"{self.env}: waiting for promotion from "
                       f"{self.settings.promote_from}: {self.target.waiting}",
                       transition=Transition.checked(tip, time.time()))

    def _fetch_failed(self, state: EnvState, error: str) -> tuple[Path, str]:
        """Git failed: with --force, go on with the last good checkout (the pinned one,
        when pinned), verified again; else stop."""
        good = state.good_revision
        back = state.pinned_revision or good
        fallback = source.checkout_path(self.settings, back) if back else None
        if self.settings.force and fallback and fallback.is_dir():
            which = "pinned" if state.pinned_revision else "last good"
            self.reporter.log(f"fetch failed ({error}); --force: converging the {which} "
                              f"revision {back[:12]}", "warning")
            self.fetch_error = error
            self._start(back)
            self.revision = back
            self._admit(source.mirror_path(self.settings), back, state, behind=True)
            return fallback, back
        self._start(self.run_record.revision if self.run_record else None)
        kept = f"; the last good revision {good[:12]} stays in use" if good else ""
        raise Stop(Verdict(RunStatus.ERROR, f"fetch failed: {error}{kept}",
                           transition=Transition.fetch_failed(error, time.time())),
                   fetch_failed=True)

    # -- plan -> execute ----------------------------------------------------------------
    def _converge(self, checkout: Path, revision: str) -> Verdict:
        from . import inventory as inventory_mod  # YAML and Ansible: only when there is work
        from . import requirements

        if self.start.on_start and revision and not self.check:  # past the signature policy
            self.start.on_start(self.run_record)
        try:  # the collections and roles first: validation looks for what is installed
            paths = requirements.install(checkout, self.settings, self.reporter.log,
                                         self.run_record.id)
            inventory = inventory_mod.load(checkout, self.settings, paths)
        except inventory_mod.Refused as exc:
            verdict = self._refused(exc.problems, sticky=not exc.retry)
            raise Stop(verdict, logged=True, message=f"revision {revision[:12]} refused: "
                       f"{verdict.message}") from None
        if self.remote and not self.check:
            source.switch(self.settings, revision)
        token = self.settings.git_token() if self.remote else None
        galaxy = {server.token() for server in self.settings.galaxy_servers}
        self.redactor = Redactor(inventory.secrets | ({token} | galaxy) - {None})
        the_plan = plan_mod.build(self.settings, inventory, checkout, revision, self.check)
        the_plan.ansible_env, the_plan.shipped = paths.env(), paths.installed
        self.scope = self._scope(inventory, checkout, revision)
        if not self.scope.full:
            the_plan.scope = sorted(self.scope.hosts)
            inventory = dataclasses.replace(inventory, targets={
                h: t for h, t in inventory.targets.items() if h in self.scope.hosts})
        if self.settings.execution_nodes:
            inventory = self._place(inventory, the_plan)
        opened = self._preflight(inventory, the_plan)
        outcome = None
        running = set(the_plan.hosts if the_plan.scope is None else the_plan.scope)
        if running and (not the_plan.excluded or set(the_plan.excluded) < running):
            from .execute import execute, platform_of
            _interruptible(self.cancel, False)  # from here on, ansible-runner stops it
            self._journal(platform_of(the_plan))
            outcome = execute(the_plan, self.run_record.id, self._artifacts(), self.redactor,
                              self.reporter, self.cancel, self.journal)
        elif opened:  # nothing runs: the pre-flight's master connections go now
            from .execute import stop_leftovers
            stop_leftovers(self.run_record.id, grace=5.0)
        self.converged = True
        return self._verdict(the_plan, outcome)

    def _scope(self, inventory, checkout: Path, revision: str) -> scope_mod.Scope:
        """Which targets this run converges (scope.py): those the diff from each target's
        clean revision affects, or every one (the reason said)."""
        from . import scope as scope_mod
        from .inventory import views_at

        settings = self.settings
        full = ("scope = full" if settings.scope == "full" else "--force" if settings.force
                else "a drift check" if self.mode is Mode.DRIFT
                else "--tags" if settings.tags or settings.skip_tags
                else "--limit @FILE" if settings.limit and settings.limit.startswith("@")
                else "the checkout has uncommitted changes" if not source.SHA_RE.match(revision)
                else None)
        records = self.host_revisions
        if full:
            found = scope_mod.Scope(full, left=sorted(set(records) - set(inventory.targets)))
        else:
            repo = source.mirror_path(settings) if self.remote else Path(settings.path).resolve()
            if settings.base:
                base = self._base(repo)
                records = {h: HostRevision(h, base) for h in inventory.targets}
            found = scope_mod.compute(
                inventory, settings, revision, records,
                lambda base: source.changed_paths(repo, base, revision, settings),
                lambda base: views_at(source.export_base(settings, repo, base), settings),
                inventory.limited)
        targets = len(inventory.limited if inventory.limited is not None else inventory.targets)
        self.reporter.log(found.summary(targets))
        for host in found.left:
            self.reporter.log(f"{host} left the inventory since it was converged: "
                              "its record goes (nothing is run on it)")
        return found

    @functools.cached_property
    def host_revisions(self) -> dict:
        """Where each target is (the store's records), read once per cycle: only this
        cycle, holding the lock, writes them, at its end."""
        return self.store.host_revisions(self.env)

    def _base(self, repo: Path) -> str:
        """plan --base: the commit the revision is compared with (a ref is fetched)."""
        base = self.settings.base
        try:
            if self.remote:  # a ref, or a commit the mirror may not hold yet
                return source.fetch(dataclasses.replace(self.settings, ref=base), base)
            return source.commit_of(repo, base)
        except source.SourceError as exc:
            raise Stop(Verdict(RunStatus.REFUSED, f"--base {base}: {exc}")) from None

    def _journal(self, platforms: dict[str, str]) -> None:
        """From here on, results and log lines are journaled as they come (what was said
        so far first)."""
        path = journal.path_for(self.settings.state_path, self.run_record.id)
        run = self.run_record
        try:
            self.journal = journal.Journal(path, self.redactor, platforms, {
                "revision": run.revision, "verify": run.verify, "signer": run.signer,
                "subject": run.subject, "author": run.author})
        except OSError as exc:
            raise StoreUnavailable(f"the run's journal {path} cannot be written: "
                                   f"{exc.strerror or exc}{free_space(path)}") from None
        for line in self.reporter.lines:
            self.journal.line(*line)
        self.reporter.sink = self.journal.line

    def _place(self, inventory, the_plan):
        """Which targets go to which execution node (nodes.py), before anything is
        touched; the inventory left to the controller (and its pre-flight): the nodes
        reach their targets, the controller may not."""
        from . import nodes

        try:
            the_plan.slices, the_plan.here = nodes.assign(self.settings, inventory,
                                                          self.reporter.log)
        except nodes.NodeRefused as exc:
            raise Stop(Verdict(RunStatus.ERROR, str(exc))) from None
        for piece in the_plan.slices:
            self.reporter.log(f"execution node {piece.node.name}: "
                              f"{plural(len(piece.hosts), 'target')} ({_few(piece.hosts)})")
        away = {h for piece in the_plan.slices for h in piece.hosts}
        return dataclasses.replace(inventory, targets={
            h: t for h, t in inventory.targets.items() if h not in away})

    def _preflight(self, inventory, the_plan) -> bool:
        """Check the SSH targets (preflight.py); whether their connections were kept open
        as the run's master connections."""
        if self.settings.preflight == "off":
            return False
        from .execute import masters
        from .preflight import check_hosts
        kept = masters(the_plan, self.run_record.id)
        checks = check_hosts(inventory, self.settings, kept)
        bad = [c for c in checks if not c.ok]
        for check in bad:
            self.reporter.log(f"pre-flight: {check.host} ({check.address}:{check.port}): "
                              f"{check.status}: {check.detail}", "warning")
        if self.settings.preflight == "skip":
            the_plan.excluded = {c.host: f"{c.status}: {c.detail}" for c in bad}
        return bool(kept and checks)

    def _refused(self, problems, sticky: bool) -> Verdict:
        """A refusal; a ``sticky`` one marks the revision refused (no retry until a new
        commit or --force)."""
        for problem in problems:
            self.reporter.log(f"refused: {problem}", "error")
        message = "; ".join(str(p) for p in problems)
        return Verdict(RunStatus.REFUSED, message,
                       transition=self._sticky(message) if sticky else None)

    def _sticky(self, message: str) -> Transition | None:
        """The revision marked refused, with why (pull mode, not a check: the next cycle
        says so and does not retry until a new commit or --force)."""
        if self.remote and not self.check:
            return Transition.refused(self.run_record.revision, self.run_record.id, message)
        return None

    def _verdict(self, the_plan, outcome) -> Verdict:
        hosts = dict(outcome.hosts) if outcome else {}
        for host, why in the_plan.excluded.items():
            platform = next((p for p, names in the_plan.platforms.items() if host in names), None)
            hosts[host] = HostResult(host, platform, unreachable=1, message=f"pre-flight: {why}")
        host_list = [hosts[h] for h in sorted(hosts)]
        run, now = self.run_record, time.time()
        status, message = judge(outcome, host_list, self.mode, self.check)
        if status is RunStatus.REFUSED:  # by targets; the others converged (or were checked)
            message = f"revision {(run.revision or 'no commit')[:12]} {message}"
        verdict = Verdict(status, self.redactor.scrub(message), host_list,
                          outcome.tasks if outcome else [])
        if status is RunStatus.REFUSED:
            verdict.transition = self._sticky(self.redactor.scrub(refused_by(outcome.refused)))
        partial = bool(the_plan.limit or the_plan.tags or the_plan.skip_tags)
        scope = self.scope
        verdict.scope = scope.as_dict()
        if not self.check and not (the_plan.tags or the_plan.skip_tags) and status in RECORDED:
            targets = set(the_plan.hosts)  # not the controller's plays (localhost)
            verdict.clean = clean_records(host_list, targets)
            verdict.clean.update((h, True) for h in scope.unchanged)
            verdict.left = scope.left
        if not scope.full and not scope.hosts:
            verdict.message = (f"revision {run.revision[:12]} affects none of the "
                               f"{len(scope.unchanged)} targets: nothing was run")
        elif scope.unchanged and not scope.full:
            verdict.message += (f"; {plural(len(scope.unchanged), 'other target')} "
                                "unaffected by the revision")
        if not self.check and not partial and status in CONVERGED:
            verdict.transition = Transition.applied(
                run.revision, run.id, now, good=status is not RunStatus.FAILED,
                fetched=self.remote and not self.fetch_error, signer=run.signer,
                strict=run.verify == "strict")
        if self.mode is Mode.DRIFT and status in (RunStatus.DRIFTED, RunStatus.UNCHANGED):
            verdict.transition = Transition.drift_recorded(
                run.revision, run.id, now, [h.host for h in host_list if h.outcome == "changed"])
        return verdict

    def _internal_error(self, exc: Exception) -> Verdict:
        """An unexpected exception: the traceback goes to a file in the state directory
        (secrets scrubbed), the run and the user get one line saying where."""
        name = self.run_record.id if self.run_record else new_run_id()
        where = save_traceback(self.settings.state_path, name, self.redactor)
        verdict = Verdict(RunStatus.ERROR, self.redactor.scrub(
            f"internal error: {type(exc).__name__}: {exc}{where}"))
        found = journal.replay(self.journal.path) if self.journal else None
        if found:  # Ansible ran: what it did is recorded with the error
            verdict.hosts, verdict.tasks = _replayed_hosts(found), found.tasks
        return verdict

    # -- record -> report ---------------------------------------------------------------
    def _finish(self, verdict: Verdict, stop: Stop | None) -> Result:
        """Report the run, then record it and its state transition once, with what was
        said (its log)."""
        if self.fetch_error:  # --force went past a failed fetch: the state keeps saying so
            self._then(verdict, Transition.fetch_failed(self.fetch_error, time.time()))
        if self.target:  # what the gate held back, as this cycle found it
            self._then(verdict, Transition.held(self.target.candidate, self.target.waiting,
                                                self.ahead, self.tip))
        if self.converged:
            self.reporter.summary(verdict.hosts)
            if self.check and verdict.tasks:
                self.reporter.pending(would_change(verdict.tasks), drift=self.mode is Mode.DRIFT)
        if not (stop and stop.logged):
            self.reporter.log(verdict.message, _level(verdict))
        self.reporter.sink = None
        failed = self.unavailable
        if failed is None:
            try:
                self._record(verdict)
            except StoreUnavailable as exc:
                failed = exc
        if failed:
            verdict = self._unrecorded(verdict, failed)
        elif self.converged:
            try:
                self._retention()
            except StoreUnavailable as exc:  # recorded already: old artifacts stay a while
                self.reporter.log(f"retention skipped: {exc}", "warning")
        run = self.run_record
        message = stop.message if stop and stop.message else verdict.message
        held = self.target or gate.Target(None)
        return Result(verdict.exit_code, verdict.status, message,
                      run.id if run else None, run.revision if run else self.revision,
                      list(verdict.hosts), fetch_failed=bool(stop and stop.fetch_failed),
                      unverified=self.unverified, candidate=held.candidate,
                      waiting=held.waiting, scope=verdict.scope)

    def _record(self, verdict: Verdict) -> None:
        if self.run_record:
            verdict.logs = [(ts, level, self.redactor.scrub(text))
                            for ts, level, text in kept(self.reporter.lines)]
            self.store.finish_run(self.run_record, verdict)
            if self.journal:  # its content is in the store now
                self.journal.remove()
        elif verdict.transition:
            self.store.apply(self.env, verdict.transition)

    def _unrecorded(self, verdict: Verdict, exc: StoreUnavailable) -> Verdict:
        """The run could not be recorded: said, and kept in its journal for the next cycle
        to record (as interrupted). An error, whatever Ansible did."""
        kept_in = (f"; its results stay in {self.journal.path} for the next cycle to record"
                   if self.journal and not self.journal.error else "")
        if self.journal:
            self.journal.verdict(str(verdict.status), verdict.message)
            self.journal.close()
        if verdict.message == str(exc):  # the store failed before the end: said already
            message = verdict.message + kept_in
        else:
            message = f"the run ended ({verdict.status}) but {exc}{kept_in}"
            self.reporter.log(message, "error")
        return dataclasses.replace(verdict, status=RunStatus.ERROR, message=message)

    @staticmethod
    def _then(verdict: Verdict, transition: Transition) -> None:
        verdict.transition = verdict.transition.then(transition) if verdict.transition \
            else transition

    def _retention(self) -> None:
        for run_id, path in self.store.old_artifacts(self.env, self.settings.keep_runs):
            _discard_artifacts(self.store, run_id, path)
        if self.remote:
            state = self.store.env_state(self.env)
            protect = {r for r in (state.good_revision, state.applied_revision) if r}
            current = source.current(self.settings)
            if current:
                protect.add(current[0])
            source.prune_checkouts(self.settings, self.settings.keep_checkouts, protect)


CONVERGED = (RunStatus.CHANGED, RunStatus.UNCHANGED, RunStatus.FAILED)
# A run whose targets' records move: a converge, or one that some targets refused (the
# others converged; the revision is not applied).
RECORDED = (*CONVERGED, RunStatus.REFUSED)
LOG_HEAD, LOG_TAIL = 1000, 4000  # a run's log lines kept in the store: its start and end


def kept(lines: list) -> list:
    """A run's log as stored: all of it, or its start and its end with a line saying how
    many were left out between."""
    if len(lines) <= LOG_HEAD + LOG_TAIL:
        return lines
    gap = (lines[LOG_HEAD][0], "warning",
           f"... {len(lines) - LOG_HEAD - LOG_TAIL} lines left out here ...")
    return lines[:LOG_HEAD] + [gap] + lines[-LOG_TAIL:]


def clean_records(hosts, targets: set[str]) -> dict[str, bool]:
    """Per target a converge ran, whether it is clean at the run's revision now (False:
    it failed). A target that refused the revision is left out: nothing was applied there,
    so its record stays where it was."""
    return {h.host: h.outcome not in FAILED_OUTCOMES for h in hosts
            if h.host in targets and not h.refused}


REFUSALS_SHOWN = 3  # targets whose refusal a run's message explains


def refused_by(refused: dict[str, str]) -> str:
    """Which targets refused the revision and why (their first REFUSALS_SHOWN)."""
    shown = [f"{host}: {why}" for host, why in sorted(refused.items())[:REFUSALS_SHOWN]]
    rest = sorted(refused)[REFUSALS_SHOWN:]
    more = f"; and {', '.join(rest)}" if rest else ""
    return f"refused by {plural(len(refused), 'target')}: {'; '.join(shown)}{more}"


def _few(hosts: list[str], shown: int = 3) -> str:
    more = f", ... {len(hosts) - shown} more" if len(hosts) > shown else ""
    return ", ".join(hosts[:shown]) + more


def judge(outcome, hosts, mode: Mode, check: bool) -> tuple[RunStatus, str]:
    """How a converge ended, from Ansible's outcome and the per-host results. Targets that
    refused the revision (``Outcome.refused``) make it refused, unless another failed:
    then it failed, and the message names the refusal too."""
    failed = [h.host for h in hosts if h.outcome in FAILED_OUTCOMES]
    changed = [h.host for h in hosts if h.outcome == "changed"]
    refused = outcome.refused if outcome else {}
    verb = "would change" if check else "changed"
    if outcome and outcome.status == "error":
        return RunStatus.ERROR, f"ansible failed: {outcome.message}"
    if outcome and outcome.status in ("timeout", "cancelled"):
        return RunStatus.CANCELLED, outcome.message
    if failed:
        first = next(h for h in hosts if h.outcome in FAILED_OUTCOMES)
        cause = f"; {first.host}: {first.message}" if first.message else ""
        also = f"; {refused_by(refused)}" if refused else ""
        return RunStatus.FAILED, (f"{len(failed)} of {len(hosts)} hosts failed or "
                                  f"unreachable: {', '.join(failed)}{cause}{also}")
    if refused:
        others = len(hosts) - len(refused)
        done = "checked" if check else "converged"
        rest = f"; {plural(others, 'other host')} {done} ({len(changed)} {verb})" \
            if others else ""
        return RunStatus.REFUSED, refused_by(refused) + rest
    if changed and mode is Mode.DRIFT:
        return RunStatus.DRIFTED, (
            f"drift on {len(changed)} of {len(hosts)} hosts: " + ", ".join(changed))
    if changed:
        return RunStatus.CHANGED, f"{len(changed)} of {len(hosts)} hosts {verb}"
    if check:
        return RunStatus.UNCHANGED, f"{len(hosts)} hosts checked, nothing would change"
    return RunStatus.UNCHANGED, f"{len(hosts)} hosts converged, nothing changed"


def would_change(tasks) -> dict[str, list[str]]:
    """Check mode: the tasks that reported a change, per host."""
    by_host: dict[str, list[str]] = {}
    for task in tasks:
        if task.status == "changed":
            by_host.setdefault(task.host, []).append(task.task)
    return by_host


def _level(verdict: Verdict) -> str:
    return "error" if verdict.exit_code in (ExitCode.ERROR, ExitCode.FAILED,
                                            ExitCode.REFUSED) else "info"
