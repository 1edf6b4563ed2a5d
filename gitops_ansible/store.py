"""The run records and the one typed model of an environment's state.

SQLite in WAL mode, one file under the state directory. A run row is written when a
cycle starts (status ``running``) and completed once, when it ends, in one transaction
with its per-host and per-task results and the environment's state transition. Until
then the results are in the run's journal (``journal.py``). A process killed halfway (or
whose final write failed) leaves a ``running`` row that the next cycle (holding the
environment's lock) records ``interrupted``, with the results its journal holds; the
applied revision only moves on a completed converge, so the next cycle does the work
again. A store that cannot be written now (locked for longer than the busy timeout, a
full disk) is a ``StoreUnavailable``: an error of this run, not of the input.

An environment's state is an ``EnvState`` value. It changes only through the named
transitions below (``Transition.applied``, ``.refused``, ...), each of which writes the
fields it names and nothing else, so that a ``suspend`` from the CLI during a running
cycle is not overwritten by that cycle's record. Nothing secret is written here:
messages are redacted by the caller.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .report import ExitCode, free_space
from .source import SHA_RE

# Version 3 (this one): the tables below; version 2 had no `host_revisions` table and no
# `runs.scope`, version 1 no `applied` and `actions` tables and fewer columns (MIGRATIONS).
# A store written by a newer release is refused.
SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, env TEXT NOT NULL, mode TEXT NOT NULL, trigger TEXT NOT NULL,
    ref TEXT, revision TEXT, status TEXT NOT NULL, exit_code INTEGER, check_mode INTEGER NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, message TEXT, pid INTEGER, artifacts TEXT);
CREATE INDEX IF NOT EXISTS runs_env ON runs (env, started_at);
CREATE TABLE IF NOT EXISTS host_results (
    run_id TEXT NOT NULL REFERENCES runs(id), host TEXT NOT NULL, platform TEXT,
    outcome TEXT NOT NULL, ok INTEGER, changed INTEGER, failed INTEGER, unreachable INTEGER,
    skipped INTEGER, message TEXT, PRIMARY KEY (run_id, host));
CREATE TABLE IF NOT EXISTS task_results (
    run_id TEXT NOT NULL REFERENCES runs(id), seq INTEGER NOT NULL, host TEXT, task TEXT,
    role TEXT, status TEXT, changed INTEGER, duration REAL, message TEXT);
CREATE INDEX IF NOT EXISTS task_results_run ON task_results (run_id, seq);
CREATE TABLE IF NOT EXISTS environments (
    env TEXT PRIMARY KEY, applied_revision TEXT, applied_run TEXT, applied_at REAL,
    good_revision TEXT, good_run TEXT, good_at REAL, checked_revision TEXT, checked_at REAL,
    refused_revision TEXT, refused_run TEXT, refused_message TEXT,
    fetch_error TEXT, fetch_error_at REAL);
CREATE TABLE IF NOT EXISTS applied (
    env TEXT NOT NULL, revision TEXT NOT NULL, run_id TEXT, at REAL NOT NULL,
    good INTEGER NOT NULL, signer TEXT);
CREATE INDEX IF NOT EXISTS applied_env ON applied (env, at);
CREATE TABLE IF NOT EXISTS actions (
    env TEXT NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, revision TEXT,
    from_revision TEXT, reason TEXT);
CREATE INDEX IF NOT EXISTS actions_env ON actions (env, at);
CREATE TABLE IF NOT EXISTS host_revisions (
    env TEXT NOT NULL, host TEXT NOT NULL, revision TEXT, run_id TEXT, at REAL,
    failed_run TEXT, PRIMARY KEY (env, host));
CREATE TABLE IF NOT EXISTS run_logs (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL, level TEXT, message TEXT,
    PRIMARY KEY (run_id, seq));
"""
# Columns added before the schema had a version: (table, column, type), added when missing.
MIGRATIONS = [
    ("environments", "suspended_reason", "TEXT"), ("environments", "suspended_at", "REAL"),
    ("environments", "drift_revision", "TEXT"), ("environments", "drift_run", "TEXT"),
    ("environments", "drift_at", "REAL"), ("environments", "drifted_hosts", "TEXT"),
    # version 2: signatures, pins, promotion
    ("runs", "verify", "TEXT"), ("runs", "signer", "TEXT"),
    ("environments", "applied_signer", "TEXT"), ("environments", "verified_revision", "TEXT"),
    ("environments", "pinned_revision", "TEXT"), ("environments", "pinned_reason", "TEXT"),
    ("environments", "pinned_at", "REAL"), ("environments", "approved_revision", "TEXT"),
    ("environments", "approved_reason", "TEXT"), ("environments", "approved_at", "REAL"),
    ("environments", "candidate_revision", "TEXT"), ("environments", "waiting_reason", "TEXT"),
    ("environments", "ahead", "INTEGER"),
    # version 2: what the status pages show
    ("runs", "subject", "TEXT"), ("runs", "author", "TEXT"), ("runs", "started_by", "TEXT"),
    ("task_results", "diff", "TEXT"),
    # version 3: change-scoped runs
    ("runs", "scope", "TEXT"),
]
# A version 1 store's converging runs start the history of applied revisions (what
# rollback and promotion read); it did not record which runs were partial (--limit, --tags).
BACKFILL_APPLIED = ("INSERT INTO applied (env, revision, run_id, at, good) SELECT env, "
                    "revision, id, finished_at, status != 'failed' FROM runs WHERE check_mode = 0"
                    " AND mode IN ('pull', 'push') AND status IN ('changed', 'unchanged', "
                    "'failed') AND revision IS NOT NULL AND finished_at IS NOT NULL AND NOT "
                    "EXISTS (SELECT 1 FROM applied WHERE applied.env = runs.env)")


