"""What gets applied, past Git's tip: rollback with a pin, and gated promotion.

Pull cycles from a real Git server (file://) converge `local` targets that write their
greeting into a directory per environment: the files are what a user would look at.
"""
from __future__ import annotations

import json
import time

import pytest

from lab.recorder import Recorder
from tests.conftest import local_estate
from tests.integration.test_agent import agents  # noqa: F401  (the fixture)
from tests.integration.test_agent import source as agent_source

pytestmark = pytest.mark.git


def status(cli, env: str) -> dict:
    [state] = json.loads(cli("status", "--env", env, "--json", check_code=0).stdout)
    return state


def greeting(estate, host: str = "alpha", env: str | None = None) -> str | None:
    path = (estate.out / env if env else estate.out) / f"{host}.txt"
    return path.read_text() if path.exists() else None


def set_greeting(estate, name: str, message: str) -> str:
    estate.write("inventories/dev/group_vars/controllers.yml",
                 f"---\nplatform: local\nansible_connection: local\ngreet_dir: {estate.out}\n"
                 f"greet_name: {name}\n")
    return estate.commit(message)


def test_rollback_pins_across_new_commits_until_unpin(cli, git_servers, tmp_path):
    estate = local_estate(git_servers, tmp_path, "rollback")
    url = git_servers.url(estate.name, "file")
    run = ("run", "--repo", url, "--env", "dev")
    cli(*run, check_code=2)
    good = estate.revision
    bad = set_greeting(estate, "bad", "a greeting nobody wants")
    cli(*run, check_code=2)
    assert greeting(estate) == "hello bad\n"

    refused = cli("rollback", "dev", "--to", "0123abcd", "--reason", "typo", "--repo", url)
    assert refused.returncode == 5
    assert "not a revision this environment applied" in refused.stderr
    assert good[:12] in refused.stderr and bad[:12] in refused.stderr

    back = cli("rollback", "dev", "--reason", "bad greeting", "--repo", url, check_code=2)
    assert f"pinned at {good[:12]}" in back.stdout
    assert greeting(estate) == "hello world\n"
    state = status(cli, "dev")
    assert state["applied_revision"] == good == state["pinned_revision"]
    assert state["pinned_reason"] == "bad greeting"

    newer = set_greeting(estate, "newer", "a newer greeting")
    held = cli(*run, check_code=3)
    assert f"pinned at {good[:12]}" in held.stderr + held.stdout
    assert "Git is 2 commits ahead" in held.stderr + held.stdout
    assert greeting(estate) == "hello world\n"
    state = status(cli, "dev")
    assert state["candidate_revision"] == newer and state["ahead"] == 2
    assert any("pinned at" in note for note in state["attention"])
    table = cli("status", "--env", "dev", check_code=0).stdout
    assert newer[:12] in table and "bad greeting" in table

    history = json.loads(cli("history", "--env", "dev", "--json", check_code=0).stdout)
    [pin] = [item for item in history if item.get("action") == "rollback"]
    assert (pin["revision"], pin["from_revision"], pin["reason"]) == (good, bad, "bad greeting")
    [rollback_run] = [item for item in history if item.get("trigger") == "rollback"]
    assert rollback_run["revision"] == good and rollback_run["status"] == "changed"
    assert "bad greeting" in cli("history", "--env", "dev", check_code=0).stdout

    unpinned = cli("unpin", "dev", "--reason", "fixed", check_code=0)
    assert good[:12] in unpinned.stdout
    cli(*run, check_code=2)
    assert greeting(estate) == "hello newer\n"
    state = status(cli, "dev")
    assert state["applied_revision"] == newer and state["pinned_revision"] is None
    assert state["candidate_revision"] is None
    actions = [item["action"] for item in json.loads(
        cli("history", "--env", "dev", "--json", check_code=0).stdout) if "action" in item]
    assert actions == ["unpin", "rollback"]


def two_environments(git_servers, tmp_path):
    """An estate with staging and prod, each writing into out/ENV."""
    estate = local_estate(git_servers, tmp_path, "promotion")
    for env in ("staging", "prod"):
        (estate.out / env).mkdir()
        estate.write(f"inventories/{env}/hosts.yml", "---\nall:\n  children:\n    controllers:\n"
                     "      hosts:\n        alpha:\n")
        estate.write(f"inventories/{env}/group_vars/controllers.yml",
                     f"---\nplatform: local\nansible_connection: local\n"
                     f"greet_dir: {estate.out / env}\ngreet_name: first\n")
    estate.revision = estate.commit("staging and prod")
    return estate


