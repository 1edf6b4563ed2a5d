"""Central runs at fleet size: 200+ inventory targets converged by the controller alone and
through 2 and 4 execution nodes (gitops_ansible/nodes.py): wall time, controller CPU and
the controller's peak memory.

    cd /work/main && .venv/bin/python bench/central_nodes.py [--hosts 200] [--targets 4] \
        [--nodes 0,2,4] [--repeat 1]

Needs root. A node lab (lab/nodes.py, prefix gatcent, subnet 198.18.11): 4 execution nodes
with the controller's Python, ansible-core and ansible-runner, and --targets sshd hosts. The
inventory has --hosts targets, aliases spread round-robin over the sshd hosts
(alias-001 ... with ansible_host = a lab address); each alias's role writes one file of its
own on its host and reads it back (2 tasks, no facts). One checkout, committed to git.
Per node count: one converge that changes every alias (the file's content names the
count), then --repeat no-op converges, all with

    gitops-ansible push --env fleet --path CHECKOUT --config C --state-dir S --preflight off

(C: no nodes, or [[execution_nodes]] for the first N nodes, slicing = count).
Measured for every run: wall; CPU (user+sys) of the controller's whole process tree as
wait4() reports it (the CLI, its ansible-playbook and forks, its ssh clients; not what runs
on the nodes, which sshd started there); and the controller's peak memory, the largest sum
of RSS over its process tree, sampled every 0.2 s (ru_maxrss would give the largest
single process). The machine has 2 cores, shared by the controller, the nodes and
the targets: the wall time of N nodes here says what the controller spends, not what N
machines would do. Written to bench/results/central_nodes.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from common import RESULTS, ROOT, bench_env, measure

sys.path.insert(0, str(ROOT))
from lab.nodes import NodeLab, ensure_node_runtime  # noqa: E402
from lab.hosts import unavailable_reason  # noqa: E402

NODES = [f"node-{n}" for n in range(1, 5)]
ROLE = """---
- name: Write this alias's file
  ansible.builtin.copy:
    dest: "/root/fleet/{{ inventory_hostname }}"
    content: "{{ fleet_mark }}\\n"
    mode: "0644"

- name: Read it back
  ansible.builtin.slurp:
    src: "/root/fleet/{{ inventory_hostname }}"
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200, help="inventory targets (200)")
    parser.add_argument("--targets", type=int, default=4, help="sshd hosts behind them (4)")
    parser.add_argument("--nodes", default="0,2,4", help="node counts, at most 4 (0,2,4)")
    parser.add_argument("--repeat", type=int, default=1, help="no-op converges per count (1)")
    args = parser.parse_args()
    args.nodes = [int(n) for n in args.nodes.split(",")]
    if any(n < 0 or n > len(NODES) for n in args.nodes):
        parser.error(f"--nodes: counts from 0 to {len(NODES)}")
    return args


def build_checkout(checkout: Path, lab: NodeLab, hosts: int) -> None:
    def write(rel: str, text: str) -> None:
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(text)
    write("playbooks/site.yml", "---\n- name: Classify targets by platform\n  hosts: all\n"
          "  gather_facts: false\n  tasks:\n    - name: Group by platform\n"
          "      ansible.builtin.group_by:\n        key: \"platform_{{ platform }}\"\n"
          "      changed_when: false\n\n- name: Bare hosts\n"
          "  ansible.builtin.import_playbook: baremetal.yml\n")
    write("playbooks/baremetal.yml", "---\n- name: Bare hosts\n  hosts: platform_baremetal\n"
          "  gather_facts: false\n  roles:\n    - fleet\n")
    write("roles/fleet/tasks/main.yml", ROLE)
    write("ssh/known_hosts", lab.known_hosts.read_text())
    common = ("-o UserKnownHostsFile={{ playbook_dir }}/../ssh/known_hosts "
              "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes")
    write("inventories/fleet/group_vars/all.yml",
          "---\nplatform: baremetal\nansible_user: root\n"
          f"ansible_python_interpreter: /usr/bin/python3\nansible_ssh_common_args: \"{common}\"\n"
          f"ansible_ssh_private_key_file: \"{lab.key}\"\n")
    addresses = [lab.hosts[t].address for t in lab.targets]
    lines = "".join(f"        alias-{n:03d}:\n          ansible_host: "
                    f"{addresses[n % len(addresses)]}\n" for n in range(1, hosts + 1))
    write("inventories/fleet/hosts.yml",
          f"---\nall:\n  children:\n    fleet:\n      hosts:\n{lines}")
    for target in lab.targets:
        lab.exec(target, ["mkdir", "-p", "/root/fleet"], check=True)
    subprocess.run(["git", "-C", str(checkout), "init", "-q"], check=True)


def commit(checkout: Path, mark: str) -> None:
    """A revision whose converge changes every alias's file."""
    (checkout / "inventories/fleet/group_vars/fleet.yml").write_text(f"---\nfleet_mark: {mark}\n")
    git = ["git", "-C", str(checkout), "-c", "user.name=bench", "-c",
           "user.email=bench@example.invalid"]
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", mark], check=True)


