"""When the agent tells someone: alerts on a change of state, and the commit status of a run.

An environment gets one ``failure`` alert when its cycles start failing and one
``recovery`` when a cycle succeeds again, not one per cycle; a ``drift`` alert when the
set of drifted hosts changes; a ``refused`` alert once per refused revision. A cycle
cancelled because the agent is stopping is the operator's doing, not a failure of the
estate. A converging run posts ``pending`` on its commit when it starts and ``success``
or ``failure`` when it ends; a revision held back (a pin, the promotion gate) gets one
``pending`` status saying why, once per revision.

These are decisions only, so that they can be tested without a process: ``notify``
sends what they decide, rate-limited per environment and kind.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .store import EnvState, RunStatus


@dataclass(frozen=True)
class Alert:
    event: str    # failure | recovery | drift | refused: what a notify target subscribes to
    message: str


@dataclass(frozen=True)
class AlertState:
    """What has been told of one environment, so that each change is told once."""
    failing: bool = False                  # a failure alert went out, no recovery since
    drifted: frozenset[str] = frozenset()  # the hosts the last drift alert named
    refused: str | None = None             # the revision the last refused alert named
    held: str | None = None                # the held revision whose status says so

    @classmethod
    def of(cls, env: EnvState) -> "AlertState":
        """At start: an environment that the store shows failing is not alerted again."""
        return cls(failing=bool(env.fetch_error) or env.failing)

    def after_cycle(self, env: str, result, stopping: bool) -> tuple["AlertState", list[Alert]]:
        """The state after a pull cycle's ``result`` and the alerts it calls for."""
        status = result.status
        if stopping and status is RunStatus.CANCELLED:
            return self, []
        state, alerts = self, []
        if status.failure and not self.failing:
            state, alerts = replace(state, failing=True), [Alert("failure", result.message)]
        elif status.success and status is not RunStatus.SUSPENDED and self.failing:
            state = replace(state, failing=False)
            alerts = [Alert("recovery", f"{env} is converging again: {result.message}")]
        if status is RunStatus.REFUSED and result.revision != self.refused:
            state = replace(state, refused=result.revision)
            alerts.append(Alert("refused", result.message))
        return state, alerts

    def after_drift(self, result) -> tuple["AlertState", list[Alert]]:
        """The state after a drift check's ``result`` and the alerts it calls for; a check
        that could not tell (failed, busy) keeps what was told."""
        drifted = frozenset(h.host for h in result.hosts if h.outcome == "changed")
        if result.status is RunStatus.DRIFTED:
            alerts = [Alert("drift", f"drift on {', '.join(sorted(drifted))}")] \
                if drifted != self.drifted else []
            return replace(self, drifted=drifted), alerts
        if result.status is RunStatus.UNCHANGED:
            return replace(self, drifted=drifted), []
        return self, []


def held_status(env: str, told: AlertState, result,
                promote_from: str | None) -> tuple[AlertState, tuple[str, str] | None]:
    """The commit status of a revision a cycle held back (pending, and why), once per
    revision; None when there is nothing new to post."""
    if not result.candidate or result.candidate == told.held:
        return told, None
    what = result.waiting if result.waiting.startswith("pinned") or not promote_from \
        else f"waiting for promotion from {promote_from}: {result.waiting}"
    return replace(told, held=result.candidate), ("pending", f"{env}: {what}")


def started_status(env: str) -> tuple[str, str]:
    """The commit status (state, description) of a converging run that starts."""
    return "pending", f"gitops-ansible: converging {env}"


def ended_status(env: str, result) -> tuple[str, str]:
    """The commit status of a run that ended with ``result``."""
    return ("success" if result.status.success else "failure",
            f"{env}: {result.status}: {result.message}")
