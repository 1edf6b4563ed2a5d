"""Issue 19, deliverables 5 and 7: one host does not stall the rest.

Real lab hosts (lab/hosts.py), a repository whose converge takes some seconds on every host,
`gitops-ansible run` as a real process. The host side of one host's veth is set down while
its task runs: SSH's keepalives (ServerAliveInterval, ServerAliveCountMax=4) make that host
unreachable within about 4 keepalives, the others finish, and once the link is back the
next cycle converges it. A task that hangs on one host fails there after Ansible's
task_timeout, and the others finish.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lab.gitserver import WorkTree
from tests.conftest import ROOT, Cli
from tests.integration.test_baremetal import host_file

pytestmark = [pytest.mark.baremetal, pytest.mark.e2e]

WORK = "/var/lib/gitops-faults"  # where the test's playbook writes on the lab hosts
CUT = "web-2"      # the host whose link goes down
KEEPALIVE = 3      # ssh_keepalive of the run with a cut link (GITOPS_ANSIBLE_SSH_KEEPALIVE)
SLEEP = 15         # seconds of the slow task on every host
OUTAGE = 120       # the link comes back after this at the latest (a stalled run then ends)

SITE = """---
- name: Classify targets by platform
  hosts: all
  gather_facts: false
  tasks:
    - name: Group by platform
      ansible.builtin.group_by:
        key: "platform_{{ platform }}"
      changed_when: false

- name: Bare hosts
  ansible.builtin.import_playbook: baremetal.yml
"""

PLAYBOOK = f"""---
- name: Converge bare hosts, slowly
  hosts: platform_baremetal
  gather_facts: false
  tasks:
    - name: Make the directory
      ansible.builtin.file:
        path: {WORK}
        state: directory
        mode: "0755"

    - name: Note the start
      ansible.builtin.copy:
        dest: {WORK}/started
        content: "{{{{ gitops_revision }}}}\\n"
        mode: "0644"

    - name: Take our time
      ansible.builtin.command: "sleep {{{{ faults_sleep }}}}"
      changed_when: false

    - name: Write the result
      ansible.builtin.copy:
        dest: {WORK}/done
        content: "{{{{ gitops_revision }}}}\\n"
        mode: "0644"

    - name: One more task
      ansible.builtin.copy:
        dest: {WORK}/after
        content: "{{{{ gitops_revision }}}}\\n"
        mode: "0644"
"""


def slow_estate(git_servers, lab, tmp_path: Path, name: str, sleeps: dict) -> WorkTree:
    """A served repository converging every lab host through PLAYBOOK; ``sleeps``: the
    seconds of each host's slow task."""
    for host in lab.hosts:
        shutil.rmtree(host_file(lab, host, WORK), ignore_errors=True)
    tree = WorkTree(git_servers.create(name), tmp_path / "worktree")
    shutil.copy(ROOT / "ansible.cfg", tree.path / "ansible.cfg")
    tree.write("playbooks/site.yml", SITE)
    tree.write("playbooks/baremetal.yml", PLAYBOOK)
    hosts = {n: {"ansible_host": h.address, "faults_sleep": sleeps[n]}
             for n, h in lab.hosts.items()}
    inventory = {"all": {"hosts": hosts, "vars": {
        "platform": "baremetal", "gitops_environment": "lab", **lab.inventory_vars()}}}
    tree.write("inventories/lab/hosts.yml", "---\n" + yaml.safe_dump(inventory, sort_keys=False))
    tree.revision = tree.commit("a slow converge of the lab hosts")
    tree.url = git_servers.url(name, "git")
    return tree


@pytest.fixture
def clean_hosts(host_lab):
    """The lab is shared by the session: the test's files go at the end."""
    yield host_lab
    for host in host_lab.hosts:
        shutil.rmtree(host_file(host_lab, host, WORK), ignore_errors=True)


def written(lab, name: str) -> dict:
    """{host: content} of WORK/NAME on each host that has it."""
    return {h: host_file(lab, h, f"{WORK}/{name}").read_text().strip() for h in lab.hosts
            if host_file(lab, h, f"{WORK}/{name}").exists()}


class Link:
    """The host side of a lab host's veth (lab/hosts.py: PREFIX-hI into the bridge)."""

    def __init__(self, lab, host: str):
        self.name = f"{lab.prefix}-h{lab.names.index(host) + 1}"
        self.cut_at: float | None = None

    def set(self, state: str) -> None:
        subprocess.run(["ip", "link", "set", self.name, state], check=True)
        if state == "down":
            self.cut_at = time.monotonic()

    def is_up(self) -> bool:
        shown = subprocess.run(["ip", "-o", "link", "show", self.name], capture_output=True,
                               text=True, check=True).stdout
        return "state DOWN" not in shown and ",UP" in shown


