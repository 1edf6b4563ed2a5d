"""From the commit that declares a VM to its guest converged, split by phase, against a VM
booted to SSH by hand (virsh) in the same script.

    .venv/bin/python bench/vm_converge.py [--repeat N]

Each round declares a new VM (768 MiB, 1 vCPU, the lab's Debian guest image, TCG) in a
fresh commit of a local repository and runs `gitops-ansible run --json` on it; the guest
roles then install a package (tree, from the Debian mirror), create a user, write
/etc/motd and keep ssh enabled. The phases come from the run's own task events (each
carries its end time and duration) and from the guest's console log:

    define       first task of the vm role -> end of "Define the domain" (input checks,
                 domain list, qcow2 overlay, seed disk, define)
    boot         start of "Start the domain" -> the guest's kernel hands over to systemd
                 ("Welcome to" on the serial console)
    wait SSH     -> end of "Wait for the guest's SSH" (systemd up to sshd answering)
    guest roles  -> end of the last host_* task on the VM
    orchestrator the rest of the run: fetch, checks, Ansible start, the orphan scan, records

The baseline side does by hand what the vm role automates up to SSH: `virsh define` of the
lab's domain XML (overlay and seed made by lab/libvirt.py), `virsh start`, wait for
the SSH banner. Sides alternate round by round, one VM runs at a time (each is destroyed
before the next round), and the ratio printed is gitops-ansible (define + boot + wait SSH)
over the hand-made boot: what the platform adds to getting a VM up.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from common import ROOT, VENV_BIN, bench_env, parse_args

sys.path.insert(0, str(ROOT))
from lab.libvirt import VmLab, wait_ssh  # noqa: E402
from lab.system import free_port  # noqa: E402

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
       "-c", "commit.gpgsign=false"]
PHASES = ("define", "boot", "wait SSH", "guest roles", "orchestrator")


def git(cwd: Path, *args: str) -> None:
    subprocess.run(GIT + list(args), cwd=cwd, check=True, capture_output=True)


def build_repo(tmp: Path, lab: VmLab) -> tuple[Path, Path]:
    bare, work = tmp / "estate.git", tmp / "estate"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    work.mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "playbooks"), str(ROOT / "roles"),
                    str(ROOT / "ansible.cfg"), str(work)], check=True)
    inv = work / "inventories/bench"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    image = lab.image
    (inv / "group_vars/all.yml").write_text(yaml.safe_dump({
        "gitops_environment": "bench", "vm_hypervisors": ["localhost"],
        "vm_dir": str(tmp / "vms"), "vm_prune": True,
        "vm_images": {"debian-bookworm": {"base": str(image.base), "kernel": str(image.kernel),
                                          "initrd": str(image.initrd)}}}))
    (inv / "group_vars/vms.yml").write_text(yaml.safe_dump({
        "platform": "vm", "vm_hypervisor": "localhost", "vm_image": "debian-bookworm",
        "ansible_host": "127.0.0.1", "ansible_port": "{{ vm_ssh_port }}", "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "vm_authorized_keys": Path(f"{lab.key}.pub").read_text(),
        "host_packages_present": ["tree"],
        "host_users": [{"name": "deploy", "shell": "/bin/bash"}],
        "host_files_templates": [{"src": "motd.j2", "dest": "/etc/motd"}],
        "host_services": [{"name": "ssh", "state": "started", "enabled": True}]}))
    git(work, "init", "-q")
    git(work, "remote", "add", "origin", str(bare))
    return bare, work


def declare(work: Path, name: str, port: int) -> None:
    inv = work / "inventories/bench"
    for old in (inv / "host_vars").glob("*.yml"):
        old.unlink()
    (inv / "host_vars" / f"{name}.yml").write_text(yaml.safe_dump({"vm_ssh_port": port}))
    (inv / "hosts.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"vms": {"hosts": {name: None}}}}}))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"declare {name}")
    git(work, "push", "-q", "origin", "HEAD:main")


def watch_console(path: Path, marks: dict, stop: threading.Event) -> None:
    """Record when the guest's serial console first shows systemd taking over."""
    while not stop.is_set():
        try:
            if "Welcome to" in path.read_text(errors="replace"):
                marks["userspace"] = time.time()
                return
        except OSError:
            pass
        time.sleep(0.1)


