"""The gate: which revision a pull cycle may apply (pins, promotion), from the records."""
from __future__ import annotations

from contextlib import closing

import pytest

from gitops_ansible import gate
from gitops_ansible.store import (Action, Mode, RunRecord, RunStatus, Store, Transition,
                                  Verdict)
from tests.conftest import make_settings

A, B, C, TIP = ("a" * 40, "b" * 40, "c" * 40, "f" * 40)


@pytest.fixture
def store(tmp_path):
    with closing(Store(tmp_path / "runs.db")) as opened:
        yield opened


def converge(store, env, revision, at, good=True):
    store.apply(env, Transition.applied(revision, f"run-{revision[0]}-{at}", at, good=good,
                                        fetched=True))


def drift_check(store, env, revision, at, drifted):
    run = RunRecord(env, Mode.DRIFT, "drift", revision=revision, check_mode=True,
                    started_at=at)
    store.start_run(run)
    store.finish_run(run, Verdict(RunStatus.DRIFTED if drifted else RunStatus.UNCHANGED, "-"))


def prod(store, soak=60.0, now=1000.0):
    settings = make_settings(env="prod", promote_from="staging", soak=soak)
    return gate.target(store.env_state("prod"), TIP, store, settings, now)


def test_no_promotion_setting_means_the_tip(store):
    settings = make_settings(env="dev")
    assert gate.target(store.env_state("dev"), TIP, store, settings, 0) == gate.Target(TIP)


def test_nothing_upstream_means_nothing_to_converge(store):
    held = prod(store)
    assert held.revision is None and held.waiting == "staging has converged nothing yet"


def test_a_revision_waits_for_its_soak_then_passes(store):
    converge(store, "staging", A, 950.0)
    waiting = prod(store, soak=60, now=1000.0)
    assert waiting.revision is None and waiting.candidate == A
    assert waiting.waiting.startswith(f"{A[:12]} soaks in staging until")
    assert prod(store, soak=60, now=1011.0).revision == A


def test_the_newest_soaked_revision_wins_and_a_newer_one_is_the_candidate(store):
    converge(store, "staging", A, 100.0)
    converge(store, "staging", B, 200.0)
    converge(store, "staging", C, 990.0)
    held = prod(store, soak=60, now=1000.0)
    assert (held.revision, held.candidate) == (B, C)


def test_a_revision_that_failed_after_its_clean_converge_is_never_promoted(store):
    converge(store, "staging", A, 100.0)
    converge(store, "staging", B, 200.0)
    converge(store, "staging", B, 300.0, good=False)
    held = prod(store, soak=10, now=1000.0)
    assert held.revision == A and held.candidate == B
    assert held.waiting.startswith(f"{B[:12]} failed in staging")


def test_a_failure_before_the_clean_retry_does_not_block(store):
    converge(store, "staging", A, 100.0, good=False)
    converge(store, "staging", A, 200.0)
    held = prod(store, soak=10, now=1000.0)
    assert (held.revision, held.candidate, held.waiting) == (A, None, None)


def test_drift_found_upstream_blocks_the_revision(store):
    converge(store, "staging", A, 100.0)
    converge(store, "staging", B, 200.0)
    drift_check(store, "staging", B, 400.0, drifted=True)
    held = prod(store, soak=10, now=1000.0)
    assert held.revision == A and "found drift" in held.waiting


def test_a_revision_staging_was_rolled_back_from_is_not_promoted(store):
    converge(store, "staging", A, 100.0)
    converge(store, "staging", B, 200.0)
    store.apply("staging", Transition.pinned(A, "bad", 300.0), Action("rollback", A, "bad", B))
    converge(store, "staging", A, 310.0)
    held = prod(store, soak=10, now=1000.0)
    assert held.revision == A and held.candidate is None


def test_an_approval_goes_past_the_soak_until_a_newer_clean_revision(store):
    converge(store, "staging", A, 100.0)
    store.apply("prod", Transition.approved(B, "hotfix", 500.0))
    converge(store, "staging", B, 600.0)
    assert prod(store, soak=3600, now=1000.0).revision == B
    converge(store, "staging", C, 700.0)
    assert prod(store, soak=100, now=1000.0).revision == C


def test_a_pin_wins_over_promotion_and_holds_the_tip(store):
    converge(store, "staging", A, 100.0)
    store.apply("prod", Transition.pinned(B, "rollback", 500.0))
    held = prod(store, soak=0, now=1000.0)
    assert (held.revision, held.candidate) == (B, TIP)
    assert held.waiting.startswith(f"pinned at {B[:12]}") and held.waiting.endswith("rollback")


def test_push_is_allowed_only_what_a_pull_cycle_would_be(store):
    settings = make_settings(env="prod", promote_from="staging", soak=60)
    converge(store, "staging", A, 100.0)
    converge(store, "staging", B, 990.0)
    state = store.env_state("prod")
    assert gate.allows(state, A, store, settings, 1000.0) is None
    assert "soaks until" in gate.allows(state, B, store, settings, 1000.0)
    assert "has not converged it cleanly" in gate.allows(state, C, store, settings, 1000.0)
    store.apply("prod", Transition.pinned(A, "hold", 1000.0))
    pinned = store.env_state("prod")
    assert gate.allows(pinned, A, store, settings, 1000.0) is None
    assert "unpin prod" in gate.allows(pinned, B, store, settings, 1000.0)


def test_the_revision_staging_converged_last_wins(store):
    converge(store, "staging", A, 100.0)
    converge(store, "staging", B, 200.0)
    converge(store, "staging", A, 300.0)  # staging went back to A
    held = prod(store, soak=10, now=1000.0)
    assert (held.revision, held.candidate) == (A, None)


def test_a_failed_then_clean_revision_is_shown_soaking(store):
    converge(store, "staging", A, 900.0, good=False)
    converge(store, "staging", A, 950.0)
    held = prod(store, soak=100, now=1000.0)
    assert held.revision is None and held.waiting.startswith(f"{A[:12]} soaks in staging")


def test_an_approval_lets_push_through_only_while_a_pull_cycle_would_converge_it(store):
    settings = make_settings(env="prod", promote_from="staging", soak=10)
    store.apply("prod", Transition.approved(B, "hotfix", 500.0))
    assert gate.allows(store.env_state("prod"), B, store, settings, 1000.0) is None
    converge(store, "staging", C, 600.0)  # newer than the approval, and soaked
    assert "is not promoted" in gate.allows(store.env_state("prod"), B, store, settings,
                                            1000.0)


def test_an_environment_cannot_follow_itself():
    from gitops_ansible.config import ConfigError
    with pytest.raises(ConfigError, match="promote_from.*another environment than env"):
        gate.check(make_settings(env="prod", promote_from="prod"))
