"""A run's results as they happen: one JSON line per task result, Ansible's final stats
and the run's log lines, appended to STATE_DIR/journal/RUN_ID.jsonl as each arrives.

The store gets a run's results once, when the run ends (``Store.finish_run``). Until
then they live here, so that a run killed at any moment, or whose final write fails (a
locked store, a full disk), is completed from its journal by the next cycle
(``replay``): its hosts and tasks recorded, the run interrupted at the time of its last
line. A journal exists exactly as long as its content is not in the store.

Everything written is redacted first (``Execution.handle`` scrubs events before they
reach here; log lines are scrubbed on the way in). Each line is one ``write``: it
survives the process being killed (the kernel has it), not a power cut.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .store import TaskResult


def path_for(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / "journal" / f"{run_id}.jsonl"


class Journal:
    """The append side. A write that fails (a full disk) is kept in ``error`` and ends the
    run (the caller cancels it): results that cannot be made durable are not gathered."""

    def __init__(self, path: Path, redactor, platforms: dict[str, str], run: dict):
        self.path, self.redactor, self.error = path, redactor, None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._write({"platforms": platforms, "run": run})

    def _write(self, entry: dict) -> None:
        """One whole line or none: a write cut short (a full disk) is taken back."""
        if self.error or self.fd is None:
            return
        data = (json.dumps({"at": round(time.time(), 3), **entry}, default=str) + "\n").encode()
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(data):
                written += os.write(self.fd, data[written:])
        except OSError as exc:
            self.error = exc
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass  # replay leaves out a line that does not parse

    def task(self, result: TaskResult) -> None:
        self._write({"task": dataclasses.asdict(result)})

    def stats(self, stats: dict) -> None:
        self._write({"stats": stats})

    def line(self, ts: float, level: str, text: str) -> None:
        self._write({"line": [ts, level, self.redactor.scrub(text)]})

    def verdict(self, status: str, message: str) -> None:
        """How the run ended, when the store could not be told."""
        self._write({"verdict": [status, self.redactor.scrub(message)]})

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        """The content is in the store: the journal goes."""
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Replayed:
    """What a journal holds: the task results, Ansible's stats (None: Ansible never
    finished), the log lines, each host's platform, when its last line was written, and
    how the run ended if it ended but could not be recorded (status, message)."""
    tasks: list[TaskResult] = field(default_factory=list)
    stats: dict | None = None
    lines: list[tuple[float, str, str]] = field(default_factory=list)
    platforms: dict[str, str] = field(default_factory=dict)
    last_at: float | None = None
    verdict: tuple[str, str] | None = None
    run: dict = field(default_factory=dict)  # what the run converged: revision, signer, ...


def replay(path: Path) -> Replayed | None:
    """A journal read back (None when there is none). A line cut short by the kill is
    the last one and is left out."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    found = Replayed()
    for raw in text.splitlines():
        try:
            _read(json.loads(raw), found)
        except (ValueError, TypeError, AttributeError, KeyError):  # cut, or not ours
            continue
    return found


TASK_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskResult))


def _read(entry: dict, found: Replayed) -> None:
    if "task" in entry:
        found.tasks.append(TaskResult(**{k: v for k, v in entry["task"].items()
                                         if k in TASK_FIELDS}))
    elif "stats" in entry:
        found.stats = dict(entry["stats"])
    elif "line" in entry:
        ts, level, text = entry["line"]
        found.lines.append((ts, level, text))
    elif "platforms" in entry:
        found.platforms, found.run = dict(entry["platforms"]), dict(entry.get("run") or {})
    elif "verdict" in entry:
        status, message = entry["verdict"]
        found.verdict = (status, message)
    found.last_at = entry.get("at", found.last_at)