def gitops_round(lab: VmLab, tmp: Path, work: Path, bare: Path, env: dict, n: int) -> dict:
    name = f"{lab.prefix}g{n}"
    declare(work, name, free_port())
    marks, stop = {}, threading.Event()
    watcher = threading.Thread(target=watch_console,
                               args=(tmp / "vms" / name / "console.log", marks, stop))
    watcher.start()
    start = time.time()
    run = subprocess.run([VENV_BIN / "gitops-ansible", "run", "--repo", f"file://{bare}",
                          "--ref", "main", "--env", "bench", "--json",
                          "--state-dir", tmp / "state"],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
    end = time.time()
    stop.set()
    watcher.join()
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    tasks = [e for e in events if e.get("event") == "task_result" and e.get("host") == name
             and e.get("status") != "skipped"]
    if run.returncode != 2 or not tasks or "userspace" not in marks:
        sys.exit(f"gitops-ansible run: exit {run.returncode} (expected 2), console marks "
                 f"{marks}:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}")

    def task(title: str) -> dict:
        return next(e for e in tasks if e["task"] == title)

    vm_tasks = [e for e in tasks if e["role"] == "vm"]
    first = min(e["ts"] - (e["duration"] or 0) for e in vm_tasks)
    defined, started = task("Define the domain")["ts"], task("Start the domain")
    ssh = task("Wait for the guest's SSH")["ts"]
    roles_end = max(e["ts"] for e in tasks if (e["role"] or "").startswith("host_"))
    phases = {"define": defined - first,
              "boot": marks["userspace"] - (started["ts"] - (started["duration"] or 0)),
              "wait SSH": ssh - marks["userspace"], "guest roles": roles_end - ssh}
    phases["orchestrator"] = (end - start) - sum(phases.values())
    phases["total"] = end - start
    lab.cleanup()
    return phases


def hand_round(lab: VmLab, n: int) -> float:
    vm = lab.prepare(f"h{n}", memory_mib=768)
    start = time.time()
    lab.virsh("define", vm.xml_path)
    lab.virsh("start", vm.name)
    wait_ssh(vm.port, console_log=vm.console_log)
    took = time.time() - start
    lab.cleanup()
    return took


def main() -> None:
    args = parse_args(2, __doc__)
    with tempfile.TemporaryDirectory(prefix="gatbench-vm-") as tmp:
        tmp = Path(tmp)
        with VmLab(tmp / "lab", prefix="gatbench-") as lab:
            bare, work = build_repo(tmp, lab)
            env = dict(bench_env(tmp), PYTHONPATH=str(ROOT))
            rounds, hand = [], []
            for n in range(1, args.repeat + 1):
                order = ("gitops", "hand") if n % 2 else ("hand", "gitops")
                for side in order:
                    if side == "gitops":
                        rounds.append(gitops_round(lab, tmp, work, bare, env, n))
                        print(f"  round {n}: gitops-ansible " + ", ".join(
                            f"{k} {v:.1f} s" for k, v in rounds[-1].items()),
                            file=sys.stderr, flush=True)
                    else:
                        hand.append(hand_round(lab, n))
                        print(f"  round {n}: by hand (define, start, SSH) {hand[-1]:.1f} s",
                              file=sys.stderr, flush=True)
    median = {k: statistics.median(r[k] for r in rounds) for k in (*PHASES, "total")}
    up = [r["define"] + r["boot"] + r["wait SSH"] for r in rounds]
    ratio = statistics.median(a / b for a, b in zip(up, hand))
    print(f"{'PHASE (gitops-ansible run, commit -> guest converged)':<56} {'MEDIAN s':>9}")
    for key in (*PHASES, "total"):
        print(f"{key:<56} {median[key]:>9.1f}")
    print(f"{'by hand: virsh define + start + SSH banner':<56} {statistics.median(hand):>9.1f}")
    print(f"ratio (define + boot + wait SSH) / by hand: per-round median {ratio:.3f}")
    print(f"RESULT name=vm_converge ratio={ratio:.3f} goal=report-only met=yes")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "vm_converge.json").write_text(json.dumps({
        "name": "vm_converge", "ratio": round(ratio, 4), "phases_median_s": median,
        "rounds": rounds, "hand_s": hand, "loadavg_at_end": list(os.getloadavg()),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")


if __name__ == "__main__":
    main()
