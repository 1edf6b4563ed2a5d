"""The library without the CLI: a real pull cycle from a Git server, its events through a
callback, then status, history, one run's detail, suspend and resume; nothing printed."""
from __future__ import annotations

import pytest

import gitops_ansible as ga
from tests.conftest import local_estate

pytestmark = pytest.mark.git


def test_a_pull_cycle_through_the_library(git_servers, tmp_path, capfd):
    estate = local_estate(git_servers, tmp_path, "library")
    settings = ga.load_settings({"repo": git_servers.url(estate.name, "file"), "env": "dev",
                                 "state_dir": str(tmp_path / "state")})
    events: list[dict] = []
    result = ga.cycle(settings, ga.Mode.PULL, ga.Reporter(on_event=events.append))

    assert result.exit_code is ga.ExitCode.CHANGED and result.status is ga.RunStatus.CHANGED
    assert result.revision == estate.revision and result.status.success
    assert {h.host: h.outcome for h in result.hosts} == {"alpha": "changed", "beta": "changed"}
    assert (estate.out / "alpha.txt").read_text() == "hello world\n"
    results = [e for e in events if e["event"] == "task_result" and e["status"] == "changed"]
    assert {e["host"] for e in results} == {"alpha", "beta"}
    assert all(e["run_id"] == result.run_id and e["revision"] == estate.revision
               for e in results)
    out, err = capfd.readouterr()
    assert out == "" and err == "", "the library printed"

    [env] = ga.status(settings.state_path)
    assert env.state.applied_revision == estate.revision == env.state.good_revision
    assert not env.state.failing and env.attention() == []
    [run] = ga.history(settings.state_path, "dev")
    assert run["id"] == result.run_id and run["hosts"] == {"alpha": "changed", "beta": "changed"}
    detail = ga.run_detail(settings.state_path, result.run_id)
    assert {t["host"] for t in detail["tasks"] if t["status"] == "changed"} == {"alpha", "beta"}

    again = ga.cycle(settings, "pull")
    assert again.exit_code is ga.ExitCode.NOTHING and again.status is ga.RunStatus.NOTHING

    ga.suspend(settings.state_path, "dev", "maintenance")
    assert ga.status(settings.state_path, "dev")[0].state.suspended_reason == "maintenance"
    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: beta\n")
    estate.commit("beta gets its own greeting")
    held = ga.cycle(settings, ga.Mode.PULL)
    assert held.status is ga.RunStatus.SUSPENDED and not (estate.out / "beta.txt").read_text() \
        .startswith("hello beta")
    assert ga.resume(settings.state_path, "dev") == "maintenance"
    moved = ga.cycle(settings, ga.Mode.PULL)
    assert moved.status is ga.RunStatus.CHANGED
    assert (estate.out / "beta.txt").read_text() == "hello beta\n"
    assert capfd.readouterr() == ("", "")


def test_a_plan_or_check_says_what_it_does_and_is_not_the_environment_s_last_run(
        git_servers, tmp_path):
    estate = local_estate(git_servers, tmp_path, "library-plan")
    settings_values = {"repo": git_servers.url(estate.name, "file"), "env": "dev",
                       "state_dir": str(tmp_path / "state")}
    settings = ga.load_settings(settings_values)
    applied = ga.cycle(settings, ga.Mode.PULL)
    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: beta\n")
    estate.commit("beta gets its own greeting")

    events: list[dict] = []
    planned = ga.cycle(settings, ga.Mode.PLAN, ga.Reporter(on_event=events.append))
    assert planned.exit_code is ga.ExitCode.CHANGED
    # the commit touches beta's variables only: the plan checks beta
    assert planned.message == "1 of 1 hosts would change; 1 other target unaffected by the revision"
    said = [e["message"] for e in events if e["event"] == "log"]
    assert any(m.startswith("dev: planning (check mode with diff, nothing is changed): ")
               for m in said), said
    assert not any("converging" in m for m in said), said
    assert (estate.out / "beta.txt").read_text() == "hello world\n"

    [env] = ga.status(settings.state_path, "dev")
    assert env.last_run["id"] == applied.run_id and env.last_run["status"] == "changed"
    assert env.state.applied_revision == applied.revision
    assert [r["mode"] for r in ga.history(settings.state_path, "dev")] == ["plan", "pull"]

    checked = ga.cycle(ga.load_settings({**settings_values, "check": True}), ga.Mode.PULL)
    assert checked.status is ga.RunStatus.CHANGED  # would change: a --check run
    assert ga.status(settings.state_path, "dev")[0].last_run["id"] == applied.run_id
    ga.cycle(settings, ga.Mode.PULL)
    unchanged = ga.cycle(settings, ga.Mode.PLAN)
    assert unchanged.exit_code is ga.ExitCode.OK
    assert unchanged.message == "2 hosts checked, nothing would change"
