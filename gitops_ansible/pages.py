"""The agent's status pages: HTML rendered on the server with jinja2, readable without
JavaScript, refreshing themselves.

    /                  every source: applied revision (subject, author, signer), last good,
                       pin or candidate, drift, suspension or window, last run, last success
    /env/ENV           one environment: each target's state and drifted tasks, its history
    /runs/RUN_ID       one run: per target and per task results, diffs, the cause of a
                       failure, its log lines, who or what started it

Everything shown comes from the store, where secrets are masked before they are written,
and from the scheduler's state. Actions (sync, suspend, resume) are forms that appear only
when the agent's ``actions`` are on and the visitor has signed in with the actions token
(``server`` checks the token, the session and each form's CSRF field).
"""
from __future__ import annotations

import math
import time
from contextlib import closing
from pathlib import Path

import jinja2

from .records import history, run_detail, short, short_signer, status, when
from .report import plural
from .source import redact_url
from .store import FAILED_OUTCOMES, Store

REFRESH = 15          # seconds between reloads of the overview and an environment's page
REFRESH_RUNNING = 5   # a run's page while it runs
HISTORY = 30          # runs shown on an environment's page

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("gitops_ansible", "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True,
                          undefined=jinja2.StrictUndefined)
_ENV.filters.update(short=short, signer=short_signer, when=when, redact=redact_url,
                    plural=plural)


def ago(seconds: float | None) -> str:
    """A duration for a person: 45s, 12m, 3h 5m, 2d 4h."""
    if seconds is None or math.isinf(seconds):
        return "-"
    seconds = int(max(0, seconds))
    for size, unit, smaller, sub in ((86400, "d", 3600, "h"), (3600, "h", 60, "m")):
        if seconds >= size:
            rest = (seconds % size) // smaller
            return f"{seconds // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


def took(seconds: float) -> str:
    """A run's duration: tenths under a minute (as `history` shows it), else as ``ago``."""
    return f"{seconds:.1f}s" if seconds < 60 else ago(seconds)


_ENV.filters.update(ago=ago, took=took)


def render(template: str, **context) -> str:
    return _ENV.get_template(template).render(**context)


def overview(agent, session) -> str:
    """/: one row per source."""
    known = {env.state.env: env for env in status(agent.config.state_dir)}
    rows = []
    with closing(Store(Path(agent.config.state_dir) / "runs.db")) as store:
        for state in agent.states.values():
            env = known.get(state.env)
            applied = store.run(env.state.applied_run) if env and env.state.applied_run \
                else None
            rows.append({"source": state.source, "state": state, "env": env,
                         "applied": applied,
                         "retry_in": state.next_cycle - time.monotonic(),
                         "since_success": time.time() - state.last_success
                         if state.last_success else None})
    return render("overview.html", rows=rows, session=session, refresh=REFRESH,
                  busy=agent.busy_since is not None)


def environment(agent, name: str, session) -> str | None:
    """/env/NAME: its targets and history; None when the agent has no such environment."""
    source = next((s for s in agent.states.values() if s.env == name), None)
    if source is None:
        return None
    state_dir = Path(agent.config.state_dir)
    env = next((e for e in status(state_dir, name)), None)
    return render("environment.html", name=name, source=source, env=env,
                  targets=targets(state_dir, name), runs=history(state_dir, name, HISTORY),
                  session=session, refresh=REFRESH)


def targets(state_dir: Path, env: str) -> list[dict]:
    """Each target: its platform, the outcome and message of the last run that converged
    it, the revision it is clean at, and the tasks the last drift check found drifted on
    it. (With change-scoped runs, the last converge ran some targets only.)"""
    with closing(Store(state_dir / "runs.db")) as store:
        state = store.env_state(env)
        hosts = store.last_host_results(env)
        where = store.host_revisions(env)
        drifted: dict[str, list[str]] = {}
        if state.drift_run:
            for task in store.task_results(state.drift_run):
                if task["status"] == "changed":
                    drifted.setdefault(task["host"], []).append(task["task"])
    return [{**host, "failed": host["outcome"] in FAILED_OUTCOMES,
             "revision": where[host["host"]].revision if host["host"] in where else None,
             "drifted": drifted.get(host["host"], [])} for host in hosts]


def run(agent, run_id: str, session) -> str | None:
    """/runs/RUN_ID; None when there is no such run."""
    detail = run_detail(agent.config.state_dir, run_id)
    if detail is None:
        return None
    end = detail["finished_at"] or time.time()
    failed = [h for h in detail["hosts"] if h["outcome"] in FAILED_OUTCOMES]
    by_host: dict[str, list[dict]] = {}
    for task in detail["tasks"]:
        by_host.setdefault(task["host"], []).append(task)
    return render("run.html", run=detail, failed=failed, tasks=by_host,
                  duration=end - detail["started_at"], session=session,
                  refresh=REFRESH_RUNNING if detail["status"] == "running" else None)


def login(session, error: str | None = None) -> str:
    return render("login.html", session=session, error=error, refresh=None)
