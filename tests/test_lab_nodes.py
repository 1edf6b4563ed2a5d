"""The lab's execution nodes (lab/nodes.py): each runs its own Python, ansible-core and
ansible-runner, reports their versions over SSH (the check a controller makes before it
streams a job), and converges a target host from a job the controller streams to it:
ansible-runner transmit | ssh node 'ansible-runner worker' | ansible-runner process, by the
command line and by the Python API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import ansible_runner
import pytest
import yaml

from lab.nodes import NODE_PREFIX, controller_versions

pytestmark = pytest.mark.baremetal
VENV_BIN = Path(sys.executable).parent
CONTROLLER = controller_versions()
TASK = "mark the target with the node that converged it"
PLAYBOOK = f"""
- hosts: all
  gather_facts: false
  tasks:
    - name: {TASK}
      ansible.builtin.copy:
        dest: /root/converged-by
        content: "{{{{ lookup('pipe', 'hostname') }}}}\\n"
"""


def on_node(lab, name: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(lab.ssh_argv(name) + [command], capture_output=True, text=True,
                          timeout=60)


def versions_on(lab, name: str) -> dict[str, str]:
    """What node NAME reports over SSH: its worker's --worker-info, and the ansible-core and
    Python of the ansible-playbook on its non-interactive PATH."""
    info = on_node(lab, name, "ansible-runner worker --worker-info")
    assert info.returncode == 0, info.stderr
    playbook = on_node(lab, name, "ansible-playbook --version")
    assert playbook.returncode == 0, playbook.stderr
    assert f"({NODE_PREFIX}/bin/python3.13)" in playbook.stdout, playbook.stdout
    return {"ansible_runner": yaml.safe_load(info.stdout)["runner_version"],
            "ansible_core": re.search(r"\[core ([^]]+)\]", playbook.stdout)[1],
            "python": re.search(r"python version = (\S+)", playbook.stdout)[1]}


def job(lab, tmp_path: Path, target: str) -> Path:
    """A private data dir converging TARGET from a node: the job carries what the node needs
    to reach it (the key through env/ssh_key, which the worker hands to ssh-agent; the
    lab's known_hosts beside the playbook), nothing refers to a path of the controller."""
    pdd = tmp_path / "job"
    for sub in ("project", "inventory", "env"):
        (pdd / sub).mkdir(parents=True)
    (pdd / "project/site.yml").write_text(PLAYBOOK)
    shutil.copyfile(lab.known_hosts, pdd / "project/known_hosts")
    (pdd / "env/ssh_key").write_text(lab.key.read_text())
    ssh_args = ("-o UserKnownHostsFile={{ playbook_dir }}/known_hosts"
                " -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes")
    inventory = {"all": {"hosts": {target: {"ansible_host": lab.hosts[target].address}},
                         "vars": {"ansible_user": "root", "ansible_ssh_common_args": ssh_args,
                                  "ansible_python_interpreter": "/usr/bin/python3"}}}
    (pdd / "inventory/hosts.yml").write_text(json.dumps(inventory))
    return pdd


def worker_command(lab, node: str, workdir: str) -> str:
    """The worker by its path in the runtime (what a node's settings name); the worker then
    starts the ansible-playbook on the node's PATH."""
    return f"{lab.nodes[node].runner} worker --private-data-dir={workdir} --delete"


def converged(lab, target: str, node: str, task_events: list[dict]) -> None:
    """TARGET has the file that NODE's run wrote, and the process side saw the task change
    it."""
    assert (lab.hosts[target].root / "root/converged-by").read_text() == f"{node}\n"
    changed = [e for e in task_events if e.get("event") == "runner_on_ok"
               and e["event_data"]["host"] == target and e["event_data"]["task"] == TASK]
    assert [e["event_data"]["res"]["changed"] for e in changed] == [True]


def test_nodes_run_their_own_python_and_the_controllers_versions(node_lab):
    for name in ("node-1", "node-2"):
        assert versions_on(node_lab, name) == CONTROLLER
        stdlib = on_node(node_lab, name, f"{NODE_PREFIX}/bin/python3 -c 'import ssl, hashlib, "
                                         "ctypes, sqlite3, lzma, bz2, zlib, readline, uuid'")
        assert stdlib.returncode == 0, stdlib.stderr
        # the node's own python3 (Debian's) is left alone
        own = on_node(node_lab, name, "python3 --version").stdout
        assert own.startswith("Python 3.11."), own
    other = versions_on(node_lab, "node-other")
    assert other["ansible_runner"] != CONTROLLER["ansible_runner"]
    assert other == dict(CONTROLLER, ansible_runner=other["ansible_runner"])
    assert other["ansible_runner"] == node_lab.nodes["node-other"].ansible_runner


def test_a_node_converges_a_target_through_the_command_line_stream(node_lab, tmp_path):
    pdd, workdir = job(node_lab, tmp_path, "target-1"), f"/tmp/job-{uuid.uuid4().hex}"
    runner = str(VENV_BIN / "ansible-runner")
    try:
        transmit = subprocess.Popen([runner, "transmit", str(pdd), "-p", "site.yml",
                                     "--ident", "one"], stdout=subprocess.PIPE)
        worker = subprocess.Popen(node_lab.ssh_argv("node-1")
                                  + [worker_command(node_lab, "node-1", workdir)],
                                  stdin=transmit.stdout, stdout=subprocess.PIPE)
        transmit.stdout.close()  # the worker's now: transmit sees a broken pipe if ssh dies
        process = subprocess.run([runner, "process", str(pdd), "--ident", "one"],
                                 stdin=worker.stdout,
                                 capture_output=True, text=True, timeout=300)
        worker.stdout.close()
        assert (transmit.wait(60), worker.wait(60), process.returncode) == (0, 0, 0), \
            process.stdout[-2000:] + process.stderr[-2000:]
        artifacts = pdd / "artifacts/one"
        assert (artifacts / "status").read_text() == "successful"
        assert (artifacts / "rc").read_text() == "0"
        task_events = [json.loads(f.read_text()) for f in (artifacts / "job_events").iterdir()]
        converged(node_lab, "target-1", "node-1", task_events)
        assert on_node(node_lab, "node-1", f"test ! -e {workdir}").returncode == 0, \
            "the worker's --delete left its private data dir"
    finally:
        node_lab.reset_host("target-1")


def test_a_node_converges_a_target_through_the_python_api(node_lab, tmp_path):
    pdd, workdir = job(node_lab, tmp_path, "target-2"), f"/tmp/job-{uuid.uuid4().hex}"
    worker = subprocess.Popen(node_lab.ssh_argv("node-2")
                              + [worker_command(node_lab, "node-2", workdir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    task_events, statuses = [], []

    def transmit() -> None:
        """Sends the job while the caller reads the results: the worker starts writing
        before it has read all of its input, and full pipes would block both sides."""
        try:
            ansible_runner.run(private_data_dir=str(pdd), playbook="site.yml", ident="two",
                               streamer="transmit", _output=worker.stdin)
        finally:
            worker.stdin.close()

    def status(data, runner_config) -> None:
        statuses.append(data["status"])
    sender = threading.Thread(target=transmit)
    try:
        sender.start()
        result = ansible_runner.run(private_data_dir=str(pdd), ident="two", streamer="process",
                                    _input=worker.stdout, quiet=True, status_handler=status,
                                    event_handler=lambda e: task_events.append(e) or True)
        sender.join(60)
        assert worker.wait(60) == 0
        assert result.status == "successful", statuses
        # the process side knows no rc (result.rc is None): the worker's is in the artifacts
        assert (pdd / "artifacts/two/rc").read_text() == "0"
        assert statuses == ["starting", "running", "successful"]
        converged(node_lab, "target-2", "node-2", task_events)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        node_lab.reset_host("target-2")
