"""Execution nodes for tests: lab hosts (hosts.py) that carry a runtime of their own, the
controller's Python with an ansible-core and an ansible-runner, as the execution nodes of
central runs do (a controller streams jobs to them: transmit | ssh node worker | process).

    runtime = ensure_node_runtime()                      # the controller's versions, cached
    other = ensure_node_runtime(ansible_runner="2.4.2")  # a node at another version
    lab = NodeLab(workdir, {"node-1": runtime, "node-2": other}, ["target-1"],
                  prefix="gatnode", subnet="198.18.13")
    with lab:                                            # a HostLab: start() ... stop()
        lab.ssh_argv("node-1") + ["ansible-runner worker --worker-info"]

A runtime is an overlay layer, CACHE/node-py3.13.0-core2.21.5-runner2.4.3-v1 (cache.py:
built once per machine under a lock, a no-op when cached), that NodeLab puts above the
rootfs of each node it is given to, so every node sees it read-only at no copying cost and
a reset_host keeps it. In the layer:
- NODE_PREFIX (/opt/gitops-node): a copy of the controller's base interpreter (a pyenv
  build of 3.13: the hosts' Debian Python 3.11 is too old for ansible-core 2.20+; the
  machine and the rootfs are both Debian 12, so the copy finds its C libraries there),
  without its test suite, static library, Tk and site-packages, with the exact ansible-core
  and ansible-runner pinned from PyPI installed into it (no virtualenv: one tree, one
  interpreter);
- usr/local/bin/ansible*: symlinks to NODE_PREFIX/bin, because the worker starts the
  `ansible-playbook` it finds on PATH, and sshd's non-interactive PATH is
  /usr/local/bin:/usr/bin:/bin (else rc 127). The node's own python3 stays Debian's.
The nodes' sshd, ssh client and ssh-agent are the rootfs's (ansible-runner's env/ssh_key
goes through ssh-agent on the node).
"""

from __future__ import annotations

import platform
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

from .cache import build_once, cache_root
from .hosts import HostLab

NODE_PREFIX = Path("/opt/gitops-node")
RECIPE = "v1"  # bump when the build below changes
# Parts of the interpreter's tree a node never uses (about 225 of its 320 MB).
UNUSED = {"test", "idlelib", "tkinter", "turtledemo", "site-packages"}
UNUSED_PREFIXES = ("config-", "_tkinter")  # the static libpython; Tk's extension module
# `sh -c AT_NODE_PREFIX sh SRC DEST ARGV...` runs ARGV with SRC mounted on DEST, in a mount
# namespace of its own: pip then installs into the tree at the path where the nodes run it
# (script shebangs, .pyc source paths).
AT_NODE_PREFIX = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'


@dataclass(frozen=True)
class NodeRuntime:
    layer: Path  # the overlay layer: NODE_PREFIX and usr/local/bin inside
    python: str
    ansible_core: str
    ansible_runner: str

    @property
    def runner(self) -> Path:
        """The ansible-runner a node runs (also on its PATH)."""
        return NODE_PREFIX / "bin/ansible-runner"


def controller_versions() -> dict[str, str]:
    """The Python, ansible-core and ansible-runner of the interpreter running this code."""
    return {"python": platform.python_version(),
            "ansible_core": metadata.version("ansible-core"),
            "ansible_runner": metadata.version("ansible-runner")}


def other_runner_version(version: str) -> str:
    """An installable ansible-runner other than VERSION, for a node to be refused."""
    return "2.4.2" if version != "2.4.2" else "2.4.3"


def ensure_node_runtime(ansible_core: str | None = None, ansible_runner: str | None = None,
                        cache_dir=None) -> NodeRuntime:
    """The runtime with this ansible-core and ansible-runner (default: the controller's) on
    the controller's Python, building it first if this machine has none yet (~10 s here)."""
    versions = controller_versions()
    core = ansible_core or versions["ansible_core"]
    runner = ansible_runner or versions["ansible_runner"]
    key = f"node-py{versions['python']}-core{core}-runner{runner}-{RECIPE}"
    pins = [f"ansible-core=={core}", f"ansible-runner=={runner}"]
    layer = build_once(cache_root(cache_dir), key, Path.is_dir, partial(_build, pins=pins))
    return NodeRuntime(layer, versions["python"], core, runner)


def _build(layer: Path, run, pins: list[str]) -> None:
    prefix = layer / NODE_PREFIX.relative_to("/")
    shutil.copytree(sys.base_prefix, prefix, symlinks=True, ignore=_unused)
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    _relocate(prefix / "bin" / python, sys.base_prefix)
    at_prefix = ["unshare", "--mount", "sh", "-c", AT_NODE_PREFIX, "sh",
                 str(prefix.parent), str(NODE_PREFIX.parent)]
    node_python = str(NODE_PREFIX / "bin" / python)
    run(*at_prefix, node_python, "-m", "ensurepip")
    run(*at_prefix, node_python, "-m", "pip", "install", "--no-input",
        "--no-warn-script-location", "--root-user-action=ignore", *pins)
    run(*at_prefix, str(NODE_PREFIX / "bin/ansible-runner"), "--version")
    local_bin = layer / "usr/local/bin"
    local_bin.mkdir(parents=True)
    for script in sorted((prefix / "bin").glob("ansible*")):
        (local_bin / script.name).symlink_to(NODE_PREFIX / "bin" / script.name)


def _unused(directory: str, names: list[str]) -> set[str]:
    stdlib = Path(sysconfig.get_path("stdlib"))
    if Path(directory) not in (stdlib, stdlib / "lib-dynload"):
        return set()
    return {n for n in names if n in UNUSED or n.startswith(UNUSED_PREFIXES)}


def _relocate(python: Path, old_prefix: str) -> None:
    """pyenv links the interpreter to its libpython through an absolute RUNPATH (its own
    lib directory), which the nodes do not have: point it at $ORIGIN/../lib instead,
    rewriting the string in place (NUL-padded: the ELF layout does not move)."""
    old = f"{old_prefix}/lib\0".encode()
    data = python.read_bytes()
    if old not in data:
        return  # a static interpreter, or one already relative to itself
    new = b"$ORIGIN/../lib\0"
    if len(new) > len(old) or data.count(old) != 1:
        raise RuntimeError(f"{python}: cannot rewrite its RUNPATH {old_prefix}/lib")
    python.write_bytes(data.replace(old, new.ljust(len(old), b"\0")))


class NodeLab(HostLab):
    """A HostLab whose NODES ({name: NodeRuntime}) carry their runtime and whose TARGETS are
    plain lab hosts; the nodes come first (addresses SUBNET.11, .12, ...)."""

    def __init__(self, workdir, nodes: dict[str, NodeRuntime], targets, **kwargs):
        super().__init__(workdir, [*nodes, *targets],
                         layers={name: [rt.layer] for name, rt in nodes.items()}, **kwargs)
        self.nodes, self.targets = dict(nodes), list(targets)

    def ssh_argv(self, name: str) -> list[str]:
        """ssh to host NAME as root, without a terminal (the worker's stream is binary),
        checked against the lab's known_hosts; append the remote command."""
        host = self.hosts[name]
        return ["ssh", "-T", "-i", str(self.key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
                "-o", "ServerAliveInterval=15", "-p", str(host.port), f"root@{host.address}"]