class StoreError(Exception):
    """The store cannot be used as it is; the message names the file and what to do."""
    exit_code = ExitCode.REFUSED  # the operator's to fix (a directory, a newer schema)


class StoreUnavailable(StoreError):
    """The store cannot be read or written now: locked by another process for longer
    than the busy timeout, a full disk, an I/O error. An error of this run (exit 1)."""
    exit_code = ExitCode.ERROR


# SQLite's words for a store that cannot be used now but may be soon.
TRANSIENT = re.compile(r"locked|busy|full|disk I/O")
# What a journal says of the run it belongs to, written when it is recorded interrupted.
INTERRUPTED_FIELDS = ("revision", "verify", "signer", "subject", "author")
BUSY_TIMEOUT = 30  # seconds a write waits for another process's transaction


class Mode(StrEnum):
    """How a cycle was started; ``check`` modes change nothing on the targets."""
    PULL = "pull"    # fetch the configured repo and ref; skip if already applied
    PUSH = "push"    # converge a local checkout now (CI)
    PLAN = "plan"    # check mode with diff, from a local checkout or the repo
    DRIFT = "drift"  # check mode against the applied revision: what would change is drift

    @property
    def check(self) -> bool:
        return self in (Mode.PLAN, Mode.DRIFT)


class RunStatus(StrEnum):
    """How a cycle ended. ``success`` and ``failure`` are decided here and nowhere else;
    the statuses in neither set are: ``refused`` (a policy outcome, alerted on its own),
    ``busy`` (another cycle held the lock: retried soon), ``drifted`` (a drift check's
    finding), ``running`` and ``interrupted`` (records of a run in progress or killed)."""
    RUNNING = "running"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    NOTHING = "nothing"
    SUSPENDED = "suspended"
    DRIFTED = "drifted"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"
    REFUSED = "refused"
    BUSY = "busy"
    INTERRUPTED = "interrupted"

    @property
    def success(self) -> bool:
        return self in _SUCCESS

    @property
    def failure(self) -> bool:
        return self in _FAILURE

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self]


