"""A one-role change converged with change-scoped runs against full runs: 20 bare hosts,
10 roles, a commit to one role that 2 hosts apply (issue 15, deliverable 6).

    cd /work/main && .venv/bin/python bench/scoped_run.py [--repeat N]

Needs root: 20 SSH hosts from the host lab (lab/, prefix gatscope2, subnet 198.18.8),
node-01 .. node-20, all `platform: baremetal`. The bench's own repository holds the
project's ansible.cfg, a site.yml of the project's classification play and one import,
baremetal.yml, and 10 roles: role K writes /etc/gatscope/roleK.conf (a template) and
/etc/gatscope/roleK.marker, and is applied by a play on `platform_baremetal:&roleK`, the
inventory group of node-(2K+1) and node-(2K+2). Both sides pull that one repository over
file://, each with a state directory of its own, and start in an empty directory:

    gitops-ansible run --repo file://REPO --env lab --json --scope auto --state-dir S1
    gitops-ansible run --repo file://REPO --env lab --json --scope full --state-dir S2

Each side converges the first revision once, unmeasured (an unknown base: a full run).
Then every round commits a new line to role3's template (roles/role3/templates/role.conf.j2,
applied to node-07 and node-08), and both sides converge that revision, interleaved (the
order flips every round). Both start from every target at the previous revision: before the
round's second side, the files the first side changed on the hosts are put back as they were
(unmeasured), so both sides change the same 2 files on the same 2 hosts. A side fails the
bench unless its cycle_result says it: `--scope auto` a scope of exactly node-07 and node-08
(no full reason), those 2 hosts converged and changed; `--scope full` a full reason, all 20
converged, those 2 changed and the 18 others ok; and node-07 and node-08 hold the new line.

Every side shares one SSH ControlPersist directory under the temporary directory; its master
connections are closed at the end. CPU is user+sys of the command's whole process tree as
wait4() reports it (common.measure): the controller, ansible-playbook, its forks and their ssh
clients (not the ControlPersist masters, which detach).
Goal (issue 15): full / scoped >= 5, in wall time (per-round median, see common.ratios) and in
controller CPU (per-round median of the CPU ratio).
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import (ROOT, VENV_BIN, alternate, bench_env, close_masters, expect, measure,
                    parse_args, report, summarize)

sys.path.insert(0, str(ROOT))
from lab.hosts import HostLab, unavailable_reason  # noqa: E402

GOAL = 5.0
HOSTS = [f"node-{n:02d}" for n in range(1, 21)]
ROLES = [f"role{k}" for k in range(10)]
CHANGED_ROLE = "role3"
MANAGED = "etc/gatscope"  # under each host's root: the files the roles write
SCOPED, FULL = "gitops-ansible run --scope auto", "gitops-ansible run --scope full"
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
       "-c", "commit.gpgsign=false"]
TEMPLATE = "# {role}, managed by gitops-ansible\nhost = {{{{ inventory_hostname }}}}\n"


def role_hosts(role: str) -> list[str]:
    """The 2 hosts of a role's group: role K -> node-(2K+1), node-(2K+2)."""
    k = ROLES.index(role)
    return HOSTS[2 * k:2 * k + 2]


def git(repo: Path, *args: str) -> None:
    subprocess.run(GIT + list(args), cwd=repo, check=True, capture_output=True)


def write_role(repo: Path, role: str) -> None:
    """A cheap role in the manner of host_files: a directory, a template, a copied file."""
    base = repo / "roles" / role
    (base / "templates").mkdir(parents=True)
    (base / "templates/role.conf.j2").write_text(TEMPLATE.format(role=role))
    tasks = [
        {"name": "Ensure the directory of the managed files",
         "ansible.builtin.file": {"path": f"/{MANAGED}", "state": "directory", "mode": "0755"}},
        {"name": "Render the configuration",
         "ansible.builtin.template": {"src": "role.conf.j2", "dest": f"/{MANAGED}/{role}.conf",
                                      "mode": "0644"}},
        {"name": "Write the marker",
         "ansible.builtin.copy": {"content": f"{role} on {{{{ inventory_hostname }}}}\n",
                                  "dest": f"/{MANAGED}/{role}.marker", "mode": "0644"}}]
    (base / "tasks").mkdir()
    (base / "tasks/main.yml").write_text("---\n" + yaml.safe_dump(tasks, sort_keys=False))


