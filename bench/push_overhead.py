"""The overhead of a converge through gitops-ansible push against plain ansible-playbook,
at 3, 6 and 12 hosts: its ratio per size and the extra controller CPU per host.

    cd /work/main && .venv/bin/python bench/push_overhead.py [--repeat N] [--sizes 3,6,12]

Needs root: 12 SSH hosts from the host lab (lab/, prefix gatbench, subnet 198.18.7), in
groups of three alike: web-(2k-1) (also in `hardened`), web-2k and db-k, so that every
size does the same work per host (3: web-1, web-2, db-1, the estate of
tests/integration/test_baremetal.py). One checkout per size holds the project's
playbooks/, roles/, ansible.cfg and inventories/lab (lab_inventory()'s variables, that
size's hosts), committed to git. It is converged once, unmeasured; then every run is a
no-op on converged hosts, the sides interleaved round by round, all started in the
checkout:

    gitops-ansible push --env lab --path CHECKOUT --vault-password-file V --state-dir S1
    ansible-playbook -i inventories/lab playbooks/site.yml --vault-password-file V
    gitops-ansible push ... --preflight off --state-dir S2      (the cost of the pre-flight)

V = inventories/lab/.vault-pass. With ``--connections kept`` (the default) every side shares
one SSH ControlPersist directory under the temporary directory, and its masters persist for
the whole benchmark (ssh_args with ControlPersist=MASTERS_PERSIST, on every side; push adds
its keepalives to them): the first converge opens them and every measured run reuses them.
With Ansible's default (60 s) a master expired between some runs and not others, at random,
and the run that opened it again paid its handshake: a 12-host no-op varied by +-5 CPU s.
They are closed at the end. Then the pre-flight (push against push --preflight off) is the
cost of a check whose connection Ansible does not use.
With ``--connections fresh`` every run opens its own connections, as a push from CI does:
Ansible's ssh_args and ControlPersist are its defaults, push keeps the masters in its run's
own directory (the pre-flight opens them, Ansible's tasks use them; they are stopped when
the run ends) and ansible-playbook in one of its own, closed after each of its runs
(unmeasured). Then the pre-flight column is what the check costs beyond the connections
Ansible would open anyway (issue 20's deliverable 2).

CPU is user+sys of the command's whole process tree as wait4() reports it (common.measure):
the controller and every descendant it waited for (ansible-playbook, its forks, their
ssh clients). Not counted, on any side: the ControlPersist masters, which detach.
The push sides run the CLI in a Python that also writes, as it exits, the CPU of its own
process (getrusage RUSAGE_SELF: the controller's Python and its threads, not its
children) to a file (OWN_CPU): the controller's own share of the tree, measured within one
run, so that the noise of ansible-playbook between runs does not blur it.
Per size it prints the CPU ratio push / ansible-playbook (per-round median) and the extra
CPU (push - ansible-playbook) in total and per host, with and without the pre-flight; then
a straight line through the sizes, extra CPU = fixed + per host x hosts.
Goals: wall ratio (gitops-ansible push with the default pre-flight / ansible-playbook;
per-round median, see common.ratios) <= 1.05; issue 20: CPU ratio <= 1.03 at every size
and no slope per host.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import (ROOT, VENV_BIN, alternate, bench_env, close_masters, expect, measure, report,
                    summarize)

sys.path.insert(0, str(ROOT))
from lab.hosts import HostLab, unavailable_reason  # noqa: E402
from tests.integration.test_baremetal import VAULT, lab_inventory  # noqa: E402

GOAL = 1.05
# Ansible's own ssh_args, without its ControlPersist=60s (set below, for the whole run)
ANSIBLE_SSH_ARGS = "-C -o ControlMaster=auto"
MASTERS_PERSIST = "3600s"
CPU_GOAL = 1.03
SIZES = (3, 6, 12)
# gitops-ansible's console script, and as it exits its own CPU to $BENCH_OWN_CPU
OWN_CPU = ("import os, resource, sys\n"
           "from gitops_ansible.cli import main\n"
           "sys.argv[0] = 'gitops-ansible'\n"
           "try:\n    code = main()\n"
           "finally:\n    used = resource.getrusage(resource.RUSAGE_SELF)\n"
           "    with open(os.environ['BENCH_OWN_CPU'], 'w') as out:\n"
           "        out.write(str(used.ru_utime + used.ru_stime))\n"
           "sys.exit(code)\n")
PUSH, PUSH_OFF, PLAIN = ("gitops-ansible push", "gitops-ansible push --preflight off",
                         "ansible-playbook")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3,
                        help="measured runs per side and size (default 3), after a warm-up")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="host counts, multiples of 3 (default 3,6,12)")
    parser.add_argument("--connections", choices=("kept", "fresh"), default="kept",
                        help="SSH masters kept for the whole benchmark (default), or opened "
                             "by every run")
    args = parser.parse_args()
    try:
        args.sizes = sorted({int(n) for n in args.sizes.split(",")})
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: host counts separated by commas, like 3,6,12")
    if any(n <= 0 or n % 3 for n in args.sizes):
        parser.error(f"--sizes {args.sizes}: each a positive multiple of 3")
    return args


def groups(size: int) -> dict[str, list[str]]:
    """The inventory groups of the first ``size`` hosts, three alike per step."""
    steps = range(1, size // 3 + 1)
    return {"web": [f"web-{n}" for k in steps for n in (2 * k - 1, 2 * k)],
            "db": [f"db-{k}" for k in steps],
            "hardened": [f"web-{2 * k - 1}" for k in steps]}


def host_names(size: int) -> list[str]:
    found = groups(size)
    return found["web"] + found["db"]


def build_checkout(checkout: Path, lab: HostLab, size: int) -> None:
    """The estate for ``size`` hosts: lab_inventory()'s variables, this size's hosts.yml."""
    for part in ("playbooks", "roles"):
        shutil.copytree(ROOT / part, checkout / part)
    shutil.copy(ROOT / "ansible.cfg", checkout / "ansible.cfg")
    lab_inventory(checkout, lab)
    found = groups(size)
    address = {name: {"ansible_host": lab.hosts[name].address} for name in host_names(size)}
    hosts = {"all": {"children": {"baremetal": {"children": {
        group: {"hosts": {n: address[n] for n in found[group]}} for group in ("web", "db")}},
        "hardened": {"hosts": {n: {} for n in found["hardened"]}}}}}
    (checkout / "inventories/lab/hosts.yml").write_text(
        "---\n" + yaml.safe_dump(hosts, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
           "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench: lab estate"]):
        subprocess.run(git + args, cwd=checkout, check=True)


def unchanged_recap(sample, hosts: list[str]):
    """ansible-playbook: every host in the recap, none changed, failed or unreachable."""
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                       sample.output, re.M)
    if sorted(h for h, *_ in recap) != sorted(hosts) or any(
            int(n) for _, *counts in recap for n in counts):
        sys.exit(f"ansible-playbook: not a no-op on {hosts}:\n{sample.output[-4000:]}")
    return sample


def commands_for(checkout: Path, state: Path) -> dict[str, list]:
    push = [VENV_BIN / "python", "-c", OWN_CPU, "push", "--env", "lab", "--path", checkout,
            *VAULT]
    return {PUSH: push + ["--state-dir", state / "push"],
            PLAIN: [VENV_BIN / "ansible-playbook", "-i", "inventories/lab", "playbooks/site.yml",
                    *VAULT],
            PUSH_OFF: push + ["--preflight", "off", "--state-dir", state / "push-off"]}


def measure_size(size: int, checkout: Path, state: Path, env: dict, repeat: int,
                 plain_masters: Path | None) -> dict:
    """One size: the first converge (not measured), then the sides interleaved;
    ansible-playbook's masters in ``plain_masters``, closed after each of its runs, if
    given."""
    commands, hosts = commands_for(checkout, state), host_names(size)
    plain_env = env | ({"ANSIBLE_SSH_CONTROL_PATH_DIR": str(plain_masters)} if plain_masters
                       else {})
    print(f"{size} hosts: first converge (not measured) ...", file=sys.stderr, flush=True)
    expect("first converge", measure(commands[PUSH], checkout, env), (0, 2), "hosts")

    def push(name):
        def run():
            sample = expect(name, measure(commands[name], checkout, env), (0,),
                            "nothing changed")
            own = Path(env["BENCH_OWN_CPU"])
            sample.own_cpu = float(own.read_text())
            own.unlink()
            return sample
        return run
    def plain():
        sample = expect(PLAIN, measure(commands[PLAIN], checkout, plain_env), (0,),
                        "PLAY RECAP")
        if plain_masters:
            close_masters(plain_masters)
        return unchanged_recap(sample, hosts)
    sides = {  # the reference in the middle: next to each push in every round
        PUSH: push(PUSH),
        PLAIN: plain,
        PUSH_OFF: push(PUSH_OFF)}
    return {"samples": alternate(sides, repeat), "commands": commands}


def cpu_figures(samples: dict, size: int, side: str) -> dict:
    """``side`` against ansible-playbook, round by round: the CPU ratio and the extra CPU
    (median and range over rounds)."""
    pairs = list(zip(samples[side], samples[PLAIN]))
    ratio = [a.cpu / b.cpu for a, b in pairs]
    extra = [a.cpu - b.cpu for a, b in pairs]
    own = [s.own_cpu for s in samples[side]]
    return {"own cpu s": statistics.median(own),
            "own / the rest of the tree": statistics.median(
                s.own_cpu / (s.cpu - s.own_cpu) for s in samples[side]),
            "cpu ratio (per-round median)": statistics.median(ratio),
            "cpu ratio min": min(ratio), "cpu ratio max": max(ratio),
            "extra cpu s": statistics.median(extra), "extra cpu s min": min(extra),
            "extra cpu s max": max(extra), "extra cpu s per host": statistics.median(extra) / size}


def line_fit(points: list[tuple[int, float]]) -> dict:
    """Least squares: extra CPU = fixed + per_host x hosts (needs two sizes or more)."""
    slope, fixed = statistics.linear_regression([n for n, _ in points], [y for _, y in points])
    return {"fixed s": fixed, "per host s": slope}


def main() -> None:
    args = parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"push_overhead: {reason}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="gatbench-push-") as tmp:
        tmp = Path(tmp)
        control_dir = tmp / "cp"
        control_dir.mkdir()
        env = dict(bench_env(tmp), BENCH_OWN_CPU=str(tmp / "own-cpu"))
        if args.connections == "kept":
            env.update(ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir), ANSIBLE_SSH_ARGS=(
                f"{ANSIBLE_SSH_ARGS} -o ControlPersist={MASTERS_PERSIST}"))
        print(f"SSH connections: {args.connections}", file=sys.stderr)
        try:
            with HostLab(tmp / "lab", host_names(max(args.sizes)), prefix="gatbench",
                         subnet="198.18.7") as lab:
                for size in args.sizes:
                    checkout = tmp / f"checkout-{size}"
                    build_checkout(checkout, lab, size)
                    results[size] = measure_size(
                        size, checkout, tmp / f"state-{size}", env, args.repeat,
                        control_dir if args.connections == "fresh" else None)
        finally:
            close_masters(control_dir)
    summary, name = {}, "push_overhead" + ("_fresh" if args.connections == "fresh" else "")
    for size, found in results.items():
        samples = found["samples"]
        rows = {name: summarize(s) for name, s in samples.items()}
        cpu = {side: cpu_figures(samples, size, side) for side in (PUSH, PUSH_OFF)}
        summary[size] = cpu
        print(f"\n== {size} hosts: {', '.join(host_names(size))}")
        report(f"{name}_{size}", rows, PUSH, PLAIN, f"<={GOAL}",
               lambda ratio: ratio <= GOAL,
               {side: [str(a) for a in argv] for side, argv in found["commands"].items()}
               | {"cwd": "the checkout", "hosts": host_names(size)},
               {f"{side} / {PLAIN}": figures for side, figures in cpu.items()})
    print("\n== extra controller CPU over ansible-playbook (median of rounds, s)")
    print(f"{'HOSTS':>5} {'PUSH/PLAIN CPU':>15} {'EXTRA':>7} {'PER HOST':>9} "
          f"{'--preflight off: RATIO':>23} {'EXTRA':>7} {'PER HOST':>9} {'PRE-FLIGHT':>11}")
    for size, cpu in summary.items():
        on, off = cpu[PUSH], cpu[PUSH_OFF]
        print(f"{size:>5} {on['cpu ratio (per-round median)']:>15.3f} {on['extra cpu s']:>7.2f} "
              f"{on['extra cpu s per host']:>9.3f} {off['cpu ratio (per-round median)']:>23.3f} "
              f"{off['extra cpu s']:>7.2f} {off['extra cpu s per host']:>9.3f} "
              f"{on['extra cpu s'] - off['extra cpu s']:>11.2f}")
    print("\n== the controller's own process (RUSAGE_SELF), within each push run")
    print(f"{'HOSTS':>5} {'OWN CPU s':>10} {'PER HOST':>9} {'OWN / REST OF TREE':>19} "
          f"{'--preflight off: OWN CPU s':>27} {'OWN / REST':>11}")
    for size, cpu in summary.items():
        on, off = cpu[PUSH], cpu[PUSH_OFF]
        print(f"{size:>5} {on['own cpu s']:>10.3f} {on['own cpu s'] / size:>9.3f} "
              f"{on['own / the rest of the tree']:>19.3f} {off['own cpu s']:>27.3f} "
              f"{off['own / the rest of the tree']:>11.3f}")
    if len(summary) > 1:
        for side in (PUSH, PUSH_OFF):
            for figure, label in (("extra cpu s", "extra CPU"), ("own cpu s", "own CPU")):
                fit = line_fit([(size, cpu[side][figure]) for size, cpu in summary.items()])
                print(f"line through the sizes, {side}: {label} = {fit['fixed s']:.2f} s + "
                      f"{fit['per host s']:.3f} s x hosts")
    met = all(cpu[PUSH]["cpu ratio (per-round median)"] <= CPU_GOAL for cpu in summary.values())
    print(f"RESULT name=push_overhead_cpu connections={args.connections} "
          f"sizes={','.join(map(str, summary))} "
          f"goal=cpu<={CPU_GOAL} met={'yes' if met else 'no'}")


if __name__ == "__main__":
    main()