def change(estate, env_dirs: dict[str, str], message: str) -> str:
    for env, greet_dir in env_dirs.items():
        estate.write(f"inventories/{env}/group_vars/controllers.yml",
                     f"---\nplatform: local\nansible_connection: local\n"
                     f"greet_dir: {greet_dir}\ngreet_name: {message.split()[0]}\n")
    return estate.commit(message)


def test_promotion_waits_for_a_clean_soak_and_promote_skips_it(cli, git_servers, tmp_path):
    estate = two_environments(git_servers, tmp_path)
    url = git_servers.url(estate.name, "file")
    soak = 4
    staging = ("run", "--repo", url, "--env", "staging")
    prod = ("run", "--repo", url, "--env", "prod", "--promote-from", "staging",
            "--soak", f"{soak}s")
    first = estate.revision

    waiting = cli(*prod, check_code=3)
    assert "waiting for promotion from staging" in waiting.stderr + waiting.stdout
    assert "staging has converged nothing yet" in waiting.stderr + waiting.stdout
    cli(*staging, check_code=2)
    converged_at = time.time()
    soaking = cli(*prod, check_code=3)
    assert f"{first[:12]} soaks in staging until" in soaking.stderr + soaking.stdout
    assert greeting(estate, env="prod") is None
    assert status(cli, "prod")["candidate_revision"] == first

    time.sleep(max(0.0, converged_at + soak + 0.5 - time.time()))
    cli(*prod, check_code=2)
    assert greeting(estate, env="prod") == "hello first\n"
    assert status(cli, "prod")["applied_revision"] == first

    # A revision that fails in staging never reaches prod, however long it soaks.
    blocker = estate.out / "not-a-directory"
    blocker.write_text("a file where staging wants a directory\n")
    broken = change(estate, {"staging": blocker, "prod": estate.out / "prod"}, "broken greeting")
    cli(*staging, check_code=4)
    time.sleep(soak + 0.5)
    held = cli(*prod, check_code=3)
    assert f"{broken[:12]} failed in staging (run " in held.stderr + held.stdout
    assert greeting(estate, env="prod") == "hello first\n"
    state = status(cli, "prod")
    assert state["applied_revision"] == first and state["candidate_revision"] == broken
    assert any("failed in staging" in note for note in state["attention"])

    # A clean fix soaks; `promote` lets it through at once.
    fixed = change(estate, {"staging": estate.out / "staging", "prod": estate.out / "prod"},
                   "fixed greeting")
    cli(*staging, check_code=2)
    cli(*prod, check_code=3)
    assert greeting(estate, env="prod") == "hello first\n"
    promoted = cli("promote", "prod", "--revision", fixed[:10], "--reason", "hotfix",
                   "--repo", url, "--promote-from", "staging", "--soak", "1h", check_code=2)
    assert "approved" in promoted.stdout
    assert greeting(estate, env="prod") == "hello fixed\n"
    history = json.loads(cli("history", "--env", "prod", "--json", check_code=0).stdout)
    assert broken not in {item.get("revision") for item in history if "action" not in item}
    [approval] = [item for item in history if item.get("action") == "approve"]
    assert (approval["revision"], approval["reason"]) == (fixed, "hotfix")

    # prod follows staging: push of a revision staging has not soaked is refused.
    unpromoted = change(estate, {"staging": estate.out / "staging",
                                 "prod": estate.out / "prod"}, "unsoaked greeting")
    pushed = cli("push", "--path", estate.path, "--env", "prod", "--promote-from", "staging",
                 "--soak", "1h")
    assert pushed.returncode == 5, pushed.stderr
    assert f"revision {unpromoted[:12]} is not promoted" in pushed.stderr + pushed.stdout
    assert greeting(estate, env="prod") == "hello fixed\n"


def lab_environments(git_servers, host_lab, tmp_path):
    """The project's estate on lab hosts: staging is web-1, prod is db-1."""
    import shutil

    import yaml

    from tests.integration.test_baremetal import lab_estate

    estate = lab_estate(git_servers, host_lab, tmp_path, "promotion-hosts")
    lab = estate.path / "inventories/lab"
    for env, group, host in (("staging", "web", "web-1"), ("prod", "db", "db-1")):
        shutil.copytree(lab / "group_vars", estate.path / f"inventories/{env}/group_vars")
        address = host_lab.hosts[host].address
        hosts = {"all": {"children": {"baremetal": {"children": {
            group: {"hosts": {host: {"ansible_host": address}}}}}}}}
        estate.write(f"inventories/{env}/hosts.yml", "---\n" + yaml.safe_dump(hosts))
    return estate