def write_playbooks(repo: Path) -> None:
    """site.yml: the project's classification play and the baremetal import; baremetal.yml:
    one play per role, on the role's group within the platform."""
    classify = yaml.safe_load((ROOT / "playbooks/site.yml").read_text())[0]
    site = [classify, {"name": "Bare-metal hosts",
                       "ansible.builtin.import_playbook": "baremetal.yml"}]
    plays = [{"name": f"Apply {role}", "hosts": f"platform_baremetal:&{role}",
              "gather_facts": False, "roles": [{"role": role}]} for role in ROLES]
    (repo / "playbooks").mkdir()
    for name, content in (("site.yml", site), ("baremetal.yml", plays)):
        (repo / "playbooks" / name).write_text("---\n" + yaml.safe_dump(content, sort_keys=False))


def write_inventory(repo: Path, lab: HostLab) -> None:
    """inventories/lab: the 20 hosts in baremetal, 2 of them in each group roleK."""
    inv = repo / "inventories/lab"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "group_vars/all.yml").write_text("---\ngitops_environment: lab\n")
    (inv / "group_vars/baremetal.yml").write_text("---\n" + yaml.safe_dump(
        {"platform": "baremetal", **lab.inventory_vars()}, sort_keys=False))
    groups = {"baremetal": {"hosts": {h: {"ansible_host": lab.hosts[h].address} for h in HOSTS}}}
    groups |= {role: {"hosts": {h: {} for h in role_hosts(role)}} for role in ROLES}
    (inv / "hosts.yml").write_text("---\n" + yaml.safe_dump({"all": {"children": groups}},
                                                            sort_keys=False))


def build_repo(repo: Path, lab: HostLab) -> None:
    repo.mkdir()
    shutil.copy(ROOT / "ansible.cfg", repo / "ansible.cfg")
    write_playbooks(repo)
    for role in ROLES:
        write_role(repo, role)
    write_inventory(repo, lab)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench: 20 hosts, 10 roles"]):
        git(repo, *args)


class Rounds:
    """What happens around each side's run. The first side of a round commits a new line to
    the changed role's template and keeps a copy of every host's managed files; the second
    puts those files back, so that it too starts from every target at the previous revision."""

    def __init__(self, repo: Path, lab: HostLab, saved: Path):
        self.repo, self.lab, self.saved = repo, lab, saved
        self.calls = 0
        self.line = ""

    def prepare(self) -> None:
        if self.calls % 2 == 0:
            self._commit()
            self._save()
        else:
            self._restore()
        self.calls += 1

    def _commit(self) -> None:
        self.line = f"tuned = round {self.calls // 2}"
        template = self.repo / "roles" / CHANGED_ROLE / "templates/role.conf.j2"
        template.write_text(TEMPLATE.format(role=CHANGED_ROLE) + self.line + "\n")
        git(self.repo, "commit", "-q", "-am", f"{CHANGED_ROLE}: {self.line}")

    def _save(self) -> None:
        shutil.rmtree(self.saved, ignore_errors=True)
        for host in HOSTS:
            shutil.copytree(self.lab.hosts[host].root / MANAGED, self.saved / host)

    def _restore(self) -> None:
        """Put back the files that differ from the copy (contents, mode and times)."""
        for host in HOSTS:
            for kept in (self.saved / host).iterdir():
                live = self.lab.hosts[host].root / MANAGED / kept.name
                if live.read_bytes() != kept.read_bytes():
                    shutil.copy2(kept, live)

    def check_hosts(self, label: str) -> None:
        """The hosts of the changed role hold the round's line."""
        for host in role_hosts(CHANGED_ROLE):
            conf = self.lab.hosts[host].root / MANAGED / f"{CHANGED_ROLE}.conf"
            if self.line not in conf.read_text():
                sys.exit(f"{label}: {host}:/{MANAGED}/{CHANGED_ROLE}.conf lacks {self.line!r}")


