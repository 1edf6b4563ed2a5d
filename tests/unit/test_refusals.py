"""A target that refuses the revision (a failed task whose result says ``gitops_refused``):
the run is refused (exit 5), remembered for the revision in pull mode, not a host failure.

The execution's folding is fed Ansible's events as ansible-runner hands them over; the
verdict is the cycle's own (``Cycle._verdict``), recorded in a real store."""
from __future__ import annotations

import threading
from contextlib import closing
from pathlib import Path

import pytest

from gitops_ansible import plan, records
from gitops_ansible.alerts import AlertState
from gitops_ansible.execute import Execution, Outcome
from gitops_ansible.reconcile import Cycle, Result, Start, judge
from gitops_ansible.report import ExitCode, Redactor, Reporter
from gitops_ansible.scope import Scope
from gitops_ansible.store import (HostResult, HostRevision, Mode, RunRecord, RunStatus, Store,
                                  Transition, Verdict)
from tests.conftest import make_settings

OLD, NEW = "a" * 40, "b" * 40
WHY = "clusters/east/widget.yaml: no kind Widget on the server"


def the_plan(*hosts: str, **fields) -> plan.Plan:
    return plan.Plan(env="dev", revision=NEW, checkout=Path("."), playbook="site.yml",
                     inventory=Path("inventories/dev"), platforms={"kubernetes": list(hosts)},
                     **fields)


def result(name: str, host: str, **res) -> dict:
    return {"event": name, "event_data": {"host": host, "task": "Check the objects",
                                          "role": "k8s_manifests", "res": res}}


def stats(hosts=("east", "west"), **failures: int) -> dict:
    """Ansible's totals: west changed one thing, when it ran."""
    return {"event": "playbook_on_stats", "event_data": {
        "ok": {h: 2 for h in hosts}, "failures": failures, "dark": {}, "skipped": {},
        "changed": {h: 1 for h in hosts if h == "west"}, "processed": {h: 1 for h in hosts}}}


def folded(*events: dict) -> Outcome:
    execution = Execution(the_plan("east", "west"), Redactor())
    for event in events:
        execution.handle(event)
    return execution.outcome("failed", 2)


REFUSAL = result("runner_on_failed", "east", failed=True, msg=WHY, gitops_refused=True)
CONVERGED = result("runner_on_ok", "west", changed=True)


def test_a_refusal_is_folded_per_host_into_the_outcome():
    outcome = folded(REFUSAL, CONVERGED, stats(east=1))
    assert outcome.refused == {"east": WHY}
    assert outcome.hosts["east"].outcome == "refused"
    assert outcome.hosts["east"].message == f"Check the objects: {WHY}"
    assert outcome.hosts["west"].outcome == "changed" and not outcome.hosts["west"].refused


@pytest.mark.parametrize("events, outcome", [
    # a failure without the key is a failure
    ([result("runner_on_failed", "east", failed=True, msg=WHY), stats(east=1)], "failed"),
    # a refusal that the play rescued is not the host's end
    ([REFUSAL, stats()], "ok"),
    # a failure after a rescued refusal is the host's own
    ([REFUSAL, result("runner_on_failed", "east", failed=True, msg="boom"), stats(east=1)],
     "failed"),
    # ignore_errors: the task counts as ok
    ([{**REFUSAL, "event_data": {**REFUSAL["event_data"], "ignore_errors": True}}, stats()],
     "ok"),
])
def test_only_a_hosts_last_unrescued_failure_refuses(events, outcome):
    found = folded(*events)
    assert found.hosts["east"].outcome == outcome and found.refused == {}


def hosts_of(outcome: Outcome) -> list[HostResult]:
    return [outcome.hosts[h] for h in sorted(outcome.hosts)]


def test_judge_a_refusal_alone_and_beside_converged_targets():
    alone = folded(REFUSAL, stats(["east"], east=1))
    assert judge(alone, hosts_of(alone), Mode.PULL, False) == (
        RunStatus.REFUSED, f"refused by 1 target: east: {WHY}")
    beside = folded(REFUSAL, CONVERGED, stats(east=1))
    assert judge(beside, hosts_of(beside), Mode.PULL, False) == (
        RunStatus.REFUSED, f"refused by 1 target: east: {WHY}; 1 other host converged "
                           "(1 changed)")
    assert judge(beside, hosts_of(beside), Mode.PLAN, True)[1].endswith(
        "; 1 other host checked (1 would change)")


def test_judge_a_refusal_beside_a_failure_is_a_failure_naming_both():
    outcome = folded(REFUSAL, result("runner_on_failed", "west", failed=True, msg="boom"),
                     stats(east=1, west=1))
    assert judge(outcome, hosts_of(outcome), Mode.PULL, False) == (
        RunStatus.FAILED, "1 of 2 hosts failed or unreachable: west; west: Check the "
                          f"objects: boom; refused by 1 target: east: {WHY}")


def test_many_refusals_name_every_target_and_explain_the_first():
    refused = {h: f"no kind on {h}" for h in ("a", "b", "c", "d", "e")}
    outcome = Outcome("failed", 2, {h: HostResult(h, failed=1, refused=True) for h in refused},
                      refused=refused)
    status, message = judge(outcome, hosts_of(outcome), Mode.PUSH, False)
    assert status is RunStatus.REFUSED
    assert message == ("refused by 5 targets: a: no kind on a; b: no kind on b; "
                       "c: no kind on c; and d, e")


