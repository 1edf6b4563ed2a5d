"""The run records: SQLite in WAL mode, one file under the state directory.

A run row is written when a cycle starts (status ``running``) and completed when it
ends, in one transaction with its per-host and per-task results and the environment's
applied/good revisions. A process killed halfway leaves a ``running`` row that the next
cycle (holding the environment's lock) marks ``interrupted``; the applied revision only
moves on a completed converge, so the next cycle does the work again.
Nothing secret is written here: messages are redacted by the caller.
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

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
"""
# Columns added after the first release: (table, column, type), added when missing.
MIGRATIONS = [
    ("environments", "suspended_reason", "TEXT"), ("environments", "suspended_at", "REAL"),
    ("environments", "drift_revision", "TEXT"), ("environments", "drift_run", "TEXT"),
    ("environments", "drift_at", "REAL"), ("environments", "drifted_hosts", "TEXT"),
]

FAILED_OUTCOMES = ("failed", "unreachable")


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

    @property
    def outcome(self) -> str:
        if self.unreachable:
            return "unreachable"
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


@dataclass
class RunRecord:
    env: str
    mode: str
    trigger: str
    ref: str | None = None
    revision: str | None = None
    check_mode: bool = False
    id: str = field(default_factory=lambda: new_run_id())
    started_at: float = field(default_factory=time.time)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        have: dict[str, set[str]] = {}
        for table, column, kind in MIGRATIONS:
            if table not in have:  # one look per table on every open, not one per column
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
    def env_state(self, env: str) -> dict:
        row = self.db.execute("SELECT * FROM environments WHERE env = ?", (env,)).fetchone()
        return dict(row) if row else {"env": env}

    def environments(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM environments ORDER BY env")]

    def update_env(self, env: str, **values) -> None:
        self.db.execute("INSERT OR IGNORE INTO environments (env) VALUES (?)", (env,))
        assignments = ", ".join(f"{key} = ?" for key in values)
        self.db.execute(f"UPDATE environments SET {assignments} WHERE env = ?",
                        (*values.values(), env))

    # -- runs -----------------------------------------------------------------------
    def start_run(self, run: RunRecord, artifacts: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO runs (id, env, mode, trigger, ref, revision, status, check_mode,"
            " started_at, pid, artifacts) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
            (run.id, run.env, run.mode, run.trigger, run.ref, run.revision, int(run.check_mode),
             run.started_at, os.getpid(), artifacts))
        self.db.execute("INSERT OR IGNORE INTO environments (env) VALUES (?)", (run.env,))

    def set_revision(self, run_id: str, revision: str) -> None:
        self.db.execute("UPDATE runs SET revision = ? WHERE id = ?", (revision, run_id))

    def finish_run(self, run: RunRecord, status: str, exit_code: int, message: str | None = None,
                   hosts: list[HostResult] = (), tasks: list[TaskResult] = (),
                   env_update: dict | None = None) -> None:
        """Complete a run and everything that depends on it in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, finished_at = ?, message = ?,"
                " revision = ? WHERE id = ?",
                (status, exit_code, time.time(), message, run.revision, run.id))
            self.db.executemany(
                "INSERT OR REPLACE INTO host_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run.id, h.host, h.platform, h.outcome, h.ok, h.changed, h.failed,
                  h.unreachable, h.skipped, h.message) for h in hosts])
            self.db.executemany(
                "INSERT INTO task_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run.id, seq, t.host, t.task, t.role, t.status, int(t.status == "changed"),
                  t.duration, t.message) for seq, t in enumerate(tasks)])
            if env_update:
                self.db.execute("INSERT OR IGNORE INTO environments (env) VALUES (?)", (run.env,))
                assignments = ", ".join(f"{key} = ?" for key in env_update)
                self.db.execute(f"UPDATE environments SET {assignments} WHERE env = ?",
                                (*env_update.values(), run.env))

    def mark_interrupted(self, env: str) -> list[dict]:
        """Runs left ``running`` by a killed process. Call only while holding the env lock."""
        rows = [dict(r) for r in self.db.execute(
            "SELECT id, artifacts FROM runs WHERE env = ? AND status = 'running'", (env,))]
        for row in rows:
            self.db.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?, message = ?"
                " WHERE id = ?",
                (time.time(), "the process ended before the run completed", row["id"]))
        return rows

    def runs(self, env: str | None = None, limit: int = 20) -> list[dict]:
        query, args = "SELECT * FROM runs", []
        if env:
            query, args = query + " WHERE env = ?", [env]
        query += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        return [dict(r) for r in self.db.execute(query, (*args, limit))]

    def last_converge(self, env: str) -> dict | None:
        """The newest completed converging run that has per-host results."""
        row = self.db.execute(
            "SELECT * FROM runs WHERE env = ? AND check_mode = 0 AND status != 'running' AND"
            " EXISTS (SELECT 1 FROM host_results WHERE run_id = runs.id)"
            " ORDER BY started_at DESC, rowid DESC LIMIT 1", (env,)).fetchone()
        return dict(row) if row else None

    def run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def host_results(self, run_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM host_results WHERE run_id = ? ORDER BY host", (run_id,))]

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


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
