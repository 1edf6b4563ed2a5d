"""`make demo`: the built-in example (inventories/local) converged from a Git commit.

Starts 3 bare hosts (systemd in network namespaces, sshd as a service, 198.51.100.11-13), puts the project's
playbooks/, roles/ and inventories/ in a fresh Git repository, and drives the pull cycle
the way cron would, step by step: first converge, nothing to do, a one-template commit,
drift found by `plan` and healed by `run --force`, then `status` and `history`.
The hosts keep running afterwards (`make demo-down` stops them).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from .gitserver import WorkTree, git
from .hosts import HostLab

ROOT = Path(__file__).resolve().parents[1]
DEMO = Path("/var/tmp/gitops-ansible-demo")
HOSTS = ["demo-1", "demo-2", "demo-3"]


def banner(text: str) -> None:
    print(f"\n\033[1m=== {text}\033[0m", flush=True)


def gitops(*args: str, expect: int) -> None:
    command = [str(Path(sys.executable).parent / "gitops-ansible"), *args]
    print("$ gitops-ansible " + " ".join(args), flush=True)
    started = time.monotonic()
    code = subprocess.run(command).returncode
    print(f"(exit code {code}, {time.monotonic() - started:.1f}s)", flush=True)
    if code != expect:
        sys.exit(f"demo: expected exit code {expect}, got {code}")


def make_repository() -> WorkTree:
    bare, tree = DEMO / "estate.git", DEMO / "worktree"
    for path in (bare, tree, DEMO / "state"):
        shutil.rmtree(path, ignore_errors=True)
    git("init", "-q", "--bare", "-b", "main", str(bare))
    work = WorkTree(bare, tree)
    for part in ("playbooks", "roles", "inventories"):
        work.copy_tree(ROOT / part, part)
    shutil.copy(ROOT / "ansible.cfg", tree / "ansible.cfg")
    work.commit("the estate, as the project ships it")
    return work


def main() -> int:
    banner("starting 3 bare hosts (systemd in network namespaces, own root filesystems)")
    lab = HostLab(DEMO, HOSTS, prefix="gatdemo", subnet="198.51.100")
    lab.start()
    for host in lab.hosts.values():
        print(f"  {host.name}: {host.address}")
    tree = make_repository()
    config = DEMO / "config.toml"
    config.write_text(f'repo = "file://{DEMO}/estate.git"\nenv = "local"\n'
                      f'state_dir = "{DEMO}/state"\n'
                      'vault_password_file = "inventories/local/.vault-pass"\n')
    print(f"  settings in {config}:\n" + "".join(f"    {line}\n" for line in
                                                   config.read_text().splitlines()))
    cfg = ["--config", str(config)]

    banner("1. a pull cycle, as cron or a systemd timer runs it: the first converge")
    gitops("run", *cfg, expect=2)
    banner("2. the next cycle, with no new commit: nothing to do (exit code 3)")
    gitops("run", *cfg, expect=3)

    banner("3. a commit changes one template (motd.j2): only /etc/motd changes")
    motd = tree.path / "roles/host_files/templates/motd.j2"
    motd.write_text(motd.read_text() + "Changed by the demo's second commit.\n")
    tree.commit("motd: one more line")
    gitops("run", *cfg, expect=2)

    banner("4. someone edits demo-2 by hand; `plan` shows the drift, `run --force` heals it")
    (lab.hosts["demo-2"].root / "etc/motd").write_text("edited by hand\n")
    gitops("plan", *cfg, expect=2)
    gitops("run", *cfg, "--force", expect=2)

    banner("5. status and history")
    gitops("status", *cfg, expect=0)
    gitops("history", *cfg, expect=0)

    print(f"\nThe hosts keep running: ssh -i {lab.key} -o UserKnownHostsFile={lab.known_hosts} "
          f"root@{lab.hosts['demo-1'].address}\nStop them with: make demo-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
