"""Which revision a pull cycle may apply: the tip of Git's ref, unless the environment is
pinned (a rollback) or follows another environment (gated promotion).

- **Pinned**: cycles keep the environment at the pin; Git's tip is the candidate, held.
- **promote_from = UP, soak = S**: the environment converges only a revision that UP
  converged with no failed or unreachable host at least S ago, that no later converge of
  UP left failed hosts on and no drift check of UP found drifted, and that UP was not
  rolled back from; of those, the one UP converged last. A revision approved by hand (``promote``) goes past
  the soak, until UP converges a newer one cleanly. UP's records are read from the same
  store: both environments are converged from one state directory.

These are decisions on the store's records only: no Git, no Ansible.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .config import ConfigError
from .records import short, when
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
    since: float | None = None     # its first clean converge upstream (None: never clean)
    last: float | None = None      # its last clean converge upstream
    blocked: str | None = None     # why it can never be promoted (failed, drifted, rolled back)
    failed_run: str | None = None  # its last converge upstream that left failed hosts

    def ready(self, soak: float, now: float) -> bool:
        return bool(self.since) and not self.blocked and self.since + soak <= now


def upstream_revisions(store: Store, env: str) -> list[Upstream]:
    """The revisions ``env`` applied, the one it applied last first, each with its first
    and last clean converge and what rules it out."""
    rolled_back = {a["from_revision"] for a in store.actions(env, limit=1000)
                   if a["kind"] == "rollback"}
    seen: dict[str, Upstream] = {}  # in the order of their last converge, oldest first
    for row in reversed(store.applied_history(env)):
        revision = row["revision"]
        known = seen.pop(revision, None) or Upstream(revision)
        if row["good"]:
            known = replace(known, since=known.since or row["at"], last=row["at"])
        else:
            known = replace(known, failed_run=row["run_id"])
            if known.since is not None and not known.blocked:
                known = replace(known, blocked=f"failed in {env} (run {row['run_id']})")
        seen[revision] = known
    out = []
    for item in reversed(seen.values()):
        if not item.blocked and item.revision in rolled_back:
            item = replace(item, blocked=f"{env} was rolled back from it")
        if not item.blocked and item.since and store.drifted_since(env, item.revision,
                                                                   item.since):
            item = replace(item, blocked=f"a drift check in {env} found drift on it")
        out.append(item)
    return out


def promotion(state: EnvState, revisions: list[Upstream], upstream: str, soak: float,
              now: float) -> Target:
    """The revision an environment that follows ``upstream`` (whose ``revisions`` these
    are) may converge now: of those that soaked, the one ``upstream`` converged last; or
    the approved one, when it was approved after that."""
    pick = next((u for u in revisions if u.ready(soak, now)), None)
    revision, why = None, None
    if pick:
        revision = pick.revision
        why = f"promoted from {upstream}: converged cleanly there at {when(pick.last)}"
    if state.approved_revision and (pick is None or state.approved_at > pick.last):
        revision = state.approved_revision
        why = f"approved by hand ({state.approved_reason})"
    newest = revisions[0] if revisions else None
    if newest is None:
        return Target(revision, why, None, f"{upstream} has converged nothing yet")
    if newest.revision == revision:
        return Target(revision, why)
    if newest.blocked:
        waiting = f"{short(newest.revision)} {newest.blocked}"
    elif newest.since is not None:
        waiting = (f"{short(newest.revision)} soaks in {upstream} until "
                   f"{when(newest.since + soak)} (soak {soak:g}s)")
    elif newest.failed_run:
        waiting = (f"{short(newest.revision)} failed in {upstream} (run {newest.failed_run}); "
                   "it waits for a converge there with no failed host")
    else:
        waiting = f"{short(newest.revision)} has not converged cleanly in {upstream}"
    return Target(revision, why, newest.revision, waiting)


def target(state: EnvState, tip: str, store: Store, settings, now: float) -> Target:
    """What a pull cycle converges: the pin, the promoted revision, or Git's ``tip``."""
    if state.pinned_revision:
        pin = state.pinned_revision
        held = None if tip == pin else (f"pinned at {short(pin)} since "
                                        f"{when(state.pinned_at)}: {state.pinned_reason}")
        return Target(pin, f"pinned: {state.pinned_reason}", tip if held else None, held)
    if settings.promote_from:
        upstream = settings.promote_from
        return promotion(state, upstream_revisions(store, upstream), upstream, settings.soak,
                         now)
    return Target(tip)


def check(settings) -> None:
    """``promote_from`` names another environment than the one converged."""
    if settings.promote_from and settings.promote_from == settings.env:
        raise ConfigError(settings.sources.get("promote_from", "settings"), "promote_from",
                          f"another environment than env ({settings.env})",
                          settings.promote_from)


def allows(state: EnvState, revision: str, store: Store, settings, now: float) -> str | None:
    """Push mode: why ``revision`` may not be converged here (None: it may): a pin holds
    every other revision back; behind a promotion gate, only a revision that soaked
    upstream, or the approval a pull cycle would converge, passes."""
    if state.pinned_revision and revision != state.pinned_revision:
        return (f"{state.env} is pinned at {short(state.pinned_revision)} "
                f"({state.pinned_reason}); `gitops-ansible unpin {state.env}` first")
    if state.pinned_revision or not settings.promote_from:
        return None
    upstream, soak = settings.promote_from, settings.soak
    revisions = upstream_revisions(store, upstream)
    up = next((u for u in revisions if u.revision == revision), None)
    if up and up.ready(soak, now):
        return None
    if revision == promotion(state, revisions, upstream, soak, now).revision:
        return None  # the approved revision, still current
    why = (up.blocked if up and up.blocked else
           f"soaks until {when(up.since + soak)}" if up and up.since else
           f"{upstream} has not converged it cleanly")
    return (f"{state.env} follows {upstream}: revision {short(revision)} is "
            f"not promoted ({why}); `gitops-ansible promote {state.env} --revision "
            f"{short(revision)} --reason TEXT` approves it by hand")
