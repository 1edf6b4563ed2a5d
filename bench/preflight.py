"""The SSH pre-flight against the connection set-up it saves Ansible (issue 20, deliverable 2).

    cd /work/main && .venv/bin/python bench/preflight.py [--repeat N] [--hosts 12]

Needs root: N SSH hosts from the host lab (lab/, prefix gatpf, subnet 198.18.13). Each round
runs three sides, the order flipped every round, each with a control directory of its own
and Ansible's default ssh_args plus push's keepalives (its masters closed after it,
unmeasured):

    pre-flight + Ansible:  preflight.check_hosts with the run's Masters, then
                           ansible all -m ping (one task on every host) through the masters
    Ansible alone:         ansible all -m ping, opening its own masters
    paramiko + Ansible:    the pre-flight before 2026-12-04 (paramiko, connections of its
                           own), then ansible all -m ping opening its own masters

The pre-flight's CPU is measured in this process: getrusage of the process (its threads)
and of its children (the ssh clients, which authenticate before a master detaches), before
and after. `ansible`'s is its process tree's (common.measure). The masters that detach are
not counted on any side. Importing paramiko, which the controller did once per run, is
measured once in a fresh interpreter and added to the paramiko side.

It prints the CPU of each step; what the pre-flight saves Ansible (ping alone - ping through
the masters); and the pre-flight's net cost (its CPU - what it saves). Goal: net <= 0.
The RESULT is the median over rounds of (pre-flight + ping through its masters), less the
median ping alone. `ansible`'s CPU varies by a few tenths of a second from run to run, about
the size of the net cost: so it also times single ssh clients to the first host,
alternating, 20 each: the pre-flight's check (preflight.check_target) that opens the
connection (and its master) and runs `true`, and the same check through the open master.
Their difference is what a master saves the ssh client alone; Ansible saves more (its
connection plugin's own work while a master starts).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from common import ROOT, VENV_BIN, bench_env, close_masters, expect, measure

sys.path.insert(0, str(ROOT))
from gitops_ansible.execute import ANSIBLE_SSH_ARGS, KEEPALIVE_COUNT  # noqa: E402
from gitops_ansible.inventory import CONNECTION_VARS, Inventory, Target  # noqa: E402
from gitops_ansible.preflight import Masters, check_hosts, check_target  # noqa: E402
from lab.hosts import HostLab, unavailable_reason  # noqa: E402
from tests.conftest import make_settings  # noqa: E402

ARGS = f"{ANSIBLE_SSH_ARGS} -o ServerAliveInterval=15 -o ServerAliveCountMax={KEEPALIVE_COUNT}"
OPENSSH, ALONE, PARAMIKO = "pre-flight + Ansible", "Ansible alone", "paramiko + Ansible"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5,
                        help="measured rounds (default 5), after a warm-up")
    parser.add_argument("--hosts", type=int, default=12, help="lab hosts (default 12)")
    return parser.parse_args()


def cpu() -> float:
    """This process's CPU and its waited-for children's, so far."""
    own, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def ssh_costs(target: Target, settings, directory: Path, count: int = 20) -> tuple[float, float]:
    """Median CPU (this process and its ssh client) of the pre-flight's check of one target
    that opens a connection (a master), and of the same check through that master,
    alternating."""
    masters = Masters(ARGS, directory)

    def check() -> float:
        before = cpu()
        found = check_target(target, settings.known_hosts, settings.preflight_timeout, masters)
        if not found.ok:
            sys.exit(f"ssh costs: the pre-flight failed: {found}")
        return cpu() - before
    opening, through = [], []
    for _ in range(count):
        opening.append(check())
        through.append(check())
        close_masters(directory)
    return statistics.median(opening), statistics.median(through)


def paramiko_import() -> float:
    """CPU of importing paramiko in a fresh interpreter, less the interpreter's own start."""
    def run(code: str) -> float:
        return measure([sys.executable, "-c", code], ROOT, None).cpu
    return statistics.median(run("import paramiko") - run("pass") for _ in range(5))


