"""Reading the records: each environment's status, the history of runs, one run in detail;
and the two changes a person makes by hand, suspend and resume.

What ``gitops-ansible status|history|events|suspend|resume`` print and the agent's HTTP
view serves. Every function takes the state directory (``Settings.state_path``).
"""
from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from .store import EnvState, Store, Transition


def _store(state_dir: Path) -> Store:
    return Store(Path(state_dir) / "runs.db")


def when(timestamp) -> str:
    """A timestamp for a person, in local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def short(revision) -> str:
    return revision[:12] if revision else "-"


@dataclass(frozen=True)
class EnvStatus:
    state: EnvState
    last_run: dict | None

    def attention(self) -> list[str]:
        """What a person should look at, most pressing first."""
        state, notes = self.state, []
        if state.suspended:
            notes.append(f"suspended since {when(state.suspended_at)}: {state.suspended_reason}")
        if state.drifted_hosts:
            notes.append(f"drift on {', '.join(state.drifted_hosts)} (run {state.drift_run})")
        if state.refused_revision:
            notes.append(f"revision {short(state.refused_revision)} refused")
        if state.fetch_error:
            notes.append(f"fetch failing since {when(state.fetch_error_at)}")
        if state.failing:
            notes.append("applied revision has failed hosts")
        return notes

    def as_dict(self) -> dict:
        return {**self.state.as_dict(), "last_run": self.last_run,
                "attention": self.attention()}


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
            out.append(EnvStatus(state, last[0] if last else None))
        return out


def history(state_dir: Path, env: str | None = None, limit: int = 20) -> list[dict]:
    """The newest runs first, each with ``hosts``: {host: outcome}."""
    with closing(_store(state_dir)) as store:
        runs = store.runs(env, limit)
        for run in runs:
            run["hosts"] = {h["host"]: h["outcome"] for h in store.host_results(run["id"])}
        return runs


def run_detail(state_dir: Path, run_id: str) -> dict | None:
    """One run with its per-host (``hosts``) and per-task (``tasks``) results."""
    with closing(_store(state_dir)) as store:
        run = store.run(run_id)
        if run:
            run["hosts"] = store.host_results(run_id)
            run["tasks"] = store.task_results(run_id)
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
