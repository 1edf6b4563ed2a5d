"""Central runs on execution nodes (gitops_ansible/nodes.py) against the lab's nodes: each
node has its own Python, ansible-core and ansible-runner (lab/nodes.py) and converges its
slice of the targets from a job the controller streams to it over SSH.

The estate: two bare targets, target-1 and target-2, whose role writes the motd, notes
which machine ran its Ansible (the node's host name) and shows a vault secret (the canary)
in a task's output. Push mode from a checkout, the vault password outside it (sent with the
job). Every test leaves the hosts as it found them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.fixtures import NODE_LAB_TARGETS
from lab.gitserver import WorkTree
from lab.system import wait_until
from tests.conftest import copy_base

pytestmark = pytest.mark.baremetal
CANARY = "canary-7f3c9a1e5d"
ROLE = """---
- name: Write the motd
  ansible.builtin.copy:
    dest: /etc/motd
    content: "{{ motd_text }}\\n"
    mode: "0644"

- name: Note which machine runs Ansible for this host
  ansible.builtin.copy:
    dest: /root/converged-by
    content: "{{ lookup('ansible.builtin.pipe', 'hostname') }}\\n"
    mode: "0644"

- name: Show the secret
  ansible.builtin.debug:
    msg: "the secret is {{ canary }}"

- name: Note the start of a long task
  ansible.builtin.file:
    path: /root/started
    state: touch
    mode: "0644"
  when: motd_sleep | int > 0

- name: Take our time
  ansible.builtin.command: "sleep {{ motd_sleep }}"
  changed_when: false
  when: motd_sleep | int > 0
