"""pytest fixtures for the lab; a conftest imports them (which registers them):

    from lab.fixtures import host_lab, kube_assets, kube_cluster, lab_rootfs, vm_lab

lab_rootfs   (session) Path of the cached debootstrap rootfs (built on first use, ~1 min)
host_lab     (session) a started HostLab: hosts web-1, web-2, db-1 (SUBNET.11-13), each
             booted with systemd (sshd, journald as services), working directory under
             pytest's tmp dir; stopped at the session's end. Tests that stop, reset or rekey
             a host put it back as they found it.
vm_lab       (session) a started VmLab (libvirtd, the cached guest image, a client key)
kube_assets  (session) the Kubernetes binaries (cached; built on first use)
kube_cluster (session) a started KubeCluster "lab"
node_lab     (session) a started NodeLab: execution nodes node-1, node-2 (the controller's
             ansible-core and ansible-runner), node-other (another runner), target-1, -2

Each pytest-xdist worker (PYTEST_XDIST_WORKER=gw0, gw1, ...) is a session of its own and
gets a lab of its own: host lab prefix gattestN and subnet 198.18.(20+N), VM domains
gatlabN-*; without xdist gattest, 198.18.0 and gatlab-*. Git servers, clusters and VMs
take free ports, and every working directory is under the worker's own tmp dir.

Without the prerequisites (root, namespaces, ip, systemd-nspawn, debootstrap when nothing is
cached) the fixtures skip with the reason, except under CI=true, where a missing prerequisite
fails.
"""

from __future__ import annotations

import os

import pytest

from .hosts import HostLab, unavailable_reason
from .rootfs import ensure_rootfs

LAB_HOSTS = ["web-1", "web-2", "db-1"]


def worker() -> int | None:
    """This xdist worker's number (gw3 -> 3), None outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") else None


def host_lab_names() -> tuple[str, str]:
    """(prefix, subnet) of this session's host lab. 198.18.1-19 stay free for the labs that
    tests and benchmarks start with names of their own (test_lab's CLI lab 198.18.1,
    bench/push_overhead 198.18.7, bench/scoped_run 198.18.8, molecule 198.18.9 and
    198.18.10, test_scope 198.18.12, test_lab's failing boot 198.18.14)."""
    n = worker()
    return ("gattest", "198.18.0") if n is None else (f"gattest{n}", f"198.18.{20 + n}")


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, except under CI=true, where it is a failure."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"prerequisite missing under CI=true: {reason}", pytrace=False)
        pytest.skip(reason)


def _require_lab(reason: str | None, what: str) -> None:
    require(reason is None, f"the {what} cannot run: {reason}")


@pytest.fixture(scope="session")
def lab_rootfs():
    _require_lab(unavailable_reason(), "host lab")
    return ensure_rootfs()


@pytest.fixture(scope="session")
def host_lab(lab_rootfs, tmp_path_factory):
    prefix, subnet = host_lab_names()
    lab = HostLab(tmp_path_factory.mktemp("host-lab"), LAB_HOSTS, prefix=prefix, subnet=subnet,
                  rootfs=lab_rootfs)
    with lab:
        yield lab


# ---- VM lab (libvirt + qemu TCG guests; see libvirt.py and guest.py) ------------------
@pytest.fixture(scope="session")
def vm_lab(tmp_path_factory):
    """(session) a started VmLab: libvirtd running, guest image cached (built on first use,
    2-7 min), client key pair, domain prefix gatlab- (gatlabN- in xdist worker N); every
    domain with the prefix is destroyed and undefined at the start (leftovers of a crashed
    run) and at the end of the session."""
    from .libvirt import VmLab, unavailable_reason as vm_unavailable_reason

    _require_lab(vm_unavailable_reason(), "VM lab")
    n = worker()
    prefix = "gatlab-" if n is None else f"gatlab{n}-"
    with VmLab(tmp_path_factory.mktemp("vm-lab"), prefix=prefix) as lab:
        yield lab


# ---- Kubernetes lab (etcd + kube-apiserver + controllers + kwok; see kube.py) -------------
@pytest.fixture(scope="session")
def kube_assets():
    """(session) KubeAssets: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
    kwok, from KUBEBUILDER_ASSETS or the per-machine cache (built from the Go module proxy on
    first use, 5-37 min on 2 cores; `make test` starts that build in the background, and
    this fixture then waits for it through the build's lock)."""
    from .kube import ensure_assets, unavailable_reason as kube_unavailable_reason

    _require_lab(kube_unavailable_reason(), "Kubernetes lab")
    return ensure_assets()


@pytest.fixture(scope="session")
def helm():
    """(session) Path of the lab's helm (kube.py: built from the Go module proxy and cached,
    after the Kubernetes binaries; this fixture waits for that build through its lock)."""
    from .kube import ensure_helm, helm_unavailable_reason

    _require_lab(helm_unavailable_reason(), "helm of the lab")
    return ensure_helm()


@pytest.fixture(scope="session")
def kube_cluster(kube_assets, tmp_path_factory):
    """(session) a started KubeCluster "lab": kubeconfig context "lab", one kwok node
    lab-node-1 on which pods become Running and Ready; stopped at the session's end. Tests
    use namespaces of their own and delete them. A second cluster for multi-cluster tests:
    KubeCluster(tmp_path_factory.mktemp(...), "other", assets=kube_assets)."""
    from .kube import KubeCluster

    with KubeCluster(tmp_path_factory.mktemp("kube-lab"), "lab", assets=kube_assets) as cluster:
        yield cluster


# ---- execution nodes (lab hosts with a Python, ansible-core and ansible-runner; nodes.py) --
NODE_LAB_TARGETS = ["target-1", "target-2"]


def node_lab_names() -> tuple[str, str]:
    """(prefix, subnet) of this session's node lab: gatnode and 198.18.13; in xdist worker N
    gatnodeN and 198.18.(40+N) (host_lab takes 198.18.(20+N))."""
    n = worker()
    return ("gatnode", "198.18.13") if n is None else (f"gatnode{n}", f"198.18.{40 + n}")


@pytest.fixture(scope="session")
def node_lab(lab_rootfs, tmp_path_factory):
    """(session) a started NodeLab: execution nodes node-1 and node-2 (SUBNET.11-12) with the
    controller's Python, ansible-core and ansible-runner at /opt/gitops-node (on the SSH
    PATH), node-other (.13) with another ansible-runner (a node to refuse), and the plain
    hosts target-1 and target-2 (.14-15); the runtimes are cached (built on first use,
    ~10 s each with PyPI reachable). Tests that change a host put it back as they found
    it (reset_host)."""
    from .nodes import NodeLab, ensure_node_runtime, other_runner_version

    runtime = ensure_node_runtime()
    other = ensure_node_runtime(ansible_runner=other_runner_version(runtime.ansible_runner))
    prefix, subnet = node_lab_names()
    nodes = {"node-1": runtime, "node-2": runtime, "node-other": other}
    with NodeLab(tmp_path_factory.mktemp("node-lab"), nodes, NODE_LAB_TARGETS, prefix=prefix,
                 subnet=subnet, rootfs=lab_rootfs) as lab:
        yield lab
