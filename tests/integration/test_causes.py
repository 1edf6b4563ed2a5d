"""The cause of a failure survives: Ansible's own error line and a failed loop's items
reach the run's summary, its events, `history` and the result message that alerts and
commit statuses carry (the compat tier runs this module on the oldest ansible-core too)."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import copy_base, events

pytestmark = pytest.mark.git


def push_repo(tmp_path, tasks: str):
    """A local repository with one `local` target, alpha, whose role runs ``tasks``."""
    repo = copy_base(tmp_path / "repo")
    out = tmp_path / "out"
    out.mkdir()
    (repo / "inventories/dev/hosts.yml").write_text(
        "---\nall:\n  children:\n    controllers:\n      hosts:\n        alpha:\n")
    (repo / "inventories/dev/group_vars/controllers.yml").write_text(
        f"---\nplatform: local\nansible_connection: local\ngreet_dir: {out}\n")
    (repo / "inventories/dev/group_vars/web.yml").unlink()
    (repo / "roles/greet/tasks/main.yml").write_text(tasks)
    for argv in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                 "commit", "-qm", "estate"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True)
    return repo


def test_a_failed_loop_names_its_failing_items(cli, tmp_path):
    repo = push_repo(tmp_path, """---
- name: Check every service
  ansible.builtin.fail:
    msg: "service {{ item }} is not allowed here"
  loop: [telnet, ssh, rsh, ftp, tftp]
  when: item != 'ssh'
""")
    done = cli("push", "--env", "dev", "--path", repo, "--json", check_code=4)
    [failed] = [e for e in events(done) if e["event"] == "task_result"
                and e["status"] == "failed"]
    assert failed["message"].startswith("One or more items failed: telnet: service telnet "
                                        "is not allowed here; rsh: service rsh is not "
                                        "allowed here; ftp: ")
    assert failed["message"].endswith("; 1 more")
    [host] = [e for e in events(done) if e["event"] == "host_result"]
    assert "telnet: service telnet is not allowed here" in host["message"]

    [run] = json.loads(cli("history", "--env", "dev", "--json", check_code=0).stdout)
    assert run["status"] == "failed"
    assert "alpha: Check every service: One or more items failed: telnet: service telnet " \
           "is not allowed here" in run["message"]
    shown = cli("history", run["id"], check_code=0).stdout
    assert "rsh: service rsh is not allowed here" in shown


def test_the_error_that_ended_the_run_is_kept_not_an_ignored_one_before_it(cli, tmp_path):
    repo = push_repo(tmp_path, """---
- name: A failure the role goes past
  ansible.builtin.fail:
    msg: not this one
  ignore_errors: true
""")
    site = repo / "playbooks/site.yml"
    site.write_text(site.read_text() + """
- name: A play whose hosts cannot be known
  hosts: "{{ no_such_variable }}"
  gather_facts: false
  tasks:
    - name: Never
      ansible.builtin.debug:
        msg: never
""")
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qam", "a play that cannot start"], check=True)
    done = cli("push", "--env", "dev", "--path", repo, check_code=1)
    assert "ansible failed: Error processing keyword 'hosts': 'no_such_variable' is " \
           "undefined (playbooks/site.yml:18:10)" in done.stderr
    assert "not this one" not in done.stderr.split("ansible failed:")[1]


def test_an_ansible_error_keeps_its_own_line_and_place(cli, tmp_path):
    repo = push_repo(tmp_path, """---
- name: Something from a collection that is not there
  no_such_module_here:
    path: /tmp
""")
    done = cli("push", "--env", "dev", "--path", repo, check_code=1)
    cause = ("couldn't resolve module/action 'no_such_module_here'. This often indicates a "
             "misspelling, missing collection, or incorrect module path. "
             "(roles/greet/tasks/main.yml:2:3)")
    assert f"ansible failed: {cause}" in done.stderr
    [run] = json.loads(cli("history", "--env", "dev", "--json", check_code=0).stdout)
    assert run["status"] == "error" and run["message"] == f"ansible failed: {cause}"