_SUCCESS = frozenset({RunStatus.CHANGED, RunStatus.UNCHANGED, RunStatus.NOTHING,
                      RunStatus.SUSPENDED})
# The exit code of every way a cycle can end (README's table): one status, one code.
EXIT_CODES = {
    RunStatus.UNCHANGED: ExitCode.OK, RunStatus.CHANGED: ExitCode.CHANGED,
    RunStatus.DRIFTED: ExitCode.CHANGED, RunStatus.NOTHING: ExitCode.NOTHING,
    RunStatus.SUSPENDED: ExitCode.NOTHING, RunStatus.FAILED: ExitCode.FAILED,
    RunStatus.REFUSED: ExitCode.REFUSED, RunStatus.BUSY: ExitCode.BUSY,
    RunStatus.ERROR: ExitCode.ERROR, RunStatus.CANCELLED: ExitCode.ERROR,
    RunStatus.INTERRUPTED: ExitCode.ERROR,
}
_FAILURE = frozenset({RunStatus.ERROR, RunStatus.FAILED, RunStatus.CANCELLED})
FAILED_OUTCOMES = ("failed", "unreachable")  # a host's; "refused" is not one of them


@dataclass(frozen=True)
class EnvState:
    """What the store knows of one environment."""
    env: str
    applied_revision: str | None = None
    applied_run: str | None = None
    applied_at: float | None = None
    good_revision: str | None = None
    good_run: str | None = None
    good_at: float | None = None
    checked_revision: str | None = None
    checked_at: float | None = None
    refused_revision: str | None = None
    refused_run: str | None = None
    refused_message: str | None = None
    fetch_error: str | None = None
    fetch_error_at: float | None = None
    suspended_reason: str | None = None
    suspended_at: float | None = None
    drift_revision: str | None = None
    drift_run: str | None = None
    drift_at: float | None = None
    drifted_hosts: tuple[str, ...] = ()
    applied_signer: str | None = None     # who signed the applied revision (verify policy)
    verified_revision: str | None = None  # the last revision applied under verify = strict
    pinned_revision: str | None = None    # rollback: cycles keep the environment here
    pinned_reason: str | None = None
    pinned_at: float | None = None
    approved_revision: str | None = None  # promote: approved by hand, past the soak
    approved_reason: str | None = None
    approved_at: float | None = None
    candidate_revision: str | None = None  # held back by a pin or the promotion gate
    waiting_reason: str | None = None      # why the candidate is not applied
    ahead: int | None = None               # commits of Git's ref beyond the applied revision

    @property
    def failing(self) -> bool:
        """The applied revision's last converge left failed or unreachable hosts."""
        return bool(self.applied_revision) and self.applied_revision != self.good_revision

    @property
    def suspended(self) -> bool:
        return self.suspended_reason is not None

    @property
    def pinned(self) -> bool:
        return self.pinned_revision is not None

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["drifted_hosts"] = list(self.drifted_hosts)
        data["failing"] = self.failing
        return data

    @classmethod
    def from_row(cls, env: str, row) -> "EnvState":
        if row is None:
            return cls(env)
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        values["drifted_hosts"] = tuple(json.loads(values["drifted_hosts"] or "[]"))
        return cls(**values)


_ENV_FIELDS = frozenset(f.name for f in dataclasses.fields(EnvState)) - {"env"}