def cycle_result(label: str, output: str) -> dict:
    for line in output.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "cycle_result":
                return event
    sys.exit(f"{label}: no cycle_result event in its output:\n{output[-4000:]}")


def check_scope(label: str, result: dict, full: bool) -> None:
    """The side converged what it is measured converging: its scope, its hosts' outcomes."""
    scope, outcomes = result.get("scope") or {}, result["hosts"]
    changed = sorted(role_hosts(CHANGED_ROLE))
    expected = ({h: "changed" if h in changed else "ok" for h in HOSTS} if full
                else dict.fromkeys(changed, "changed"))
    problems = []
    if full != bool(scope.get("full")):
        problems.append(f"scope.full is {scope.get('full')!r}")
    if not full and sorted(scope.get("hosts") or {}) != changed:
        problems.append(f"scope.hosts is {scope.get('hosts')!r}, not {changed}")
    if outcomes != expected:
        problems.append(f"hosts is {outcomes!r}, not {expected!r}")
    if problems:
        sys.exit(f"{label}: " + "; ".join(problems) + f"\ncycle_result: {json.dumps(result)}")


def side(label: str, argv: list, cwd: Path, env: dict, rounds: Rounds, full: bool):
    def run():
        rounds.prepare()
        sample = expect(label, measure(argv, cwd, env), (2,), "cycle_result")
        check_scope(label, cycle_result(label, sample.output), full)
        rounds.check_hosts(label)
        return sample
    return run


def cpu_ratios(samples: dict) -> dict:
    """full / scoped CPU, round by round (the two ran back to back)."""
    found = [f.cpu / s.cpu for f, s in zip(samples[FULL], samples[SCOPED], strict=True)]
    return {"per-round median": statistics.median(found), "min": min(found), "max": max(found)}


def main() -> None:
    args = parse_args(3, __doc__)
    reason = unavailable_reason()
    if reason:
        sys.exit(f"scoped_run: {reason}")
    with tempfile.TemporaryDirectory(prefix="gatbench-scope-") as tmp_name:
        tmp = Path(tmp_name)
        repo, cwd, control_dir = tmp / "repo", tmp / "cwd", tmp / "cp"
        cwd.mkdir()
        control_dir.mkdir()
        env = dict(bench_env(tmp), ANSIBLE_SSH_CONTROL_PATH_DIR=str(control_dir))
        run = [VENV_BIN / "gitops-ansible", "run", "--repo", f"file://{repo}", "--env", "lab",
               "--json"]
        commands = {SCOPED: run + ["--scope", "auto", "--state-dir", tmp / "state-auto"],
                    FULL: run + ["--scope", "full", "--state-dir", tmp / "state-full"]}
        try:
            with HostLab(tmp / "lab", HOSTS, prefix="gatscope2", subnet="198.18.8") as lab:
                build_repo(repo, lab)
                for name, argv in commands.items():
                    print(f"{name}: first converge (not measured) ...", file=sys.stderr,
                          flush=True)
                    expect(name, measure(argv, cwd, env), (0, 2), '"cycle_result"')
                rounds = Rounds(repo, lab, tmp / "saved")
                samples = alternate({name: side(name, argv, cwd, env, rounds, name == FULL)
                                     for name, argv in commands.items()}, args.repeat)
        finally:
            close_masters(control_dir)
    rows = {name: summarize(s) for name, s in samples.items()}
    cpu = cpu_ratios(samples)
    report("scoped_run", rows, FULL, SCOPED, f">={GOAL}", lambda ratio: ratio >= GOAL,
           {name: [str(a) for a in argv] for name, argv in commands.items()}
           | {"cwd": "an empty temporary directory", "hosts": HOSTS,
              "changed": f"roles/{CHANGED_ROLE}/templates/role.conf.j2 "
                         f"(applied to {', '.join(role_hosts(CHANGED_ROLE))})"},
           {f"cpu {FULL} / {SCOPED}": cpu})
    print(f"RESULT name=scoped_run_cpu ratio={cpu['per-round median']:.3f} goal=>={GOAL} "
          f"met={'yes' if cpu['per-round median'] >= GOAL else 'no'}")


if __name__ == "__main__":
    main()
