"""Shared fixtures: settings, the CLI as a real process, Git servers, the host lab."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gitops_ansible import config
from lab.fixtures import (helm, host_lab, kube_assets, kube_cluster, lab_rootfs,  # noqa: F401
                          node_lab, require, vm_lab)  # (the lab's fixtures, for every test)
from lab.gitserver import GitServers, WorkTree

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "cases"


def pytest_collection_modifyitems(items) -> None:
    """The longest modules first. `make test` runs the suite on pytest-xdist workers one
    module at a time (--dist loadfile, in this order): the modules that boot VMs start at
    once while the other workers run the rest; the Kubernetes modules come last, because
    on a fresh machine their binaries are still being built in the background until then."""
    def rank(item) -> int:
        marks = {mark.name for mark in item.iter_markers()}
        return 0 if "vm" in marks else 2 if "kubernetes" in marks else 1

    module_rank: dict[str, int] = {}
    for item in items:
        module_rank[item.path] = min(rank(item), module_rank.get(item.path, rank(item)))
    items.sort(key=lambda item: module_rank[item.path])


def events(done) -> list[dict]:
    """The JSON lines of a `--json` run."""
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def roles_by_host(done) -> dict[str, set]:
    """{host: roles of its tasks that did not skip} in a `--json` run (None: play tasks)."""
    roles: dict[str, set] = {}
    for e in events(done):
        if e["event"] == "task_result" and e["status"] != "skipped":
            roles.setdefault(e["host"], set()).add(e["role"])
    return roles


def make_settings(**values) -> config.Settings:
    return config.load(values, environ={})


@pytest.fixture
def settings_for(tmp_path):
    def build(**values):
        values.setdefault("state_dir", str(tmp_path / "state"))
        return make_settings(**values)
    return build


NO_STATE = ("install-timer", "install-service", "sync", "init")


class Cli:
    """gitops-ansible as a user runs it: a separate process, exit code and output."""

    def __init__(self, state_dir: Path, env: dict | None = None):
        self.state_dir = state_dir
        self.env = dict(os.environ, **(env or {}))

    def __call__(self, *args, timeout: float = 600, check_code: int | None = None,
                 **popen) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "gitops_ansible", *[str(a) for a in args]]
        if args and args[0] not in NO_STATE and "--state-dir" not in args:
            argv += ["--state-dir", str(self.state_dir)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=popen.get("cwd"))
        if check_code is not None and done.returncode != check_code:
            raise AssertionError(f"exit {done.returncode} != {check_code}\n"
                                 f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        argv = [sys.executable, "-m", "gitops_ansible", *[str(a) for a in args],
                "--state-dir", str(self.state_dir)]
        return subprocess.Popen(argv, env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **kwargs)


@pytest.fixture
def cli(tmp_path):
    return Cli(tmp_path / "state")


@pytest.fixture(scope="session")
def git_servers(tmp_path_factory):
    require(shutil.which("git") is not None, "git is not installed")
    ssh_ok = shutil.which("sshd") is not None and os.geteuid() == 0
    require(ssh_ok, "sshd and root are needed for the SSH Git server")
    servers = GitServers(tmp_path_factory.mktemp("git"))
    servers.start()
    yield servers
    servers.stop()


def copy_base(dest: Path) -> Path:
    shutil.copytree(CASES / "base", dest, dirs_exist_ok=True)
    return dest


def local_estate(git_servers, tmp_path: Path, name: str, **group_vars):
    """A served repository holding the base example with two `local` targets, alpha and
    beta, that write their greeting into ``tree.out``."""
    name = name.replace("[", "-").replace("]", "")
    bare = git_servers.create(name)
    tree = WorkTree(bare, tmp_path / "worktree")
    copy_base(tree.path)
    out = tmp_path / "out"
    out.mkdir()
    tree.write("inventories/dev/hosts.yml", "---\nall:\n  children:\n    controllers:\n"
               "      hosts:\n        alpha:\n        beta:\n")
    extra = "".join(f"{key}: {value}\n" for key, value in group_vars.items())
    tree.write("inventories/dev/group_vars/controllers.yml",
               f"---\nplatform: local\nansible_connection: local\ngreet_dir: {out}\n{extra}")
    (tree.path / "inventories/dev/group_vars/web.yml").unlink()
    tree.revision = tree.commit("estate: two local targets")
    tree.name, tree.out = name, out
    return tree
