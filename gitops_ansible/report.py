"""Report: exit codes, progress for a person, JSON lines for machines, secret redaction.

The ``Reporter`` is the listener of a run: ``execute`` calls ``task_start`` and
``task_result`` as events arrive; ``reconcile`` calls ``log`` and ``summary``. In JSON
mode every line is one object carrying ``run_id``, ``env`` and ``revision``.
"""
from __future__ import annotations

import difflib
import json
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
    REFUSED = 5     # bad input or policy: nothing was touched
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
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink() or skip and \
                    set(path.relative_to(root).parts[:-1]) & set(skip):
                continue
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError):
                continue
            clean = self.scrub(text)
            if clean != text:
                path.write_text(clean)


class Reporter:
    """Progress for a person (default) or JSON lines (``json_mode``) on ``out``."""

    def __init__(self, json_mode: bool = False, out=None, err=None, show_diff: bool = False,
                 tagged: bool = False):
        self.json_mode, self.show_diff, self.tagged = json_mode, show_diff, tagged
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.context: dict = {}
        self._task = None

    def _write(self, stream, text: str) -> None:
        """Write lines; a tagged reporter (the agent) starts each with time, env, revision
        and run, so that one log can be followed from a commit to a host and a task."""
        if self.tagged:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            tag = " ".join(f"{key}={str(self.context[key])[:12 if key == 'revision' else None]}"
                           for key in ("env", "revision", "run_id") if key in self.context)
            lead = f"{stamp} {tag} " if tag else f"{stamp} "
            text = "".join(lead + line + "\n" for line in text.splitlines())
        stream.write(text)
        stream.flush()

    def bind(self, **context) -> None:
        self.context.update({k: v for k, v in context.items() if v is not None})

    def emit(self, event: str, **fields) -> None:
        record = {"ts": round(time.time(), 3), "event": event, **self.context, **fields}
        self.out.write(json.dumps(record, default=str) + "\n")
        self.out.flush()

    def log(self, message: str, level: str = "info", **fields) -> None:
        if self.json_mode:
            self.emit("log", level=level, message=message, **fields)
            return
        stream = self.err if level in ("error", "warning") else self.out
        prefix = "" if level == "info" else f"{level}: "
        self._write(stream, f"{prefix}{message}\n")

    def task_start(self, task: str, role: str | None) -> None:
        self._task = f"{role} : {task}" if role else task
        if not self.json_mode:
            self._write(self.out, f"TASK {self._task}\n")

    def task_result(self, result, diff=None) -> None:
        if self.json_mode:
            self.emit("task_result", host=result.host, task=result.task, role=result.role,
                      status=result.status, duration=result.duration, message=result.message)
            return
        if result.status == "skipped":
            return  # kept in the records and JSON lines; noise for a person
        took = f" ({result.duration:.1f}s)" if result.duration else ""
        line = f"  {result.host:<20} {result.status:<11}{took}"
        if result.message:
            line += f"  {result.message}"
        if diff and self.show_diff:
            line += "\n" + render_diff(diff).rstrip("\n")
        self._write(self.out, line + "\n")

    def summary(self, hosts, excluded: dict | None = None) -> None:
        excluded = excluded or {}
        if self.json_mode:
            for host in hosts:
                self.emit("host_result", host=host.host, platform=host.platform,
                          outcome=host.outcome, ok=host.ok, changed=host.changed,
                          failed=host.failed, unreachable=host.unreachable,
                          skipped=host.skipped, message=host.message)
            return
        rows = [(h.host, h.platform or "-", str(h.ok), str(h.changed), str(h.failed),
                 str(h.unreachable), str(h.skipped), h.outcome, h.message or "") for h in hosts]
        rows.extend((host, "-", "0", "0", "0", "1", "0", "unreachable", f"pre-flight: {why}")
                    for host, why in sorted(excluded.items()) if host not in {h.host for h in hosts})
        self._write(self.out, table(("HOST", "PLATFORM", "OK", "CHANGED", "FAILED", "UNREACHABLE",
                                     "SKIPPED", "OUTCOME", "MESSAGE"), rows))


def table(header, rows) -> str:
    rows = [tuple(header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    return "\n".join(lines) + "\n"


def render_diff(diff) -> str:
    """Ansible's diff results (before/after or prepared text) as a unified diff."""
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
        lines = difflib.unified_diff(str(before).splitlines(True), str(after).splitlines(True),
                                     str(item.get("before_header", "before")),
                                     str(item.get("after_header", "after")))
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        out.append(text)
    return "".join("      " + line + "\n" for chunk in out for line in chunk.splitlines())