def verdict_of(mode: Mode, outcome: Outcome, hosts: tuple[str, ...], tmp_path,
               **settings) -> Verdict:
    """The cycle's verdict of ``outcome``, as its converge step makes it."""
    config = make_settings(env="dev", state_dir=str(tmp_path / "state"), **settings)
    with closing(Store(tmp_path / "runs.db")) as store:
        cycle = Cycle(config, mode, store, Reporter(), Start("manual"), threading.Event())
        cycle.run_record = RunRecord("dev", mode, "manual", revision=NEW,
                                     check_mode=mode.check)
        cycle.scope = Scope("every target is affected")
        return cycle._verdict(the_plan(*hosts), outcome)


PULL = {"repo": "file:///srv/estate.git"}


def test_a_pull_refusal_is_remembered_and_keeps_the_converged_targets_records(tmp_path):
    verdict = verdict_of(Mode.PULL, folded(REFUSAL, CONVERGED, stats(east=1)),
                         ("east", "west"), tmp_path, **PULL)
    assert verdict.status is RunStatus.REFUSED and verdict.exit_code is ExitCode.REFUSED
    assert verdict.message == (f"revision {NEW[:12]} refused by 1 target: east: {WHY}; "
                               "1 other host converged (1 changed)")
    # the revision is refused, not applied: the refused target is left where it was
    assert verdict.transition.name == "refused"
    assert verdict.transition.changes["refused_message"] == f"refused by 1 target: east: {WHY}"
    assert verdict.clean == {"west": True}


@pytest.mark.parametrize("mode, settings", [(Mode.PUSH, {}), (Mode.PLAN, PULL),
                                            (Mode.PLAN, {})])
def test_a_push_or_plan_refusal_is_not_remembered(mode, settings, tmp_path):
    verdict = verdict_of(mode, folded(REFUSAL, CONVERGED, stats(east=1)), ("east", "west"),
                         tmp_path, **settings)
    assert verdict.status is RunStatus.REFUSED and verdict.transition is None
    assert verdict.message.startswith(f"revision {NEW[:12]} refused by 1 target: east: ")
    assert verdict.clean == ({} if mode.check else {"west": True})


def test_a_refusal_beside_a_failure_applies_with_failures_and_is_retried(tmp_path):
    outcome = folded(REFUSAL, result("runner_on_failed", "west", failed=True, msg="boom"),
                     stats(east=1, west=1))
    verdict = verdict_of(Mode.PULL, outcome, ("east", "west"), tmp_path, **PULL)
    assert verdict.status is RunStatus.FAILED and "refused by 1 target: east" in verdict.message
    assert verdict.transition.name == "applied"
    assert "good_revision" not in verdict.transition.changes  # failing: the next cycle retries
    assert verdict.clean == {"west": False}


def test_the_records_of_a_refusal(tmp_path):
    """Recorded: the run refused with the per-host message, the revision refused and not
    applied (the environment is not failing), the converged target at the new revision
    and the refused one where it was; the next cycle does not retry."""
    state_dir = tmp_path / "state"
    verdict = verdict_of(Mode.PULL, folded(REFUSAL, CONVERGED, stats(east=1)),
                         ("east", "west"), tmp_path / "cycle", **PULL)
    with closing(Store(state_dir / "runs.db")) as store:
        for host in ("east", "west"):
            store.db.execute("INSERT INTO host_revisions VALUES ('dev', ?, ?, 'r0', 1, NULL)",
                             (host, OLD))
        store.apply("dev", Transition.applied(OLD, "r0", 1.0, good=True, fetched=True))
        run = RunRecord("dev", Mode.PULL, "schedule", revision=NEW)
        store.start_run(run)
        verdict.transition = Transition.refused(NEW, run.id, "refused by 1 target: east: why")
        store.finish_run(run, verdict)
        assert store.host_revisions("dev") == {
            "east": HostRevision("east", OLD, "r0", 1.0),
            "west": HostRevision("west", NEW, run.id, store.host_revisions("dev")["west"].at)}
        state = store.env_state("dev")
    assert (state.applied_revision, state.refused_revision) == (OLD, NEW)
    [status] = records.status(state_dir, "dev")
    assert status.attention() == [f"revision {NEW[:12]} refused"]
    [row] = records.history(state_dir, "dev")
    assert (row["status"], row["exit_code"], row["hosts"]) == (
        "refused", 5, {"east": "refused", "west": "changed"})
    detail = records.run_detail(state_dir, row["id"])
    assert [h["message"] for h in detail["hosts"]] == [f"Check the objects: {WHY}", None]
    assert plan.decide(state, NEW).reason == "refused"
    assert plan.decide(state, NEW, force=True).converge


def test_a_refused_revision_is_alerted_once():
    refused = Result(ExitCode.REFUSED, RunStatus.REFUSED, f"revision {NEW[:12]} refused by "
                     f"1 target: east: {WHY}", revision=NEW)
    told, alerts = AlertState().after_cycle("dev", refused, stopping=False)
    assert [a.event for a in alerts] == ["refused"] and not told.failing
    again = Result(ExitCode.REFUSED, RunStatus.REFUSED, f"dev: revision {NEW[:12]} was "
                   "refused (run r1): ...", revision=NEW)
    assert told.after_cycle("dev", again, stopping=False)[1] == []
