"""Reading the records: each environment's status, the history of runs, one run in detail;
and the changes a person makes by hand: suspend and resume, pin (a rollback) and unpin,
approve (a promotion by hand).

What ``gitops-ansible status|history|events|suspend|resume|rollback|unpin|promote`` print
and the agent's HTTP view serves. Every function takes the state directory
(``Settings.state_path``).
"""
from __future__ import annotations

import json
import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from .report import plural
from .source import SHA_RE
from .store import Action, EnvState, Store, Transition


class NotAllowed(Exception):
    """A change by hand that the records do not allow; the message says why and what
    would be allowed."""


def _store(state_dir: Path) -> Store:
    return Store(Path(state_dir) / "runs.db")


def when(timestamp) -> str:
    """A timestamp for a person, in local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def short(revision) -> str:
    return revision[:12] if revision else "-"


def short_signer(signer) -> str:
    """A signer for a table: the kind and enough of the key (OpenPGP: the long key id)."""
    if not signer:
        return "-"
    kind, _, rest = signer.partition(" ")
    key = rest.split(" ", 1)[0]
    return f"{kind} {key[-16:] if kind == 'openpgp' else key[:19]}"


def alive(pid) -> bool:
    """A process with this pid runs on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # someone else's: it exists
        return True
    return True


@dataclass(frozen=True)
class EnvStatus:
    state: EnvState
    last_run: dict | None
    hosts: dict = field(default_factory=dict)  # target -> HostRevision (where it is)

    @property
    def dead_run(self) -> bool:
        """The last run says `running`, but its process is gone (killed): the next cycle
        records it interrupted."""
        run = self.last_run
        return bool(run) and run["status"] == "running" and not alive(run["pid"])

    def attention(self) -> list[str]:
        """What a person should look at, most pressing first."""
        state, notes = self.state, []
        if self.dead_run:
            notes.append(f"run {self.last_run['id']} died: its process {self.last_run['pid']} "
                         "is gone; the next cycle records it interrupted and converges again")
        if state.suspended:
            notes.append(f"suspended since {when(state.suspended_at)}: {state.suspended_reason}")
        if state.pinned:
            ahead = f"; Git is {plural(state.ahead, 'commit')} ahead" if state.ahead else ""
            notes.append(f"pinned at {short(state.pinned_revision)} since "
                         f"{when(state.pinned_at)}: {state.pinned_reason}{ahead}")
        elif state.waiting_reason:
            notes.append(f"waiting: {state.waiting_reason}")
        if state.drifted_hosts:
            notes.append(f"drift on {', '.join(state.drifted_hosts)} (run {state.drift_run})")
        if state.refused_revision:
            notes.append(f"revision {short(state.refused_revision)} refused")
        if state.fetch_error:
            notes.append(f"fetch failing since {when(state.fetch_error_at)}")
        if state.failing:
            notes.append("applied revision has failed hosts")
        behind = sorted(h.host for h in self.hosts.values() if h.failed_run)
        if behind:
            notes.append(f"not clean since their last run: {', '.join(behind)}")
        return notes

    def as_dict(self) -> dict:
        return {**self.state.as_dict(), "last_run": self.last_run,
                "dead_run": self.dead_run, "attention": self.attention(),
                "hosts": {h.host: {"revision": h.revision, "run": h.run_id, "at": h.at,
                                   "failed": bool(h.failed_run), "failed_run": h.failed_run}
                          for h in self.hosts.values()}}


def status(state_dir: Path, env: str | None = None) -> list[EnvStatus]:
    """Every environment the store knows (or just ``env``), with its newest run that was
    not in check mode (a plan, a drift check or a --check run changes nothing: they are in
    the history, not the environment's last run)."""
    with closing(_store(state_dir)) as store:
        out = []
        for state in store.environments():
            if env and state.env != env:
                continue
            last = store.runs(state.env, 1, changing_only=True)
            out.append(EnvStatus(state, last[0] if last else None,
                                 store.host_revisions(state.env)))
        return out


def history(state_dir: Path, env: str | None = None, limit: int = 20) -> list[dict]:
    """The newest runs first, each with ``hosts``: {host: outcome}; among them, by time,
    what people did (``action``: rollback, unpin, approve, with ``reason``)."""
    with closing(_store(state_dir)) as store:
        runs = store.runs(env, limit)
        for run in runs:
            run["hosts"] = {h["host"]: h["outcome"] for h in store.host_results(run["id"])}
            run["scope"] = json.loads(run["scope"]) if run.get("scope") else None
        actions = [{"action": a.pop("kind"), **a} for a in store.actions(env, limit)]
    merged = sorted(runs + actions, key=lambda item: item.get("started_at", item.get("at")),
                    reverse=True)
    return merged[:limit]