@dataclass(frozen=True)
class Transition:
    """A named change of an environment's state: the fields it sets, nothing else."""
    name: str
    changes: dict

    def __post_init__(self):
        unknown = set(self.changes) - _ENV_FIELDS
        if unknown:
            raise ValueError(f"transition {self.name}: unknown fields {sorted(unknown)}")

    def then(self, other: "Transition") -> "Transition":
        """This transition followed by ``other``, written together."""
        return Transition(f"{self.name}+{other.name}", {**self.changes, **other.changes})

    @classmethod
    def checked(cls, revision: str, at: float) -> "Transition":
        """A pull cycle saw ``revision`` and found nothing to do; Git answered."""
        return cls("checked", {"checked_revision": revision, "checked_at": at,
                               "fetch_error": None, "fetch_error_at": None})

    @classmethod
    def fetch_failed(cls, error: str, at: float) -> "Transition":
        return cls("fetch_failed", {"fetch_error": error, "fetch_error_at": at})

    @classmethod
    def refused(cls, revision: str, run_id: str, message: str) -> "Transition":
        return cls("refused", {"refused_revision": revision, "refused_run": run_id,
                               "refused_message": message})

    @classmethod
    def applied(cls, revision: str, run_id: str, at: float, good: bool, fetched: bool,
                signer: str | None = None, strict: bool = False) -> "Transition":
        """A complete converge of ``revision``; ``good`` when no host failed, ``fetched``
        when it came from the repository (so Git answered); ``signer`` when the signature
        policy verified it, ``strict`` when that policy was strict (the next strict range
        starts here). The store also adds it to the history of applied revisions."""
        changes = {"applied_revision": revision, "applied_run": run_id, "applied_at": at,
                   "refused_revision": None, "refused_run": None, "refused_message": None,
                   "drift_revision": None, "drift_run": None, "drift_at": None,
                   "drifted_hosts": (), "applied_signer": signer}
        if strict:
            changes["verified_revision"] = revision
        if good:
            changes.update(good_revision=revision, good_run=run_id, good_at=at)
        if fetched:
            changes.update(checked_revision=revision, checked_at=at, fetch_error=None,
                           fetch_error_at=None)
        return cls("applied", changes)

    @classmethod
    def drift_recorded(cls, revision: str, run_id: str, at: float,
                       hosts) -> "Transition":
        return cls("drift_recorded", {"drift_revision": revision, "drift_run": run_id,
                                      "drift_at": at, "drifted_hosts": tuple(sorted(hosts))})

    @classmethod
    def suspended(cls, reason: str, at: float) -> "Transition":
        return cls("suspended", {"suspended_reason": reason, "suspended_at": at})

    @classmethod
    def resumed(cls) -> "Transition":
        return cls("resumed", {"suspended_reason": None, "suspended_at": None})

    @classmethod
    def pinned(cls, revision: str, reason: str, at: float) -> "Transition":
        return cls("pinned", {"pinned_revision": revision, "pinned_reason": reason,
                              "pinned_at": at})

    @classmethod
    def unpinned(cls) -> "Transition":
        return cls("unpinned", {"pinned_revision": None, "pinned_reason": None,
                                "pinned_at": None})

    @classmethod
    def approved(cls, revision: str, reason: str, at: float) -> "Transition":
        return cls("approved", {"approved_revision": revision, "approved_reason": reason,
                                "approved_at": at})

    @classmethod
    def held(cls, candidate: str | None, waiting: str | None, ahead: int | None,
             tip: str) -> "Transition":
        """What a pull cycle found held back: the candidate, why it waits, and how many
        commits Git's ref (at ``tip``) is ahead of what the environment runs (None: not
        known)."""
        return cls("held", {"candidate_revision": candidate, "waiting_reason": waiting,
                            "ahead": ahead, "checked_revision": tip})


@dataclass
class HostResult:
    host: str
    platform: str | None = None
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    message: str | None = None
    # It refused the revision before anything was applied on it (a task's result said
    # so, execute.REFUSED_KEY): not a failure of the host, the run is refused.
    refused: bool = False

    @property
    def outcome(self) -> str:
        if self.unreachable:
            return "unreachable"
        if self.refused:
            return "refused"
        if self.failed:
            return "failed"
        return "changed" if self.changed else "ok"


@dataclass
class TaskResult:
    host: str
    task: str
    role: str | None
    status: str  # ok | changed | failed | unreachable | skipped
    duration: float | None = None
    message: str | None = None
    diff: str | None = None  # a changed task's diff (unified), secrets masked


