"""The overhead of a converge through gitops-ansible push against plain ansible-playbook.

    cd /work/main && .venv/bin/python bench/push_overhead.py [--repeat N]

Needs root: 3 SSH hosts (web-1, web-2, db-1) from the host lab (lab/, prefix gatbench,
subnet 198.18.7). The checkout holds the project's playbooks/, roles/, ansible.cfg and
inventories/lab built by lab_inventory() of tests/integration/test_baremetal.py, committed
to git. It is converged once, unmeasured; then every run is a no-op on converged hosts,
the sides interleaved, all started in the checkout:

    gitops-ansible push --env lab --path CHECKOUT --vault-password-file V --state-dir S1
    gitops-ansible push ... --preflight off --state-dir S2      (the cost of the pre-flight)
    ansible-playbook -i inventories/lab playbooks/site.yml --vault-password-file V

V = inventories/lab/.vault-pass. Every side shares one SSH ControlPersist directory under
the temporary directory; its master connections are closed at the end.
Goal: ratio (gitops-ansible push with the default pre-flight / ansible-playbook; per-round
median, see common.ratios) <= 1.05.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, VENV_BIN, alternate, bench_env, expect, measure, parse_args, ratios, \
    report, summarize

sys.path.insert(0, str(ROOT))
from lab.hosts import HostLab, unavailable_reason  # noqa: E402
from tests.integration.test_baremetal import VAULT, lab_inventory  # noqa: E402

GOAL = 1.05
HOSTS = ["web-1", "web-2", "db-1"]
PUSH, PUSH_OFF, PLAIN = ("gitops-ansible push", "gitops-ansible push --preflight off",
                         "ansible-playbook")


def build_checkout(checkout: Path, lab: HostLab) -> None:
    for part in ("playbooks", "roles"):
        shutil.copytree(ROOT / part, checkout / part)
    shutil.copy(ROOT / "ansible.cfg", checkout / "ansible.cfg")
    lab_inventory(checkout, lab)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
           "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench: lab estate"]):
        subprocess.run(git + args, cwd=checkout, check=True)


def unchanged_recap(sample):
    """ansible-playbook: every host in the recap, none changed, failed or unreachable."""
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                       sample.output, re.M)
    if sorted(h for h, *_ in recap) != sorted(HOSTS) or any(
            int(n) for _, *counts in recap for n in counts):
        sys.exit(f"ansible-playbook: not a no-op on {HOSTS}:\n{sample.output[-4000:]}")
    return sample


def close_masters(control_dir: Path) -> None:
    """Stop the SSH ControlPersist masters the runs left behind (ours, by their sockets)."""
    for sock in control_dir.glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
                       capture_output=True, timeout=10)


def main() -> None:
    args = parse_args(5, __doc__)
    reason = unavailable_reason()
    if reason:
        sys.exit(f"push_overhead: {reason}")
    with tempfile.TemporaryDirectory(prefix="gatbench-push-") as tmp:
        tmp = Path(tmp)
        control_dir = tmp / "cp"
        control_dir.mkdir()
        env = dict(bench_env(tmp), ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir))
        checkout = tmp / "checkout"
        try:
            with HostLab(tmp / "lab", HOSTS, prefix="gatbench", subnet="198.18.7") as lab:
                build_checkout(checkout, lab)
                push = [VENV_BIN / "gitops-ansible", "push", "--env", "lab", "--path", checkout,
                        *VAULT]
                commands = {PUSH: push + ["--state-dir", tmp / "state-push"],
                            PUSH_OFF: push + ["--preflight", "off",
                                              "--state-dir", tmp / "state-push-off"],
                            PLAIN: [VENV_BIN / "ansible-playbook", "-i", "inventories/lab",
                                    "playbooks/site.yml", *VAULT]}
                print("first converge (not measured) ...", file=sys.stderr, flush=True)
                expect("first converge", measure(commands[PUSH], checkout, env), (2,),
                       "changed")
                sides = {  # the reference in the middle: next to each push in every round
                    PUSH: lambda: expect(PUSH, measure(commands[PUSH], checkout, env), (0,),
                                         "nothing changed"),
                    PLAIN: lambda: unchanged_recap(expect(
                        PLAIN, measure(commands[PLAIN], checkout, env), (0,), "PLAY RECAP")),
                    PUSH_OFF: lambda: expect(PUSH_OFF, measure(commands[PUSH_OFF], checkout, env),
                                             (0,), "nothing changed"),
                }
                samples = alternate(sides, args.repeat)
        finally:
            close_masters(control_dir)
    rows = {name: summarize(s) for name, s in samples.items()}
    report("push_overhead", rows, PUSH, PLAIN, f"<={GOAL}", lambda ratio: ratio <= GOAL,
           {name: [str(a) for a in argv] for name, argv in commands.items()}
           | {"cwd": "the checkout", "hosts": HOSTS},
           {f"ratio {PUSH_OFF} / {PLAIN}": ratios(rows, PUSH_OFF, PLAIN),
            f"ratio {PUSH} / {PUSH_OFF} (the pre-flight)": ratios(rows, PUSH, PUSH_OFF)})


if __name__ == "__main__":
    main()
