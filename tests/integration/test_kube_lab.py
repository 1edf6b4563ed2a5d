"""The Kubernetes lab itself (lab/kube.py): two real API servers at once, workloads that
become ready (kube-controller-manager + kube-scheduler + kwok), and ones that never do.

Every manifest goes through `kubectl apply --server-side`, as the Kubernetes platform will.
"""

from __future__ import annotations

import json
import time

import pytest

from lab.kube import (KUBE_VERSION, NEVER_READY_LABEL, NEVER_SCHEDULED_NODE_SELECTOR,
                      KubeCluster, kubectl_path, write_kubeconfig)
from tests.conftest import require

pytestmark = pytest.mark.kubernetes

ROLLOUT = "60s"  # bounded wait for a rollout that must succeed


def deployment(name: str, namespace: str, replicas: int = 2, labels: dict | None = None,
               node_selector: dict | None = None) -> str:
    pod_spec = {"containers": [{"name": "app", "image": "registry.invalid/app:1",
                                "ports": [{"containerPort": 8080}]}]}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "progressDeadlineSeconds": 600,
                 "template": {"metadata": {"labels": {"app": name, **(labels or {})}},
                              "spec": pod_spec}}})


def namespace(name: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def get_json(cluster: KubeCluster, *args) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def kubectl():
    require(kubectl_path() is not None, "kubectl is not installed")


@pytest.fixture(scope="module")
def west(kube_assets, tmp_path_factory):
    """A second cluster next to the session's kube_cluster ("lab")."""
    with KubeCluster(tmp_path_factory.mktemp("kube-west"), "west", assets=kube_assets) as c:
        yield c


def test_two_clusters_run_side_by_side(kube_cluster, west, kubectl, tmp_path):
    clusters = [kube_cluster, west]
    assert kube_cluster.server != west.server
    for c in clusters:
        status, version = c.request("GET", "/version")
        assert status == 200 and version["gitVersion"] == KUBE_VERSION
        assert c.kubectl("get", "--raw", "/readyz").stdout == "ok"
        nodes = get_json(c, "nodes")["items"]
        assert [n["metadata"]["name"] for n in nodes] == [f"{c.name}-node-1"]
        print(f"{c.name}: started in {c.start_seconds} s")
    # one kubeconfig, a context per cluster, as a multi-cluster platform would get it
    merged = write_kubeconfig(tmp_path / "kubeconfig", clusters)
    for c in clusters:
        done = kube_cluster.kubectl("--kubeconfig", merged, "--context", c.name,
                                    "get", "nodes", "-o", "name")
        assert done.stdout.strip() == f"node/{c.name}-node-1"


def test_deployment_available_in_one_cluster_only(kube_cluster, west, kubectl):
    ns = "lab-ready"
    started = time.monotonic()
    kube_cluster.apply(namespace(ns) + "\n---\n" + deployment("web", ns, replicas=2))
    kube_cluster.kubectl("rollout", "status", "deployment/web", "-n", ns,
                         f"--timeout={ROLLOUT}", timeout=90)
    seconds = time.monotonic() - started
    status = get_json(kube_cluster, "deployment", "web", "-n", ns)["status"]
    assert status["readyReplicas"] == 2 and status["availableReplicas"] == 2
    pods = get_json(kube_cluster, "pods", "-n", ns, "-l", "app=web")["items"]
    assert len(pods) == 2
    node = f"{kube_cluster.name}-node-1"
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"] == node
               and p["status"].get("podIP") for p in pods)
    print(f"apply to available: {seconds:.1f} s")

    # the other cluster knows nothing of it
    missing = west.kubectl("get", "namespace", ns, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr
    assert west.kubectl("get", "deployments", "-A", "-o", "name").stdout.strip() == ""

    # server-side apply again: unchanged; then delete, as a prune would, and wait it out
    again = kube_cluster.apply(namespace(ns) + "\n---\n" + deployment("web", ns, replicas=2))
    assert "serverside-applied" in again.stdout
    kube_cluster.kubectl("delete", "namespace", ns, "--wait", "--timeout=60s", timeout=90)
    assert kube_cluster.kubectl("get", "pods", "-n", ns, "-o", "name").stdout.strip() == ""


def test_never_ready_workloads_stay_unready(kube_cluster, kubectl):
    ns = "lab-unready"
    kube_cluster.apply("\n---\n".join([
        namespace(ns),
        deployment("ready", ns, replicas=1),
        deployment("probe-fails", ns, replicas=2, labels={NEVER_READY_LABEL: "true"}),
        deployment("unschedulable", ns, replicas=1, node_selector=NEVER_SCHEDULED_NODE_SELECTOR),
    ]))
    kube_cluster.kubectl("rollout", "status", "deployment/ready", "-n", ns,
                         f"--timeout={ROLLOUT}", timeout=90)
    # by now the others had every chance; they must still not be available after a wait
    for name in ("probe-fails", "unschedulable"):
        done = kube_cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", ns,
                                    "--timeout=8s", check=False, timeout=60)
        assert done.returncode != 0, done.stdout
        status = get_json(kube_cluster, "deployment", name, "-n", ns)["status"]
        assert not status.get("readyReplicas") and not status.get("availableReplicas")
        available = [c for c in status.get("conditions", []) if c["type"] == "Available"]
        assert available and available[0]["status"] == "False"

    running = get_json(kube_cluster, "pods", "-n", ns, "-l", "app=probe-fails")["items"]
    assert len(running) == 2
    for pod in running:  # running, but its readiness never passes
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert pod["status"]["phase"] == "Running" and ready["Ready"] == "False"
    pending = get_json(kube_cluster, "pods", "-n", ns, "-l", "app=unschedulable")["items"]
    assert len(pending) == 1 and pending[0]["status"]["phase"] == "Pending"
    scheduled = [c for c in pending[0]["status"].get("conditions", [])
                 if c["type"] == "PodScheduled"]
    assert scheduled and scheduled[0]["reason"] == "Unschedulable"
    kube_cluster.kubectl("delete", "namespace", ns, "--wait", "--timeout=60s", timeout=90)


def test_job_statefulset_daemonset_become_ready(kube_cluster, kubectl):
    ns = "lab-kinds"
    pod = {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    docs = [
        json.loads(namespace(ns)),
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once", "namespace": ns},
         "spec": {"template": {"spec": {**pod, "restartPolicy": "Never"}}}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet",
         "metadata": {"name": "db", "namespace": ns},
         "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                  "template": {"metadata": {"labels": {"app": "db"}}, "spec": pod}}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet",
         "metadata": {"name": "agent", "namespace": ns},
         "spec": {"selector": {"matchLabels": {"app": "agent"}},
                  "template": {"metadata": {"labels": {"app": "agent"}}, "spec": pod}}},
    ]
    kube_cluster.apply("\n---\n".join(json.dumps(d) for d in docs))
    kube_cluster.kubectl("wait", "-n", ns, "job/once", "--for=condition=Complete",
                         f"--timeout={ROLLOUT}", timeout=90)
    for what in ("statefulset/db", "daemonset/agent"):
        kube_cluster.kubectl("rollout", "status", what, "-n", ns, f"--timeout={ROLLOUT}",
                             timeout=90)
    assert get_json(kube_cluster, "statefulset", "db", "-n", ns)["status"]["readyReplicas"] == 2
    assert get_json(kube_cluster, "daemonset", "agent", "-n", ns)["status"]["numberReady"] == 1
    kube_cluster.kubectl("delete", "namespace", ns, "--wait", "--timeout=60s", timeout=90)
