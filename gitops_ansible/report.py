"""Report: exit codes, progress for a person, JSON lines for machines, secret redaction.

The ``Reporter`` is the listener of a run: ``execute`` calls ``task_start`` and
``task_result`` as events arrive; ``reconcile`` calls ``log``, ``summary`` and
``pending``. Each becomes an event for a callback; ``ConsoleReporter`` prints them, for a
person or as JSON lines (every line one object carrying ``run_id``, ``env`` and
``revision``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from enum import IntEnum
from pathlib import Path

MASK = "********"


class ExitCode(IntEnum):
    """Documented in the README; stable across releases."""
    OK = 0          # converged (or planned): no changes
    ERROR = 1       # Git unreachable, Ansible crashed, timeout, internal error
    CHANGED = 2     # converged with changes (plan: changes pending)
    NOTHING = 3     # nothing to do: the revision is already applied
    FAILED = 4      # some hosts failed or were unreachable
    REFUSED = 5     # bad input, policy, or a target refused it: nothing applied there
    BUSY = 6        # another cycle holds the environment's lock (lock = fail)


class Redactor:
    """Replace every known secret value by a mask, in text, events and artifact files."""

    def __init__(self, secrets=()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text):
        if not isinstance(text, str) or not self.secrets:
            return text
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def scrub_event(self, value):
        """Scrub a JSON-like structure in place; return it."""
        if isinstance(value, dict):
            for key, item in value.items():
                value[key] = self.scrub(item) if isinstance(item, str) else self.scrub_event(item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                value[index] = self.scrub(item) if isinstance(item, str) else self.scrub_event(item)
        return value

    def scrub_tree(self, root: Path, skip: tuple[str, ...] = ()) -> None:
        """Rewrite files under ``root`` that contain a secret; directories named in ``skip``
        hold files that were scrubbed before they were written."""
        if not self.secrets or not root.exists():
            return
        for folder, dirs, files in os.walk(root):  # symlinks to directories: not followed
            dirs[:] = [d for d in dirs if d not in skip]  # not even listed (one per event)
            for name in files:
                path = Path(folder, name)
                if path.is_symlink():
                    continue
                try:  # bytes that are not UTF-8 are kept as they are, around the secrets
                    text = path.read_text(errors="surrogateescape")
                except FileNotFoundError:
                    continue
                clean = self.scrub(text)
                if clean != text:
                    path.write_text(clean, errors="surrogateescape")


class Reporter:
    """The listener of a run. Every log line, task start, task result and host summary
    becomes one event (a dict carrying ``event``, ``ts`` and the bound context: ``run_id``,
    ``env``, ``revision``), passed to ``on_event``. Without ``on_event`` it is silent: the
    library prints nothing unless given a reporter that does. ``describe`` says each event
    as lines for a person: what the console prints and what a run keeps as its log."""

    def __init__(self, on_event=None):
        self.on_event = on_event
        self.context: dict = {}
        # (ts, level, text) of what was said since keep_lines(): a run's log. A reporter
        # that lives as long as the agent keeps none.
        self.lines: list[tuple[float, str, str]] | None = None
        self.sink = None  # also called with each kept line as it is said (a run's journal)
        self._rows: list = []  # host results, said as one table by the summary

    def bind(self, **context) -> None:
        self.context.update({k: v for k, v in context.items() if v is not None})

    def keep_lines(self) -> None:
        """From now on, keep what is said (a cycle records it with its run)."""
        self.lines = []

    def emit(self, event: str, **fields) -> None:
        self.handle({"ts": round(time.time(), 3), "event": event, **self.context, **fields})

    def handle(self, record: dict) -> None:
        said = self.describe(record)
        if self.lines is not None:
            for level, text in said:
                self.lines.append((record["ts"], level, text))
                if self.sink:
                    self.sink(record["ts"], level, text)
        self.show(record, said)
        if self.on_event:
            self.on_event(record)

    def show(self, record: dict, said: list[tuple[str, str]]) -> None:
        """Where a subclass prints an event; here, nowhere."""

    def describe(self, record: dict) -> list[tuple[str, str]]:
        """An event as (level, text) lines for a person; none for a skipped task."""
        event = record["event"]
        if event == "log":
            return [(record["level"], record["message"])]
        if event == "task_start":
            role, task = record.get("role"), record.get("task", "")
            return [("info", f"TASK {role} : {task}" if role else f"TASK {task}")]
        if event == "task_result" and record["status"] != "skipped":  # skips: noise here
            took = f" ({record['duration']:.1f}s)" if record.get("duration") else ""
            line = f"  {record['host']:<20} {record['status']:<11}{took}"
            return [("info", line + (f"  {record['message']}" if record.get("message") else ""))]
        if event == "host_result":
            self._rows.append((record["host"], record["platform"] or "-", record["ok"],
                               record["changed"], record["failed"], record["unreachable"],
                               record["skipped"], record["outcome"], record["message"] or ""))
        elif event == "summary":
            rows, self._rows = self._rows, []
            return [("info", table(("HOST", "PLATFORM", "OK", "CHANGED", "FAILED",
                                    "UNREACHABLE", "SKIPPED", "OUTCOME", "MESSAGE"), rows))]
        elif event in ("drift", "pending_changes"):
            lead = "drift on {}: " if event == "drift" else "{} would change: "
            return [("info", lead.format(host) + "; ".join(tasks))
                    for host, tasks in sorted(record["hosts"].items())]
        return []

    def log(self, message: str, level: str = "info", **fields) -> None:
        self.emit("log", level=level, message=message, **fields)

    def task_start(self, task: str, role: str | None) -> None:
        self.emit("task_start", task=task, role=role)

    def task_result(self, result, diff=None) -> None:
        self.emit("task_result", host=result.host, task=result.task, role=result.role,
                  status=result.status, duration=result.duration, message=result.message,
                  diff=diff)

    def summary(self, hosts) -> None:
        for host in hosts:
            self.emit("host_result", host=host.host, platform=host.platform,
                      outcome=host.outcome, ok=host.ok, changed=host.changed,
                      failed=host.failed, unreachable=host.unreachable,
                      skipped=host.skipped, message=host.message)
        self.emit("summary", hosts=len(hosts))

    def pending(self, by_host: dict[str, list[str]], drift: bool) -> None:
        """Check mode: the tasks that would change, per host (drift: the drift found)."""
        self.emit("drift" if drift else "pending_changes", hosts=by_host)


class ConsoleReporter(Reporter):
    """What the CLI and the agent print: progress for a person (default) or JSON lines
    (``json_mode``) on ``out``; warnings and errors for a person go to ``err``."""

    def __init__(self, json_mode: bool = False, out=None, err=None, show_diff: bool = False,
                 tagged: bool = False, on_event=None):
        super().__init__(on_event)
        self.json_mode, self.show_diff, self.tagged = json_mode, show_diff, tagged
        self.out, self.err = out or sys.stdout, err or sys.stderr

    def show(self, record: dict, said: list[tuple[str, str]]) -> None:
        if self.json_mode:
            self._json(record)
            return
        for level, text in said:
            if record["event"] == "task_result" and record.get("diff") and self.show_diff:
                text += "\n" + render_diff(record["diff"]).rstrip("\n")
            stream = self.err if level in ("error", "warning") else self.out
            self._write(stream, ("" if level == "info" else f"{level}: ") + text)

    def _json(self, record: dict) -> None:
        if record["event"] in ("task_start", "summary"):
            return  # a person's progress; machines get task_result and host_result
        line = {k: v for k, v in record.items() if k != "diff"}
        self.out.write(json.dumps(line, default=str) + "\n")
        self.out.flush()

    def _write(self, stream, text: str) -> None:
        """Write lines; a tagged reporter (the agent) starts each with time, env, revision
        and run, so that one log can be followed from a commit to a host and a task."""
        if self.tagged:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            tag = " ".join(f"{key}={str(self.context[key])[:12 if key == 'revision' else None]}"
                           for key in ("env", "revision", "run_id") if key in self.context)
            lead = f"{stamp} {tag} " if tag else f"{stamp} "
            text = "".join(lead + line + "\n" for line in text.splitlines())
        elif not text.endswith("\n"):
            text += "\n"
        stream.write(text)
        stream.flush()


def plural(count: int, word: str) -> str:
    """``1 commit``, ``2 commits``."""
    return f"{count} {word}{'' if count == 1 else 's'}"

def free_mb(path: Path) -> float | None:
    """MiB free on the file system of ``path`` (its nearest existing directory; None if
    none can be asked)."""
    import shutil

    for where in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(where).free / 2**20
        except OSError:
            continue
    return None


def free_space(path: Path) -> str:
    """'; N MiB free in PATH' for the message of a write that failed ('' if unknown)."""
    free = free_mb(path)
    return "" if free is None else f"; {free:.1f} MiB free in {path}"


def save_traceback(state_dir: Path, name: str, redactor: "Redactor | None" = None) -> str:
    """Write the traceback being handled to STATE_DIR/logs/NAME.traceback (secrets masked);
    return " (details in PATH)" for the user's one line, or "" when it cannot be written."""
    import traceback

    path = Path(state_dir) / "logs" / f"{name}.traceback"
    text = traceback.format_exc()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(redactor.scrub(text) if redactor else text)
    except OSError:
        return ""
    return f" (details in {path})"


def table(header, rows) -> str:
    rows = [tuple(header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    return "\n".join(lines) + "\n"


def render_diff(diff) -> str:
    """Ansible's diff results as a unified diff, indented under a task's line."""
    return "".join("      " + line + "\n" for line in diff_text(diff).splitlines())


def diff_text(diff) -> str:
    """Ansible's diff results (before/after or prepared text) as a unified diff."""
    from difflib import unified_diff  # not in the idle agent: diffs are said in cycles

    items = diff if isinstance(diff, list) else [diff]
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("prepared"):
            out.append(str(item["prepared"]).rstrip("\n") + "\n")
            continue
        before, after = item.get("before", ""), item.get("after", "")
        if isinstance(before, dict) or isinstance(after, dict):
            before, after = json.dumps(before, indent=1), json.dumps(after, indent=1)
        lines = unified_diff(str(before).splitlines(True), str(after).splitlines(True),
                             str(item.get("before_header", "before")),
                             str(item.get("after_header", "after")))
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        out.append(text)
    return "".join(out)