def run_detail(state_dir: Path, run_id: str) -> dict | None:
    """One run with its per-host (``hosts``) and per-task (``tasks``) results and its log
    lines (``logs``)."""
    with closing(_store(state_dir)) as store:
        run = store.run(run_id)
        if run:
            run["hosts"] = store.host_results(run_id)
            run["tasks"] = store.task_results(run_id)
            run["logs"] = store.run_logs(run_id)
            run["scope"] = json.loads(run["scope"]) if run.get("scope") else None
        return run


def suspend(state_dir: Path, env: str, reason: str) -> EnvState:
    """No changing pull cycle of ``env`` until ``resume``; push still converges."""
    with closing(_store(state_dir)) as store:
        store.apply(env, Transition.suspended(reason, time.time()))
        return store.env_state(env)


def resume(state_dir: Path, env: str) -> str | None:
    """Let changing runs start again; returns the reason it was suspended for, if it was."""
    with closing(_store(state_dir)) as store:
        reason = store.env_state(env).suspended_reason
        store.apply(env, Transition.resumed())
        return reason


def rollback_target(state_dir: Path, env: str, to: str | None = None,
                    run_id: str | None = None, verified: bool = False) -> str:
    """The revision a rollback goes to: one that ``env`` applied with no failed host (by
    commit id or its start, or by the run that applied it; default: the newest one before
    the applied revision). ``verified``: it must have passed a signature policy then."""
    with closing(_store(state_dir)) as store:
        state = store.env_state(env)
        clean = [row for row in store.applied_history(env) if row["good"]]
        if run_id:
            rows = [row for row in clean if row["run_id"] == run_id]
            asked = f"run {run_id}"
        elif to:
            rows = [row for row in clean if row["revision"].startswith(to.lower())]
            asked = f"revision {to}"
        else:
            rows = [row for row in clean if row["revision"] != state.applied_revision]
            asked = "an earlier revision"
    known = ", ".join(dict.fromkeys(short(row["revision"]) for row in clean)) or "none"
    if not rows:
        raise NotAllowed(f"{env}: {asked} is not a revision this environment applied with no "
                         f"failed host (those it did, newest first: {known})")
    if to and len({row["revision"] for row in rows}) > 1:
        raise NotAllowed(f"{env}: revision {to} is ambiguous: give more of the commit id")
    if verified and not any(row["signer"] for row in rows):
        raise NotAllowed(f"{env}: {short(rows[0]['revision'])} was applied without a verified "
                         "signature, and the signature policy now asks for one")
    return rows[0]["revision"]


def promotable(state_dir: Path, upstream: str, revision: str) -> str:
    """The full commit id ``revision`` names: itself when it is one, else the one revision
    that ``upstream`` applied starting with it."""
    if SHA_RE.match(revision.lower()):
        return revision.lower()
    with closing(_store(state_dir)) as store:
        found = {row["revision"] for row in store.applied_history(upstream)
                 if row["revision"].startswith(revision.lower())}
    if len(found) != 1:
        raise NotAllowed(f"revision {revision}: expected a full commit id (40 hex digits), or "
                         f"the start of one that {upstream} applied "
                         f"({'none matches' if not found else 'several match'})")
    return found.pop()


def pin(state_dir: Path, env: str, revision: str, reason: str) -> EnvState:
    """Keep ``env`` at ``revision`` (a rollback): pull cycles and the agent converge it and
    no other, until ``unpin``."""
    with closing(_store(state_dir)) as store:
        state = store.env_state(env)
        store.apply(env, Transition.pinned(revision, reason, time.time()),
                    Action("rollback", revision, reason, state.applied_revision))
        return store.env_state(env)


def unpin(state_dir: Path, env: str, reason: str | None = None) -> str | None:
    """Release a pin; returns the revision it held, if any."""
    with closing(_store(state_dir)) as store:
        held = store.env_state(env).pinned_revision
        if held:
            store.apply(env, Transition.unpinned(), Action("unpin", held, reason))
        return held


def approve(state_dir: Path, env: str, revision: str, reason: str) -> EnvState:
    """Let ``revision`` past the promotion gate of ``env`` (a hotfix)."""
    with closing(_store(state_dir)) as store:
        store.apply(env, Transition.approved(revision, reason, time.time()),
                    Action("approve", revision, reason))
        return store.env_state(env)
