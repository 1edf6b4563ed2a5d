"""pytest fixtures for the lab; a conftest loads them as a plugin:

    pytest_plugins = ["lab.fixtures"]

lab_rootfs  (session) Path of the cached debootstrap rootfs (built on first use, ~1 min)
host_lab    (session) a started HostLab: hosts web-1, web-2, db-1 (198.18.0.11-13), prefix
            gattest, working directory under pytest's tmp dir; stopped at the session's end.
            Tests that stop, reset or rekey a host put it back as they found it.

Without the prerequisites (root, namespaces, ip, debootstrap when nothing is cached) the
fixtures skip with the reason, except under CI=true, where a missing prerequisite fails.
"""

from __future__ import annotations

import os

import pytest

from .hosts import HostLab, unavailable_reason
from .rootfs import ensure_rootfs

LAB_HOSTS = ["web-1", "web-2", "db-1"]


def _require_lab() -> None:
    reason = unavailable_reason()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the host lab cannot run: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab_rootfs():
    _require_lab()
    return ensure_rootfs()


@pytest.fixture(scope="session")
def host_lab(lab_rootfs, tmp_path_factory):
    lab = HostLab(tmp_path_factory.mktemp("host-lab"), LAB_HOSTS, prefix="gattest",
                  rootfs=lab_rootfs)
    with lab:
        yield lab


# ---- VM lab (libvirt + qemu TCG guests; see libvirt.py and guest.py) ------------------
@pytest.fixture(scope="session")
def vm_lab(tmp_path_factory):
    """(session) a started VmLab: libvirtd running, guest image cached (built on first use,
    5-7 min), client key pair, domain prefix gatlab-; every gatlab-* domain is destroyed and
    undefined at the start (leftovers of a crashed run) and at the end of the session."""
    from .libvirt import VmLab, unavailable_reason as vm_unavailable_reason

    reason = vm_unavailable_reason()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the VM lab cannot run: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)
    with VmLab(tmp_path_factory.mktemp("vm-lab"), prefix="gatlab-") as lab:
        yield lab


# ---- Kubernetes lab (etcd + kube-apiserver + controllers + kwok; see kube.py) -------------
@pytest.fixture(scope="session")
def kube_assets():
    """(session) KubeAssets: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
    kwok, from KUBEBUILDER_ASSETS or the per-machine cache (built from the Go module proxy on
    first use, ~37 min on 2 cores; `make kube-assets` builds ahead)."""
    from .kube import ensure_assets, unavailable_reason as kube_unavailable_reason

    reason = kube_unavailable_reason()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the Kubernetes lab cannot run: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)
    return ensure_assets()


@pytest.fixture(scope="session")
def kube_cluster(kube_assets, tmp_path_factory):
    """(session) a started KubeCluster "lab": kubeconfig context "lab", one kwok node
    lab-node-1 on which pods become Running and Ready; stopped at the session's end. Tests
    use namespaces of their own and delete them. A second cluster for multi-cluster tests:
    KubeCluster(tmp_path_factory.mktemp(...), "other", assets=kube_assets)."""
    from .kube import KubeCluster

    with KubeCluster(tmp_path_factory.mktemp("kube-lab"), "lab", assets=kube_assets) as cluster:
        yield cluster