def main() -> None:
    args = parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"preflight: {reason}")
    names = [f"h-{n}" for n in range(1, args.hosts + 1)]
    settings = make_settings()
    rounds: dict[str, list[dict]] = {OPENSSH: [], ALONE: [], PARAMIKO: []}
    with tempfile.TemporaryDirectory(prefix="gatbench-pf-") as tmp, \
            HostLab(Path(tmp) / "lab", names, prefix="gatpf", subnet="198.18.13") as lab:
        tmp = Path(tmp)
        conn = {k: v for k, v in lab.inventory_vars().items() if k in CONNECTION_VARS}
        (tmp / "hosts.yml").write_text(yaml.safe_dump(lab.inventory()))

        def inventory(**more) -> Inventory:
            return Inventory("lab", tmp, {n: Target(n, "baremetal", {
                **conn, "ansible_host": h.address, **more}) for n, h in lab.hosts.items()}, set())

        def ping(directory: Path) -> float:
            env = dict(bench_env(tmp), ANSIBLE_SSH_ARGS=ARGS, ANSIBLE_FORKS="10",
                       ANSIBLE_SSH_CONTROL_PATH_DIR=str(directory),
                       ANSIBLE_HOST_KEY_CHECKING="True")
            done = expect("ansible ping", measure([VENV_BIN / "ansible", "all", "-i",
                                                   tmp / "hosts.yml", "-m", "ping"], tmp, env),
                          (0,), "SUCCESS")
            return done.cpu

        def side(name: str, round_no: int) -> dict:
            directory = tmp / f"cp-{round_no}-{len(rounds[name])}-{name.split()[0]}"
            directory.mkdir()
            try:
                before = cpu()
                if name == OPENSSH:
                    checks = check_hosts(inventory(), settings, Masters(ARGS, directory))
                elif name == PARAMIKO:
                    checks = check_hosts(inventory(ansible_connection="paramiko"), settings)
                else:
                    checks = []
                check = cpu() - before
                if any(not c.ok for c in checks):
                    sys.exit(f"{name}: the pre-flight failed: {checks}")
                return {"check": check, "ping": ping(directory)}
            finally:
                close_masters(directory)

        for round_no in range(args.repeat + 1):
            order = list(rounds) if round_no % 2 == 0 else list(rounds)[::-1]
            for name in order:
                found = side(name, round_no)
                print(f"  round {round_no}{' (warm-up)' if not round_no else ''}: {name}: "
                      f"check {found['check']:.3f} CPU s, ping {found['ping']:.3f} CPU s",
                      file=sys.stderr, flush=True)
                if round_no:
                    rounds[name].append(found)
        (tmp / "cp-costs").mkdir()
        opening, through = ssh_costs(inventory().targets[names[0]], settings, tmp / "cp-costs")
    imported = paramiko_import()
    alone = statistics.median(r["ping"] for r in rounds[ALONE])
    print(f"\n== {args.hosts} hosts, {args.repeat} rounds: CPU s, median of rounds "
          f"(paramiko's import, once per run: {imported:.3f} s, in its check)")
    print(f"{'SIDE':<22} {'PRE-FLIGHT':>11} {'ANSIBLE':>8} {'SAVED':>7} {'NET COST':>9} "
          f"{'PER HOST':>9}")
    for name in (OPENSSH, PARAMIKO, ALONE):
        check = statistics.median(r["check"] for r in rounds[name]) + (
            imported if name == PARAMIKO else 0.0)
        ansible = statistics.median(r["ping"] for r in rounds[name])
        net = check - (alone - ansible)
        print(f"{name:<22} {check:>11.3f} {ansible:>8.3f} {alone - ansible:>7.3f} "
              f"{net:>9.3f} {net / args.hosts:>9.4f}")
    check = statistics.median(r["check"] for r in rounds[OPENSSH]) / args.hosts
    saved = opening - through
    print(f"\none host's check, median of 20: opening the connection {opening * 1000:.1f} ms, "
          f"through its master {through * 1000:.1f} ms: a master saves {saved * 1000:.1f} ms "
          f"a host;\nthe pre-flight costs {check * 1000:.1f} ms a host (its ssh clients and "
          f"this process): {(check - saved) * 1000:+.1f} ms a host against one check alone")
    net = statistics.median(r["check"] + r["ping"] for r in rounds[OPENSSH]) - alone
    print(f"RESULT name=preflight_net_cpu hosts={args.hosts} net_s={net:.3f} "
          f"goal=<=0 met={'yes' if net <= 0 else 'no'}")


if __name__ == "__main__":
    main()
