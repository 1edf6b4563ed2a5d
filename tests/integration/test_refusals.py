"""A target's role refuses the revision before applying anything on it (a task's module
fails with ``gitops_refused``: the contract in docs/architecture.md): the run is refused
(exit 5), not failed; in pull mode the refusal is remembered for the revision; the other
targets converge and keep their records.

The targets are `local` platform targets (the base example's alpha and beta); the role
that refuses is a module in a role of the test repository, as a Kubernetes role's
server-side dry-run would refuse an unknown kind.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import CASES, events, local_estate

pytestmark = pytest.mark.git

WHY = "clusters/beta/widget.yaml: the server has no kind Widget"
# What a check that needs the server does when the server says no: nothing applied yet.
MODULE = '''#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule({"why": {"type": "str", "default": ""}}, supports_check_mode=True)
    if module.params["why"]:
        module.fail_json(msg=module.params["why"], gitops_refused=True)
    module.exit_json(changed=False)


main()
'''
TASKS = """---
- name: Ask the server whether it takes the revision
  server_check:
    why: "{{ refuse_why | default('') }}"
"""
# The base example's playbook of local targets, with the check before the greeting.
PLAYBOOK = (CASES / "base/playbooks/local.yml").read_text().replace(
    "    - greet\n", "    - server_check\n    - greet\n")


@pytest.fixture
def estate(git_servers, tmp_path, request):
    return local_estate(git_servers, tmp_path, request.node.name)


def cycle_result(done) -> dict:
    [found] = [e for e in events(done) if e["event"] == "cycle_result"]
    return found


def cli_json(cli, *args, code: int = 0):
    return json.loads(cli(*args, "--json", check_code=code).stdout)


def test_a_refusal_is_remembered_until_a_new_commit(cli, estate, git_servers):
    url = git_servers.url(estate.name, "file")
    run = ("run", "--repo", url, "--env", "dev", "--json")
    cli(*run, check_code=2)
    good = estate.revision
    estate.write("roles/server_check/library/server_check.py", MODULE)
    estate.write("roles/server_check/tasks/main.yml", TASKS)
    estate.write("playbooks/local.yml", PLAYBOOK)
    estate.write("inventories/dev/host_vars/alpha.yml", "---\ngreet_name: again\n")
    estate.write("inventories/dev/host_vars/beta.yml", f"---\nrefuse_why: '{WHY}'\n"
                 "greet_name: never\n")
    assert "server_check" in PLAYBOOK
    refused = estate.commit("beta's server refuses a kind; alpha gets a new greeting")

    # refused by beta before anything was applied there; alpha converged
    first = cli(*run, check_code=5)
    result = cycle_result(first)
    assert result["status"] == "refused" and result["hosts"] == {
        "alpha": "changed", "beta": "refused"}
    assert result["message"] == (f"revision {refused[:12]} refused by 1 target: beta: {WHY}; "
                                 "1 other host converged (1 changed)")
    assert (estate.out / "alpha.txt").read_text() == "hello again\n"
    assert (estate.out / "beta.txt").read_text() == "hello world\n"

    # the records: refused, not applied, not failing; each target where it is
    [status] = cli_json(cli, "status", "--env", "dev")
    assert (status["applied_revision"], status["good_revision"], status["refused_revision"]) \
        == (good, good, refused)
    assert not status["failing"]
    assert status["attention"] == [f"revision {refused[:12]} refused"]
    assert {h: (r["revision"], r["failed"]) for h, r in status["hosts"].items()} == {
        "alpha": (refused, False), "beta": (good, False)}
    [last, _] = cli_json(cli, "history", "--env", "dev")
    assert (last["status"], last["exit_code"], last["hosts"]) == (
        "refused", 5, {"alpha": "changed", "beta": "refused"})
    detail = cli_json(cli, "history", last["id"])
    [beta] = [h for h in detail["hosts"] if h["host"] == "beta"]
    assert beta["outcome"] == "refused" and WHY in beta["message"]

    # the next cycle says so, without running Ansible
    again = cli(*run, check_code=5)
    result = cycle_result(again)
    assert result["message"] == (f"dev: revision {refused[:12]} was refused (run "
                                 f"{last['id']}): refused by 1 target: beta: {WHY}")
    assert not [e for e in events(again) if e["event"] == "task_result"]
    assert len(cli_json(cli, "history", "--env", "dev")) == 2  # no run started

    # a plan of the revision is refused in the same words (of beta: alpha is at it
    # already), and remembers nothing
    planned = cli("plan", "--repo", url, "--env", "dev", "--json", check_code=5)
    assert cycle_result(planned)["message"] == (
        f"revision {refused[:12]} refused by 1 target: beta: {WHY}; 1 other target "
        "unaffected by the revision")
    assert cli_json(cli, "status", "--env", "dev")[0]["refused_run"] == last["id"]

    # a new commit is converged: beta takes it, alpha was at the refused revision already
    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: fixed\n")
    fixed = estate.commit("beta: the kind is gone from its manifests")
    result = cycle_result(cli(*run, check_code=2))
    assert result["hosts"] == {"beta": "changed"}
    assert (estate.out / "beta.txt").read_text() == "hello fixed\n"
    [status] = cli_json(cli, "status", "--env", "dev")
    assert status["applied_revision"] == status["good_revision"] == fixed
    assert status["refused_revision"] is None and status["attention"] == []
    assert {h: r["revision"] for h, r in status["hosts"].items()} == {
        "alpha": fixed, "beta": fixed}