@dataclass
class RunRecord:
    env: str
    mode: Mode
    trigger: str
    ref: str | None = None
    revision: str | None = None
    check_mode: bool = False
    verify: str | None = None  # the signature policy the revision was checked under
    signer: str | None = None  # the signature it passed with
    subject: str | None = None  # the commit's subject line and author
    author: str | None = None
    started_by: str | None = None  # who or what started it (user@host, agent@host)
    id: str = field(default_factory=lambda: new_run_id())
    started_at: float = field(default_factory=time.time)


@dataclass
class Verdict:
    """How a run ended: what ``finish_run`` writes, and the state transition with it."""
    status: RunStatus
    message: str
    hosts: list[HostResult] = field(default_factory=list)
    tasks: list[TaskResult] = field(default_factory=list)
    transition: Transition | None = None
    logs: list[tuple[float, str, str]] = field(default_factory=list)  # (ts, level, message)
    # Per target, whether it is now clean at the run's revision (a converge, not a check:
    # False keeps its last clean revision and marks it failed; a target left out, such as
    # one that refused the revision, keeps its record as it was); hosts that left the
    # inventory (their records go); the run's scope (scope.Scope.as_dict()).
    clean: dict[str, bool] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)
    scope: dict | None = None

    @property
    def exit_code(self) -> ExitCode:
        return self.status.exit_code


@dataclass(frozen=True)
class HostRevision:
    """Where a target is: the revision last converged cleanly there (None: unknown) and the
    run that failed on it since (None: it is clean)."""
    host: str
    revision: str | None
    run_id: str | None = None
    at: float | None = None
    failed_run: str | None = None


@dataclass(frozen=True)
class Action:
    """What a person did to an environment, kept in its history: ``kind`` pin (a rollback),
    unpin or approve (promote), with the reason given."""
    kind: str
    revision: str | None
    reason: str | None
    from_revision: str | None = None  # a rollback: the revision it went back from
    at: float = field(default_factory=time.time)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def _column(name: str, value):
    return json.dumps(list(value)) if name == "drifted_hosts" else value