"""


@pytest.fixture
def estate(node_lab, git_servers, tmp_path, request):
    """A checkout (a Git work tree) of the estate, the vault password beside it, and the
    targets pristine."""
    for name in NODE_LAB_TARGETS:
        node_lab.reset_host(name)
    tree = WorkTree(git_servers.create(request.node.name), tmp_path / "estate")
    copy_base(tree.path)
    tree.write("roles/motd/tasks/main.yml", ROLE)
    password = tmp_path / "vault-pass"
    password.write_text("correct horse battery staple\n")
    secret = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-vault"), "encrypt_string",
         "--vault-password-file", str(password), CANARY, "--name", "canary"],
        capture_output=True, text=True, check=True).stdout
    common = ("-o UserKnownHostsFile={{ playbook_dir }}/../ssh/known_hosts "
              "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes")
    tree.write("inventories/dev/group_vars/web.yml",
               "---\nplatform: baremetal\nmotd_text: managed from a node\nmotd_sleep: 0\n"
               f"ansible_user: root\nansible_python_interpreter: /usr/bin/python3\n"
               f"ansible_ssh_common_args: \"{common}\"\n{secret}")
    tree.write("ssh/known_hosts", node_lab.known_hosts.read_text())
    hosts = "".join(f"        {name}:\n          ansible_host: {node_lab.hosts[name].address}\n"
                    for name in NODE_LAB_TARGETS)
    tree.write("inventories/dev/hosts.yml", f"---\nall:\n  children:\n    web:\n"
                                            f"      hosts:\n{hosts}")
    (tree.path / "inventories/dev/group_vars/controllers.yml").unlink()
    tree.commit("two bare targets, converged from execution nodes")
    tree.password = password
    yield tree
    for name in NODE_LAB_TARGETS:
        node_lab.reset_host(name)


def config(node_lab, tmp_path: Path, nodes: list[str], slicing: str = "count",
           groups: dict | None = None) -> Path:
    path = tmp_path / "config.toml"
    text = f'slicing = "{slicing}"\n'
    for name in nodes:
        host = node_lab.hosts[name]
        text += (f'[[execution_nodes]]\nname = "{name}"\ndestination = "root@{host.address}"\n'
                 f'port = {host.port}\nssh_key = "{node_lab.key}"\n'
                 f'known_hosts = "{node_lab.known_hosts}"\n'
                 f'runner = "{node_lab.nodes[name].runner}"\ntarget_key = "{node_lab.key}"\n')
        if groups and name in groups:
            text += f"groups = {json.dumps(groups[name])}\n"
    path.write_text(text)
    return path


def push(cli, estate, conf: Path, *extra, code=None):
    return cli("push", "--env", "dev", "--path", estate.path, "--config", conf,
               "--vault-password-file", estate.password, *extra, check_code=code)


def converged_by(lab, target: str) -> str | None:
    path = lab.hosts[target].root / "root/converged-by"
    return path.read_text().strip() if path.exists() else None


def last_run(cli) -> dict:
    row = json.loads(cli("history", "--env", "dev", "--json", check_code=0).stdout)[0]
    return json.loads(cli("history", row["id"], "--json", check_code=0).stdout)


def left_on(lab, node: str) -> list[str]:
    """What runs of the tool left on NODE: processes marked with a run id, work
    directories."""
    found = lab.exec(node, ["sh", "-c", "grep -lz '^GITOPS_ANSIBLE_RUN_ID=' "
                                        "/proc/[0-9]*/environ 2>/dev/null; "
                                        "ls -d /tmp/gitops-ansible-* 2>/dev/null; true"])
    return found.stdout.split()


def files_holding(root: Path, text: str) -> list[Path]:
    needle = text.encode()
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and needle in p.read_bytes()]


def test_each_node_converges_its_slice_and_keeps_no_secret(node_lab, estate, cli, tmp_path):
    conf = config(node_lab, tmp_path, ["node-1", "node-2"])
    done = push(cli, estate, conf, code=2)
    assert "execution node node-1: 1 target (target-1)" in done.stdout
    assert "execution node node-2: 1 target (target-2)" in done.stdout
    assert (converged_by(node_lab, "target-1"), converged_by(node_lab, "target-2")) == \
        ("node-1", "node-2")
    run = last_run(cli)
    assert {h["host"]: h["outcome"] for h in run["hosts"]} == {"target-1": "changed",
                                                               "target-2": "changed"}
    assert {(t["host"], t["task"]) for t in run["tasks"] if t["status"] == "changed"} >= {
        ("target-1", "Write the motd"), ("target-2", "Note which machine runs Ansible for "
                                                     "this host")}
    artifacts = Path(run["artifacts"])
    for node in ("node-1", "node-2"):  # each node's events and output, kept as a local run's
        kept = artifacts / "artifacts" / run["id"] / "nodes" / node
        assert list((kept / "job_events").glob("*.json"))
        assert "the secret is ********" in (kept / "stdout").read_text()
        assert left_on(node_lab, node) == []
        for where in ("tmp", "root", "var/tmp"):
            assert files_holding(node_lab.hosts[node].root / where, CANARY) == []
    assert files_holding(cli.state_dir, CANARY) == []
    assert CANARY not in done.stdout + done.stderr
    assert not (artifacts / "nodes").exists()  # the jobs' copies went

    # the same revision again: nothing changes; then by group, one node takes both
    push(cli, estate, conf, code=0)
    conf = config(node_lab, tmp_path, ["node-1", "node-2"], "group", {"node-2": ["web"]})
    done = push(cli, estate, conf, code=2)
    assert "execution node node-2: 2 targets (target-1, target-2)" in done.stdout
    assert converged_by(node_lab, "target-1") == "node-2"


def test_a_node_at_other_versions_is_refused_before_any_change(node_lab, estate, cli,
                                                                tmp_path):
    conf = config(node_lab, tmp_path, ["node-1", "node-other"])
    done = push(cli, estate, conf, code=1)
    other = node_lab.nodes["node-other"].ansible_runner
    assert f"execution node node-other runs ansible-runner {other} (the controller: " in \
        done.stdout + done.stderr
    assert converged_by(node_lab, "target-1") is None
    assert converged_by(node_lab, "target-2") is None


def test_a_node_killed_mid_run_fails_its_slice_and_the_other_finishes(node_lab, estate,
                                                                       cli, tmp_path):
    estate.write("inventories/dev/host_vars/target-2.yml", "---\nmotd_sleep: 300\n")
    estate.write("inventories/dev/host_vars/target-1.yml", "---\nmotd_sleep: 20\n")
    estate.commit("target-2 takes five minutes")
    conf = config(node_lab, tmp_path, ["node-1", "node-2"])
    proc = cli.popen("push", "--env", "dev", "--path", estate.path, "--config", conf,
                     "--vault-password-file", estate.password)
    try:
        wait_until(lambda: (node_lab.hosts["target-2"].root / "root/started").exists(), 120,
                   "target-2's long task")
        node_lab.stop_host("node-2")
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        node_lab.start_host("node-2")
    assert proc.returncode == 4, out + err
    hosts = {h["host"]: h for h in last_run(cli)["hosts"]}
    assert hosts["target-1"]["outcome"] == "ok" or hosts["target-1"]["outcome"] == "changed"
    assert converged_by(node_lab, "target-1") == "node-1"
    assert hosts["target-2"]["outcome"] == "unreachable"
    assert hosts["target-2"]["message"].startswith("execution node node-2: failed mid-run: ")


def slow_push(node_lab, estate, cli, tmp_path):
    """(the push process, its config) of a push whose slices run five-minute tasks on both
    nodes, once both tasks have started."""
    for target in NODE_LAB_TARGETS:
        estate.write(f"inventories/dev/host_vars/{target}.yml", "---\nmotd_sleep: 300\n")
    estate.commit("every target takes five minutes")
    conf = config(node_lab, tmp_path, ["node-1", "node-2"])
    proc = cli.popen("push", "--env", "dev", "--path", estate.path, "--config", conf,
                     "--vault-password-file", estate.password)
    try:
        wait_until(lambda: all((node_lab.hosts[t].root / "root/started").exists()
                               for t in NODE_LAB_TARGETS), 120, "both long tasks")
    except BaseException:
        proc.kill()
        proc.communicate(timeout=60)
        raise
    return proc, conf


def test_a_cancelled_run_leaves_nothing_on_the_nodes(node_lab, estate, cli, tmp_path):
    proc, _ = slow_push(node_lab, estate, cli, tmp_path)
    try:
        assert left_on(node_lab, "node-1") and left_on(node_lab, "node-2")
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert last_run(cli)["status"] == "cancelled"
    assert left_on(node_lab, "node-1") == [] and left_on(node_lab, "node-2") == []


def test_the_next_cycle_cleans_the_nodes_after_a_killed_controller(node_lab, estate, cli,
                                                                    tmp_path):
    proc, conf = slow_push(node_lab, estate, cli, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert left_on(node_lab, "node-1") and left_on(node_lab, "node-2")
    for target in NODE_LAB_TARGETS:
        estate.write(f"inventories/dev/host_vars/{target}.yml", "---\nmotd_sleep: 0\n")
    estate.commit("quick again")
    done = push(cli, estate, conf, code=0)  # the killed run had written the motd already
    assert "was interrupted; recorded as such" in done.stderr
    assert "2 hosts converged, nothing changed" in done.stdout
    assert left_on(node_lab, "node-1") == [] and left_on(node_lab, "node-2") == []
    statuses = [r["status"] for r in json.loads(cli("history", "--env", "dev", "--json",
                                                    check_code=0).stdout)]
    assert statuses[:2] == ["unchanged", "interrupted"]