class Watch(threading.Thread):
    """While a run goes on, the command lines of the ssh processes Ansible starts to the lab
    hosts and the environment of ansible-playbook, as `ps` and /proc show them."""

    def __init__(self, lab, state_dir: Path):
        super().__init__(daemon=True)
        self.lab, self.state_dir = lab, str(state_dir)
        self.ssh: set[tuple[str, ...]] = set()
        self.playbook_env: dict[str, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for argv, environ in processes():
                if Path(argv[0]).name == "ssh" and str(self.lab.known_hosts) in " ".join(argv):
                    self.ssh.add(tuple(argv))
                elif any(Path(a).name == "ansible-playbook" for a in argv[:2]) and \
                        self.state_dir in " ".join(argv):
                    self.playbook_env = environ

    def stop(self) -> None:
        self.done.set()
        self.join()


def processes():
    """(argv, environment) of every process that can be read."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            raw = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv[0]:
            yield argv, dict(v.split("=", 1) for v in raw if "=" in v)


@dataclass
class Finished:
    code: int
    events: list[dict]
    seconds: float
    watch: Watch
    stderr: str


def run_watched(cli: Cli, lab, estate, on_event=None) -> Finished:
    """`run --json` as a process, watched (Watch); each JSON line goes to ``on_event`` as
    it arrives."""
    watch = Watch(lab, cli.state_dir)
    watch.start()
    started = time.monotonic()
    proc = cli.popen("run", "--repo", estate.url, "--env", "lab", "--json")
    lines = []
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                lines.append(json.loads(line))
                if on_event:
                    on_event(lines[-1])
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        watch.stop()
    return Finished(proc.returncode, lines, time.monotonic() - started, watch,
                    proc.stderr.read())


def run_id(done: Finished) -> str:
    return next(e["run_id"] for e in done.events if e["event"] == "cycle_result")


def test_a_host_whose_link_is_cut_is_unreachable_while_the_others_finish(
        cli, git_servers, clean_hosts, tmp_path):
    lab = clean_hosts
    estate = slow_estate(git_servers, lab, tmp_path, "link-cut", dict.fromkeys(lab.hosts, SLEEP))
    link = Link(lab, CUT)
    unreachable: dict[str, float] = {}
    noted: set[str] = set()
    timers: list[threading.Timer] = []

    def on_event(event: dict) -> None:
        if event["event"] != "task_result":
            return
        if event["task"] == "Note the start":
            noted.add(event["host"])
        if noted == set(lab.hosts) and not timers:
            # the cut comes while the slow task (next) runs on every host; the link comes
            # back after OUTAGE at the latest, so that a run that stalls still ends
            timers.extend([threading.Timer(3, link.set, ["down"]),
                           threading.Timer(3 + OUTAGE, link.set, ["up"])])
            for timer in timers:
                timer.start()
        if event["status"] == "unreachable":
            unreachable.setdefault(event["host"], time.monotonic())

    short = Cli(cli.state_dir, {"GITOPS_ANSIBLE_SSH_KEEPALIVE": str(KEEPALIVE)})
    try:
        done = run_watched(short, lab, estate, on_event)
        ended, still_down = time.monotonic(), not link.is_up()
    finally:
        for timer in timers:
            timer.cancel()
        link.set("up")
    assert link.cut_at is not None, f"the link was never cut (exit {done.code}):\n{done.stderr}"
    after_cut = ended - link.cut_at
    assert still_down, f"the run ended only once the link was back, {after_cut:.0f}s after the cut"
    assert done.code == 4, done.stderr
    assert list(unreachable) == [CUT]
    unreachable_after = unreachable[CUT] - link.cut_at
    print(f"\ncut run: {done.seconds:.1f}s in all, {after_cut:.1f}s after the cut; {CUT} "
          f"unreachable {unreachable_after:.1f}s after the cut")
    # about 4 missed keepalives (ServerAliveCountMax), then the tasks left: the run does
    # not wait for the link (bounds with room for a loaded machine, well under OUTAGE)
    assert unreachable_after < KEEPALIVE * (4 + 1) + 25, unreachable_after
    assert after_cut < KEEPALIVE * 4 + 60, after_cut
    # the keepalives asked for are on the command line of every ssh Ansible started
    asked = f"-o ServerAliveInterval={KEEPALIVE} -o ServerAliveCountMax=4"
    assert done.watch.ssh and all(asked in " ".join(argv) for argv in done.watch.ssh), \
        done.watch.ssh

    others = [h for h in lab.hosts if h != CUT]
    assert written(lab, "started") == dict.fromkeys(lab.hosts, estate.revision)
    assert written(lab, "done") == written(lab, "after") == dict.fromkeys(others,
                                                                           estate.revision)
    detail = json.loads(cli("history", run_id(done), "--json", check_code=0).stdout)
    assert detail["status"] == "failed", detail["status"]
    outcomes = {h["host"]: h["outcome"] for h in detail["hosts"]}
    assert outcomes == {**dict.fromkeys(others, "changed"), CUT: "unreachable"}
    lost = [t for t in detail["tasks"] if t["host"] == CUT and t["status"] == "unreachable"]
    assert [t["task"] for t in lost] == ["Take our time"], detail["tasks"]
    assert "198.18." in lost[0]["message"] and "ssh" in lost[0]["message"], lost
    state = json.loads(cli("status", "--json", check_code=0).stdout)[0]
    assert state["last_run"]["id"] == run_id(done)
    assert "applied revision has failed hosts" in state["attention"], state["attention"]

    # the link is back: the next cycle converges the cut host (the only one not clean at
    # the revision), with the default keepalives
    again = run_watched(cli, lab, estate)
    print(f"next cycle (no cut, default settings): {again.seconds:.1f}s")
    assert again.code == 2, again.stderr
    assert written(lab, "done") == written(lab, "after") == dict.fromkeys(lab.hosts,
                                                                          estate.revision)
    history = json.loads(cli("history", "--env", "lab", "--json", check_code=0).stdout)
    assert history[0]["hosts"] == {CUT: "changed"}
    assert history[0]["scope"]["unchanged"] == sorted(others)
    assert json.loads(cli("status", "--json").stdout)[0]["good_revision"] == estate.revision
    defaults = "-o ServerAliveInterval=15 -o ServerAliveCountMax=4"
    assert again.watch.ssh and all(defaults in " ".join(argv) for argv in again.watch.ssh), \
        again.watch.ssh
    environ = again.watch.playbook_env
    assert defaults in environ.get("ANSIBLE_SSH_ARGS", ""), environ
    assert environ.get("ANSIBLE_TASK_TIMEOUT") == "1800"


HANG = 599  # seconds of the task that hangs (found by it on the host, stopped at the end)


def test_a_task_that_hangs_on_one_host_fails_there_after_task_timeout(
        cli, git_servers, clean_hosts, tmp_path):
    lab = clean_hosts
    stuck = "db-1"
    # the timeout leaves room for a loaded machine: the others' tasks must not reach it
    sleeps = {h: HANG if h == stuck else 1 for h in lab.hosts}
    estate = slow_estate(git_servers, lab, tmp_path, "task-timeout", sleeps)
    hasty = Cli(cli.state_dir, {"GITOPS_ANSIBLE_TASK_TIMEOUT": "15"})
    try:
        done = run_watched(hasty, lab, estate)
    finally:  # Ansible stops waiting; the command goes on on the host
        left = lab.exec(stuck, ["pgrep", "-f", f"^sleep {HANG}$"]).stdout.split()
        if left:
            lab.exec(stuck, ["kill", *left])
    print(f"\nrun with a task hanging on {stuck}: {done.seconds:.1f}s")
    assert done.code == 4, done.stderr
    assert done.seconds < 120, done.seconds  # the hung task would take HANG seconds
    assert done.watch.playbook_env.get("ANSIBLE_TASK_TIMEOUT") == "15"
    others = [h for h in lab.hosts if h != stuck]
    assert written(lab, "done") == written(lab, "after") == dict.fromkeys(others,
                                                                           estate.revision)
    detail = json.loads(cli("history", run_id(done), "--json", check_code=0).stdout)
    outcomes = {h["host"]: h["outcome"] for h in detail["hosts"]}
    assert outcomes == {**dict.fromkeys(others, "changed"), stuck: "failed"}
    failed = [t for t in detail["tasks"] if t["status"] == "failed"]
    assert [(t["host"], t["task"], t["message"]) for t in failed] == [
        (stuck, "Take our time", "Task failed: Timed out after 15 second(s).")]  # Ansible's