class Store:
    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"run store {path}: cannot create its directory "
                             f"{exc.filename or path.parent}: {exc.strerror}") from None
        try:
            self.db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise StoreError(self._advice(exc)) from None
        try:
            self.db.row_factory = sqlite3.Row
            self._open()
        except (sqlite3.DatabaseError, StoreError) as exc:
            self.db.close()
            if isinstance(exc, sqlite3.OperationalError) and (
                    TRANSIENT.search(str(exc)) or _no_room(path.parent)):
                raise self.unavailable(exc) from None
            raise StoreError(self._advice(exc)) from None

    def _advice(self, exc: Exception) -> str:
        if isinstance(exc, StoreError):
            return str(exc)
        text = "it is a directory" if self.path.is_dir() else str(exc)
        return (f"run store {self.path}: cannot be used ({text}). It is never overwritten: "
                f"move it aside (mv {self.path} {self.path}.broken) and the next run starts "
                "a fresh store")

    def _open(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"run store {self.path}: schema version {version} was written by "
                             f"a newer gitops-ansible (this one knows up to {SCHEMA_VERSION}); "
                             "upgrade, or move the file aside to start a fresh store")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if version < SCHEMA_VERSION:
            self.db.executescript(SCHEMA)
            self._migrate()
            self.db.execute(BACKFILL_APPLIED)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate(self) -> None:
        have: dict[str, set[str]] = {}
        for table, column, kind in MIGRATIONS:
            if table not in have:  # one look per table, not one per column
                have[table] = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have[table]:
                try:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def close(self) -> None:
        self.db.close()

    # -- environments -------------------------------------------------------------
    def env_state(self, env: str) -> EnvState:
        row = self.db.execute("SELECT * FROM environments WHERE env = ?", (env,)).fetchone()
        return EnvState.from_row(env, row)

    def environments(self) -> list[EnvState]:
        return [EnvState.from_row(r["env"], r)
                for r in self.db.execute("SELECT * FROM environments ORDER BY env")]

    def apply(self, env: str, transition: Transition, action: "Action | None" = None) -> None:
        """Write one transition on its own, with the person's ``action`` that caused it."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._apply(env, transition)
            if action:
                self.db.execute("INSERT INTO actions VALUES (?, ?, ?, ?, ?, ?)",
                                (env, action.at, action.kind, action.revision,
                                 action.from_revision, action.reason))

    def _apply(self, env: str, transition: Transition) -> None:
        self.db.execute("INSERT OR IGNORE INTO environments (env) VALUES (?)", (env,))
        changes = transition.changes
        names = sorted(changes)
        assignments = ", ".join(f"{name} = ?" for name in names)
        self.db.execute(f"UPDATE environments SET {assignments} WHERE env = ?",
                        (*(_column(n, changes[n]) for n in names), env))
        if "applied_revision" in changes:
            self.db.execute("INSERT INTO applied VALUES (?, ?, ?, ?, ?, ?)",
                            (env, changes["applied_revision"], changes["applied_run"],
                             changes["applied_at"], int("good_revision" in changes),
                             changes.get("applied_signer")))

    def applied_history(self, env: str) -> list[dict]:
        """Every converge that applied a revision (complete, not partial), newest first:
        revision, run_id, at, good (no host failed), signer."""
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM applied WHERE env = ? ORDER BY at DESC, rowid DESC", (env,))]

    def actions(self, env: str | None = None, limit: int = 20) -> list[dict]:
        """Pins, unpins, rollbacks and approvals, newest first."""
        where, args = ("WHERE env = ?", (env,)) if env else ("", ())
        return [dict(r) for r in self.db.execute(
            f"SELECT * FROM actions {where} ORDER BY at DESC, rowid DESC LIMIT ?",
            (*args, limit))]

    def drifted_since(self, env: str, revision: str, since: float) -> bool:
        """A drift check of ``revision`` found drift after ``since``."""
        return self.db.execute(
            "SELECT 1 FROM runs WHERE env = ? AND revision = ? AND mode = 'drift' AND "
            "status = 'drifted' AND started_at >= ? LIMIT 1", (env, revision, since)
        ).fetchone() is not None

    # -- runs -----------------------------------------------------------------------
    def start_run(self, run: RunRecord, artifacts: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO runs (id, env, mode, trigger, ref, revision, status, check_mode,"
            " started_at, pid, artifacts, started_by) VALUES (?, ?, ?, ?, ?, ?, 'running', ?,"
            " ?, ?, ?, ?)",
            (run.id, run.env, str(run.mode), run.trigger, run.ref, run.revision,
             int(run.check_mode), run.started_at, os.getpid(), artifacts, run.started_by))
        self.db.execute("INSERT OR IGNORE INTO environments (env) VALUES (?)", (run.env,))

    def finish_run(self, run: RunRecord, verdict: Verdict) -> None:
        """Complete a run and everything that depends on it in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, finished_at = ?, message = ?,"
                " revision = ?, verify = ?, signer = ?, subject = ?, author = ? WHERE id = ?",
                (str(verdict.status), int(verdict.exit_code), time.time(), verdict.message,
                 run.revision, run.verify, run.signer, run.subject, run.author, run.id))
            self._results(run.id, verdict.hosts, verdict.tasks, verdict.logs)
            self._host_revisions(run, verdict)
            if verdict.transition:
                self._apply(run.env, verdict.transition)

    def _host_revisions(self, run: RunRecord, verdict: Verdict) -> None:
        if verdict.scope is not None:
            self.db.execute("UPDATE runs SET scope = ? WHERE id = ?",
                            (json.dumps(verdict.scope), run.id))
        now = time.time()
        # a revision that is not a commit (push of a checkout with local changes): where
        # the hosts it converged are is known to no commit
        revision = run.revision if SHA_RE.match(run.revision or "") else None
        self.db.executemany(
            "INSERT OR REPLACE INTO host_revisions VALUES (?, ?, ?, ?, ?, NULL)",
            [(run.env, host, revision, run.id, now) for host, clean in verdict.clean.items()
             if clean])
        self.db.executemany(
            "INSERT INTO host_revisions (env, host, failed_run) VALUES (?, ?, ?) "
            "ON CONFLICT (env, host) DO UPDATE SET failed_run = excluded.failed_run",
            [(run.env, host, run.id) for host, clean in verdict.clean.items() if not clean])
        self.db.executemany("DELETE FROM host_revisions WHERE env = ? AND host = ?",
                            [(run.env, host) for host in verdict.left])

    def host_revisions(self, env: str) -> dict[str, HostRevision]:
        """Where each target of ``env`` is (the store's record of change-scoped runs)."""
        return {r["host"]: HostRevision(r["host"], r["revision"], r["run_id"], r["at"],
                                        r["failed_run"])
                for r in self.db.execute("SELECT * FROM host_revisions WHERE env = ? "
                                         "ORDER BY host", (env,))}

    def _results(self, run_id: str, hosts, tasks, logs) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO host_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, h.host, h.platform, h.outcome, h.ok, h.changed, h.failed,
              h.unreachable, h.skipped, h.message) for h in hosts])
        self.db.executemany(
            "INSERT INTO task_results (run_id, seq, host, task, role, status, changed,"
            " duration, message, diff) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, seq, t.host, t.task, t.role, t.status, int(t.status == "changed"),
              t.duration, t.message, t.diff) for seq, t in enumerate(tasks)])
        self.db.executemany(
            "INSERT OR REPLACE INTO run_logs VALUES (?, ?, ?, ?, ?)",
            [(run_id, seq, *line) for seq, line in enumerate(logs)])

    def running(self, env: str) -> list[dict]:
        """Runs left ``running`` by a process that was killed or could not record them.
        Call only while holding the env lock."""
        return [dict(r) for r in self.db.execute(
            "SELECT id, artifacts, started_at FROM runs WHERE env = ? AND status = 'running'",
            (env,))]

    def interrupted(self, run_id: str, message: str, at: float, hosts=(), tasks=(),
                    logs=(), run: dict | None = None) -> None:
        """Record a run that never completed as interrupted at ``at``, with the results
        that are known (its journal's: ``run`` gives what it converged, its revision and
        signature), in one transaction."""
        known = {k: v for k, v in (run or {}).items() if k in INTERRUPTED_FIELDS}
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, finished_at = ?, message = ?"
                + "".join(f", {k} = ?" for k in known) + " WHERE id = ?",
                (str(RunStatus.INTERRUPTED), int(RunStatus.INTERRUPTED.exit_code), at, message,
                 *known.values(), run_id))
            self._results(run_id, hosts, tasks, logs)

    def runs(self, env: str | None = None, limit: int = 20,
             changing_only: bool = False) -> list[dict]:
        """The newest runs first; ``changing_only``: not those in check mode (plan, drift
        checks, --check)."""
        where, args = [], []
        if env:
            where, args = ["env = ?"], [env]
        if changing_only:
            where.append("check_mode = 0")
        query = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        query += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        return [dict(r) for r in self.db.execute(query, (*args, limit))]

    def last_host_results(self, env: str) -> list[dict]:
        """Each target's newest result from a completed converging run (a change-scoped
        run has results for the targets it ran only), with that run's ``run_id``; once
        targets have revisions recorded, those that left the inventory are not listed."""
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM (SELECT host_results.*, ROW_NUMBER() OVER (PARTITION BY host ORDER"
            " BY runs.started_at DESC, runs.rowid DESC) AS newest FROM host_results JOIN runs"
            " ON runs.id = host_results.run_id WHERE runs.env = ? AND runs.check_mode = 0 AND"
            " runs.status != 'running') WHERE newest = 1 AND (host IN (SELECT host FROM"
            " host_revisions WHERE env = ?) OR NOT EXISTS (SELECT 1 FROM host_revisions WHERE"
            " env = ?)) ORDER BY host", (env, env, env))]

    def run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def host_results(self, run_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM host_results WHERE run_id = ? ORDER BY host", (run_id,))]

    def run_logs(self, run_id: str) -> list[dict]:
        """The log lines of a run, in order: ts, level, message."""
        return [dict(r) for r in self.db.execute(
            "SELECT ts, level, message FROM run_logs WHERE run_id = ? ORDER BY seq", (run_id,))]

    def task_results(self, run_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM task_results WHERE run_id = ? ORDER BY seq", (run_id,))]

    def old_artifacts(self, env: str, keep: int) -> list[tuple[str, str]]:
        rows = self.db.execute(
            "SELECT id, artifacts FROM runs WHERE env = ? AND artifacts IS NOT NULL"
            " AND status != 'running' ORDER BY started_at DESC LIMIT -1 OFFSET ?", (env, keep))
        return [(r["id"], r["artifacts"]) for r in rows]

    def forget_artifacts(self, run_id: str) -> None:
        self.db.execute("UPDATE runs SET artifacts = NULL WHERE id = ?", (run_id,))

    def unavailable(self, exc: sqlite3.OperationalError) -> StoreUnavailable:
        """Why the store cannot be used now, with what would let it: who holds it, or
        the free space."""
        text = str(exc)
        if "locked" in text or "busy" in text:  # SQLite: "database is locked"
            return StoreUnavailable(
                f"run store {self.path}: locked by another process for more than "
                f"{BUSY_TIMEOUT}s{lock_holder(self.path)}; nothing was recorded")
        room = _no_room(self.path.parent)
        return StoreUnavailable(f"run store {self.path}: {text}{free_space(self.path.parent)}"
                                + (f" ({room})" if room else ""))


def _unavailable_as_error(method):
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if not (TRANSIENT.search(str(exc)) or _no_room(self.path.parent)):
                raise  # not a store that cannot be used now: a bug, with its traceback
            raise self.unavailable(exc) from None
    return guarded


# Every read and write of an open store: a locked or full store is a StoreUnavailable.
for _name, _method in list(vars(Store).items()):
    if callable(_method) and not _name.startswith("_") and _name not in ("close", "unavailable"):
        setattr(Store, _name, _unavailable_as_error(_method))


def _no_room(directory: Path) -> str:
    """'no free space' or 'no free inode' when the file system is full ('' if it is not):
    SQLite then says only "unable to open database file", which is not the file's fault."""
    try:
        found = os.statvfs(directory)
    except OSError:
        return ""
    if found.f_files > 0 and found.f_favail == 0:
        return "no free inode"
    return "no free space" if found.f_bavail == 0 else ""


WAL_WRITE_LOCK = 120  # SQLite's WAL_WRITE_LOCK byte in the -shm file (wal.c)


def lock_holder(path: Path) -> str:
    """' (held by pid N: COMMAND)' for a process holding a write lock on the store's
    files (Linux /proc/locks), '' when none is found."""
    inodes = {}
    for suffix in ("", "-wal", "-shm"):
        try:
            inodes[os.stat(f"{path}{suffix}").st_ino] = suffix
        except OSError:
            continue
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()  # N: POSIX ADVISORY WRITE PID MAJ:MIN:INODE START END
        if len(fields) < 8 or fields[3] != "WRITE" or not fields[4].isdigit():
            continue
        pid, inode = int(fields[4]), fields[5].rsplit(":", 1)[-1]
        suffix = inodes.get(int(inode)) if inode.isdigit() else None
        # The writer's lock: byte 120 of -shm in WAL mode (the others are brief: readers'
        # marks, checkpoints); any write lock on the database file itself otherwise.
        writer = suffix == "" or (suffix == "-shm" and fields[6] == str(WAL_WRITE_LOCK))
        if pid != os.getpid() and writer:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                command = b"?"
            return f" (held by pid {pid}: {command.decode(errors='replace').strip()[:120]})"
    return ""