def release(estate, message: str, staging_packages: str = "[cron, tree]") -> str:
    for env, host in (("staging", "web-1"), ("prod", "db-1")):
        packages = staging_packages if env == "staging" else "[cron, tree]"
        estate.write(f"inventories/{env}/group_vars/all.yml", f"---\ngitops_environment: {env}\n")
        estate.write(f"inventories/{env}/host_vars/{host}.yml",
                     f"---\nmotd_message: {message}\nhost_packages_present: {packages}\n")
    return estate.commit(message)


@pytest.mark.baremetal
def test_promotion_across_lab_hosts_never_carries_a_failed_revision(cli, git_servers, host_lab,
                                                                    tmp_path):
    from tests.integration.test_baremetal import VAULT, host_file

    estate = lab_environments(git_servers, host_lab, tmp_path)
    soak = 5
    staging = ("run", "--repo", estate.url, "--env", "staging", *VAULT)
    prod = ("run", "--repo", estate.url, "--env", "prod", *VAULT, "--promote-from", "staging",
            "--soak", f"{soak}s")
    motd = {host: host_file(host_lab, host, "/etc/motd") for host in ("web-1", "db-1")}

    first = release(estate, "release one")
    cli(*staging, check_code=2)
    converged_at = time.time()
    assert "release one" in motd["web-1"].read_text()
    waiting = cli(*prod, check_code=3)
    assert f"{first[:12]} soaks in staging" in waiting.stdout + waiting.stderr
    assert not motd["db-1"].exists() or "release one" not in motd["db-1"].read_text()

    time.sleep(max(0.0, converged_at + soak + 0.5 - time.time()))
    cli(*prod, check_code=2)
    assert "release one" in motd["db-1"].read_text()

    broken = release(estate, "release two", staging_packages="[cron, gitops-no-such-package]")
    cli(*staging, check_code=4)
    time.sleep(soak + 0.5)
    held = cli(*prod, check_code=3)
    assert f"{broken[:12]} failed in staging" in held.stdout + held.stderr
    assert "release one" in motd["db-1"].read_text()
    assert status(cli, "prod")["applied_revision"] == first


@pytest.mark.agent
def test_the_agent_keeps_a_rollback_pinned_until_unpin(agents, cli, git_servers,  # noqa: F811
                                                       tmp_path):
    estate = local_estate(git_servers, tmp_path, "agent-pin")
    token = tmp_path / "github-token"
    token.write_text("ghp-test\n")
    with Recorder() as api:
        status_api = {"kind": "github", "repository": "org/estate", "token_file": str(token),
                      "api_url": api.url("/api")}
        agent = agents(tmp_path, cli.state_dir,
                       [agent_source(estate, git_servers, commit_status=status_api)])
        url, address = git_servers.url(estate.name, "git"), f"http://127.0.0.1:{agent.port}"
        agent.wait_for(lambda: greeting(estate) == "hello world\n", 120, "the first converge")
        good = estate.revision
        set_greeting(estate, "bad", "a greeting nobody wants")
        cli("sync", "dev", "--agent", address, check_code=0)
        agent.wait_for(lambda: greeting(estate) == "hello bad\n", 120, "the bad converge")
        agent.wait_for(lambda: agent.status()["last"].get("trigger") == "sync", 30, "its record")

        cli("rollback", "dev", "--reason", "bad greeting", "--repo", url, check_code=2)
        assert greeting(estate) == "hello world\n"
        newer = set_greeting(estate, "newer", "a newer greeting")
        for _ in range(2):  # agent cycles keep the pin, whatever triggers them
            before = agent.metric("gitops_ansible_cycles_total", env="dev", result="nothing")
            cli("sync", "dev", "--agent", address, check_code=0)
            agent.wait_for(lambda: agent.metric("gitops_ansible_cycles_total", env="dev",
                                                result="nothing") > before, 60, "a held cycle")
        assert greeting(estate) == "hello world\n"
        view = agent.status()
        assert view["pinned"]["revision"] == good and view["pinned"]["reason"] == "bad greeting"
        assert (view["applied_revision"], view["candidate"], view["ahead"]) == (good, newer, 2)
        assert agent.metric("gitops_ansible_pinned", env="dev") == 1
        assert agent.metric("gitops_ansible_held", env="dev") == 1
        held = [r["json"] for r in api.on(f"/api/repos/org/estate/statuses/{newer}")]
        assert [r["state"] for r in held] == ["pending"], held  # once, for two held cycles
        assert held[0]["description"].startswith(f"dev: pinned at {good[:12]}")

        cli("unpin", "dev", check_code=0)
        cli("sync", "dev", "--agent", address, check_code=0)
        agent.wait_for(lambda: greeting(estate) == "hello newer\n", 120, "the newest after unpin")
        agent.wait_for(lambda: agent.status()["candidate"] is None, 30, "the record")
        assert agent.metric("gitops_ansible_pinned", env="dev") == 0