def config(path: Path, lab: NodeLab, count: int) -> Path:
    text = 'slicing = "count"\npreflight = "off"\n'
    for name in NODES[:count]:
        host = lab.hosts[name]
        text += (f'[[execution_nodes]]\nname = "{name}"\ndestination = "root@{host.address}"\n'
                 f'port = {host.port}\nssh_key = "{lab.key}"\nknown_hosts = "{lab.known_hosts}"\n'
                 f'runner = "{lab.nodes[name].runner}"\ntarget_key = "{lab.key}"\n')
    path.write_text(text)
    return path


class PeakMemory(threading.Thread):
    """The largest sum of RSS (MiB) over a process and its descendants, sampled (ansible-
    runner starts ansible-playbook in a session of its own: the tree, not the session)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.root, self.peak, self.done = None, 0.0, threading.Event()

    def follow(self, pid: int) -> None:
        self.root = pid

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.done.wait(0.2):
            if self.root is None:
                continue
            parent, rss = {}, {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
                    rss[int(entry)] = int(Path(f"/proc/{entry}/statm").read_text().split()[1])
                except (OSError, ValueError, IndexError):
                    continue
            tree, grew = {self.root}, True
            while grew:
                more = {pid for pid, ppid in parent.items() if ppid in tree} - tree
                tree |= more
                grew = bool(more)
            total = sum(rss.get(pid, 0) for pid in tree) * page
            self.peak = max(self.peak, total / 2**20)


def push(checkout: Path, conf: Path, state: Path, env: dict, expected: set[int]) -> dict:
    """One push, measured, its process tree's peak memory sampled."""
    watcher = PeakMemory()
    watcher.start()
    try:
        sample = measure([sys.executable, "-m", "gitops_ansible", "push", "--env", "fleet",
                          "--path", checkout, "--config", conf, "--state-dir", state],
                         checkout, env, timeout=3600, started=watcher.follow)
    finally:
        watcher.done.set()
        watcher.join()
    if sample.rc not in expected:
        sys.exit(f"push exit {sample.rc}, expected {expected}:\n{sample.output[-4000:]}")
    return {"wall_s": round(sample.wall, 2), "cpu_s": round(sample.cpu, 2),
            "peak_rss_sum_mib": round(watcher.peak, 1), "rc": sample.rc}


def main() -> None:
    args = parse_args()
    why = unavailable_reason()
    if why:
        sys.exit(f"central_nodes: {why}")
    runtime = ensure_node_runtime()
    with tempfile.TemporaryDirectory(prefix="gitops-central-") as tmp_name:
        tmp = Path(tmp_name)
        env = bench_env(tmp)
        targets = [f"t-{n}" for n in range(1, args.targets + 1)]
        with NodeLab(tmp / "lab", {n: runtime for n in NODES}, targets, prefix="gatcent",
                     subnet="198.18.11") as lab:
            checkout = tmp / "checkout"
            build_checkout(checkout, lab, args.hosts)
            rows = {}
            for count in args.nodes:
                conf = config(tmp / f"config-{count}.toml", lab, count)
                commit(checkout, f"nodes-{count}")
                state = tmp / f"state-{count}"
                print(f"{count} nodes: converging {args.hosts} targets", file=sys.stderr,
                      flush=True)
                changed = push(checkout, conf, state, env, {2})
                noops = [push(checkout, conf, state, env, {0}) for _ in range(args.repeat)]
                rows[count] = {"changed": changed, "noop": noops}
                print(f"  changed: {changed}\n  no-op:   {noops}", file=sys.stderr, flush=True)
    report(args, rows)


def report(args, rows: dict) -> None:
    base = rows.get(0)
    print(f"\n{args.hosts} targets on {args.targets} sshd hosts; 2 tasks each; "
          f"controller = the CLI's process tree")
    print(f"{'nodes':>5}  {'run':<8} {'wall s':>8} {'CPU s':>8} {'CPU ratio':>9} "
          f"{'peak MiB':>9} {'MiB ratio':>9}")
    for count, row in rows.items():
        for kind in ("changed", "noop"):
            samples = [row[kind]] if kind == "changed" else row[kind]
            wall = statistics.median(s["wall_s"] for s in samples)
            cpu = statistics.median(s["cpu_s"] for s in samples)
            peak = max(s["peak_rss_sum_mib"] for s in samples)
            if base:
                ref = [base[kind]] if kind == "changed" else base[kind]
                cpu_ratio = cpu / statistics.median(s["cpu_s"] for s in ref)
                mib_ratio = peak / max(s["peak_rss_sum_mib"] for s in ref)
                ratios = f"{cpu_ratio:>9.3f} {peak:>9.1f} {mib_ratio:>9.3f}"
            else:
                ratios = f"{'-':>9} {peak:>9.1f} {'-':>9}"
            print(f"{count:>5}  {kind:<8} {wall:>8.1f} {cpu:>8.1f} {ratios}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "central_nodes.json"
    out.write_text(json.dumps({"hosts": args.hosts, "targets": args.targets,
                               "rows": rows}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
