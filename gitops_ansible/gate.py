"""Which revision a pull cycle may apply: the tip of Git's ref, unless the environment is
pinned (a rollback) or follows another environment (gated promotion).

- **Pinned**: cycles keep the environment at the pin; Git's tip is the candidate, held.
- **promote_from = UP, soak = S**: the environment converges only a revision that UP
  converged with no failed or unreachable host at least S ago, that no later converge of
  UP left failed hosts on and no drift check of UP found drifted, and that UP was not
  rolled back from; the newest such revision (by when UP converged it). A revision approved by hand (``promote``) goes past
  the soak, until UP converges a newer one cleanly. UP's records are read from the same
  store: both environments are converged from one state directory.

These are decisions on the store's records only: no Git, no Ansible.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from .store import EnvState, Store


@dataclass(frozen=True)
class Target:
    """What a cycle may converge (``revision``; None: nothing yet), why it is not the tip
    (``why``), and the revision held back with the reason it waits."""
    revision: str | None
    why: str | None = None
    candidate: str | None = None
    waiting: str | None = None


@dataclass(frozen=True)
class Upstream:
    """One revision as the upstream environment converged it."""
    revision: str
    since: float | None          # its first clean converge upstream (None: never clean)
    blocked: str | None          # why it can never be promoted (failed, drifted, rolled back)
    failed_run: str | None = None  # its last converge upstream that left failed hosts


def _short(revision: str) -> str:
    return revision[:12]


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def upstream_revisions(store: Store, env: str) -> list[Upstream]:
    """The revisions ``env`` applied, newest first, each with its first clean converge and
    what rules it out."""
    rows = list(reversed(store.applied_history(env)))  # oldest first
    rolled_back = {a["from_revision"] for a in store.actions(env, limit=1000)
                   if a["kind"] == "rollback"}
    seen: dict[str, Upstream] = {}
    order: list[str] = []
    for row in rows:
        revision = row["revision"]
        known = seen.get(revision)
        if revision in order:
            order.remove(revision)
        order.append(revision)
        known = known or Upstream(revision, None, None)
        if row["good"] and known.since is None:
            known = replace(known, since=row["at"])
        elif not row["good"]:
            known = replace(known, failed_run=row["run_id"])
            if known.since is not None and not known.blocked:
                known = replace(known, blocked=f"failed in {env} (run {row['run_id']})")
        seen[revision] = known
    out = []
    for revision in reversed(order):
        item = seen[revision]
        if not item.blocked and revision in rolled_back:
            item = replace(item, blocked=f"{env} was rolled back from it")
        if not item.blocked and item.since and store.drifted_since(env, revision, item.since):
            item = replace(item, blocked=f"a drift check in {env} found drift on it")
        out.append(item)
    return out


def promotion(state: EnvState, store: Store, upstream: str, soak: float,
              now: float) -> Target:
    """The revision an environment that follows ``upstream`` may converge now."""
    revisions = upstream_revisions(store, upstream)
    ready = [u for u in revisions if u.since and not u.blocked and u.since + soak <= now]
    pick = max(ready, key=lambda u: u.since, default=None)
    revision, why = None, None
    if pick:
        revision = pick.revision
        why = f"promoted from {upstream}: converged cleanly there at {_clock(pick.since)}"
    if state.approved_revision and (pick is None or state.approved_at > pick.since):
        revision = state.approved_revision
        why = f"approved by hand ({state.approved_reason})"
    newest = revisions[0] if revisions else None
    if newest is None:
        return Target(revision, why, None, f"{upstream} has converged nothing yet")
    if newest.revision == revision:
        return Target(revision, why)
    if newest.blocked:
        waiting = f"{_short(newest.revision)} {newest.blocked}"
    elif newest.failed_run:
        waiting = (f"{_short(newest.revision)} failed in {upstream} (run {newest.failed_run}); "
                   "it waits for a converge there with no failed host")
    elif newest.since is None:
        waiting = f"{_short(newest.revision)} has not converged cleanly in {upstream}"
    else:
        waiting = (f"{_short(newest.revision)} soaks in {upstream} until "
                   f"{_clock(newest.since + soak)} (soak {soak:g}s)")
    return Target(revision, why, newest.revision, waiting)


def target(state: EnvState, tip: str, store: Store, settings, now: float) -> Target:
    """What a pull cycle converges: the pin, the promoted revision, or Git's ``tip``."""
    if state.pinned_revision:
        pin = state.pinned_revision
        held = None if tip == pin else (f"pinned at {_short(pin)} since "
                                        f"{_clock(state.pinned_at)}: {state.pinned_reason}")
        return Target(pin, f"pinned: {state.pinned_reason}", tip if held else None, held)
    if settings.promote_from:
        return promotion(state, store, settings.promote_from, settings.soak, now)
    return Target(tip)


def allows(state: EnvState, revision: str, store: Store, settings, now: float) -> str | None:
    """Push mode: why ``revision`` may not be converged here (None: it may)."""
    if state.pinned_revision and revision != state.pinned_revision:
        return (f"{state.env} is pinned at {_short(state.pinned_revision)} "
                f"({state.pinned_reason}); `gitops-ansible unpin {state.env}` first")
    if state.pinned_revision or not settings.promote_from:
        return None
    if revision == state.approved_revision:
        return None
    up = next((u for u in upstream_revisions(store, settings.promote_from)
               if u.revision == revision), None)
    if up and up.since and not up.blocked and up.since + settings.soak <= now:
        return None
    why = (up.blocked if up and up.blocked else
           f"soaks until {_clock(up.since + settings.soak)}" if up and up.since else
           f"{settings.promote_from} has not converged it cleanly")
    return (f"{state.env} follows {settings.promote_from}: revision {_short(revision)} is "
            f"not promoted ({why}); `gitops-ansible promote {state.env} --revision "
            f"{_short(revision)} --reason TEXT` approves it by hand")
