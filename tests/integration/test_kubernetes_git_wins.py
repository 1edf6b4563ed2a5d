"""Kubernetes at the level Flux users expect (issue 18): Git wins over every kubectl hand
edit, plan tells an existing object from a new one and names what it would prune, drift is
shown as the changed leaf paths, health is kstatus's (minReadySeconds counts).

Real API server (lab/kube.py), `gitops-ansible` as a separate process, hand edits made with
the kubectl a person would use."""
from __future__ import annotations

import os
import subprocess

import pytest

from lab.kube import kubectl_path
from tests.conftest import events
from tests.integration.test_kubernetes import (
    MANAGER, cluster_target, configmap, deployment, docs, estate, get, namespace, report, run,
    service,
)

pytestmark = [pytest.mark.kubernetes, pytest.mark.git, pytest.mark.e2e]
KUBECTL_MANAGER = ("kubectl", "before-first-apply")


def web_service(ns):
    svc = service("web", ns, port=9898)
    svc["spec"]["ports"][0]["name"] = "http"
    return svc


def edit(cluster, ns, what, sed):
    """`kubectl edit` as a person would, with sed as the editor."""
    argv = [kubectl_path(), f"--kubeconfig={cluster.kubeconfig}", f"--context={cluster.name}",
            "edit", what, "-n", ns]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, KUBE_EDITOR=f"sed -i -e '{sed}'"))
    assert done.returncode == 0, done.stderr


def kubectl_managers(obj) -> set:
    return {m["manager"] for m in obj["metadata"].get("managedFields", [])
            if m["manager"].startswith(KUBECTL_MANAGER) and m.get("subresource") != "status"}


def test_git_wins_over_every_kubectl_edit(cli, git_servers, kube_cluster, tmp_path, request):
    ns, target = "t-wins", "t-wins"
    tree = estate(git_servers, tmp_path, request.node.name,
                  {"lab": {target: cluster_target(kube_cluster)}})
    base = f"clusters/{target}"
    settings = configmap("settings", ns, {"greeting": "hello", "level": "info"})
    tree.write(f"{base}/app.yaml", docs(namespace(ns), settings, web_service(ns),
                                        deployment("web", ns, 2)))
    tree.write(f"{base}/extra.yaml", docs(configmap("extra", ns, {"x": "1"})))
    tree.commit("an app")
    run(cli, tree, code=2)
    plan = cli("plan", "--repo", tree.url, "--env", "lab", check_code=0)

    # hand edits, each with its own kubectl field manager
    kube_cluster.kubectl("patch", "svc/web", "-n", ns, "--type=json", "-p",
                         '[{"op":"replace","path":"/spec/ports/0/port","value":8080}]')
    kube_cluster.kubectl("patch", "configmap/settings", "-n", ns, "--type=strategic",
                         "-p", '{"data": {"level": "debug", "added": "by hand"}}')
    edit(kube_cluster, ns, "configmap/settings", "s/greeting: hello/greeting: bye/")
    kube_cluster.kubectl("scale", "deployment/web", "-n", ns, "--replicas=4")
    kube_cluster.kubectl("set", "image", "deployment/web", "-n", ns,
                         "app=registry.invalid/app:2")
    client_side = configmap("extra", ns, {"x": "2"})
    kube_cluster.kubectl("apply", "-f", "-", input=docs(client_side))  # client-side apply
    assert get(kube_cluster, "svc", "web", "-n", ns)["spec"]["ports"][0]["port"] == 8080
    assert kubectl_managers(get(kube_cluster, "configmap", "settings", "-n", ns)) == {
        "kubectl-patch", "kubectl-edit"}

    plan = cli("plan", "--repo", tree.url, "--env", "lab", "--json", check_code=2)
    said = report(plan, "Report the objects that differ from Git")
    assert "would be created" not in said, said
    assert ("Service t-wins/web: fields of kubectl-patch taken over: "
            "spec.ports[port=8080,protocol=TCP]") in said
    assert "Deployment t-wins/web: spec.replicas: 4 -> 2" in said
    assert ('spec.template.spec.containers[name=app].image: "registry.invalid/app:2" -> '
            '"registry.invalid/app:1"') in said
    assert "ConfigMap t-wins/settings: fields of kubectl-edit, kubectl-patch taken over" in said
    assert "ConfigMap t-wins/extra: fields of kubectl-client-side-apply taken over" in said

    done = run(cli, tree, "lab", "--force", "--json", code=2)
    applied = report(done, "Report the objects applied with changes")
    assert "Service t-wins/web" in applied and "ConfigMap t-wins/settings" in applied
    svc = get(kube_cluster, "svc", "web", "-n", ns)
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("http", 9898)]
    cm = get(kube_cluster, "configmap", "settings", "-n", ns)
    assert cm["data"] == {"greeting": "hello", "level": "info"}
    dep = get(kube_cluster, "deployment", "web", "-n", ns)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.invalid/app:1"
    extra = get(kube_cluster, "configmap", "extra", "-n", ns)
    assert extra["data"] == {"x": "1"}
    assert "kubectl.kubernetes.io/last-applied-configuration" not in extra["metadata"].get(
        "annotations", {})
    for obj in (svc, cm, dep, extra):
        assert kubectl_managers(obj) == set(), obj["metadata"]["managedFields"]
        assert (MANAGER, "Apply") in {(m["manager"], m["operation"])
                                      for m in obj["metadata"]["managedFields"]}
    cli("plan", "--repo", tree.url, "--env", "lab", check_code=0)

    # pruned objects are named, by plan and by the run
    tree.remove(f"{base}/extra.yaml")
    tree.commit("no more extra")
    plan = cli("plan", "--repo", tree.url, "--env", "lab", check_code=2)
    assert "ConfigMap t-wins/extra: would be pruned" in plan.stdout
    done = run(cli, tree, "lab", "--json", code=2)
    assert report(done, "Report the pruned objects") == "ConfigMap t-wins/extra: pruned"
    assert get(kube_cluster, "configmap", "extra", "-n", ns) is None
    # a no-op converge changes nothing, and says so
    done = run(cli, tree, "lab", "--force", "--json", code=0)
    hosts = {e["host"]: e["outcome"] for e in events(done) if e["event"] == "host_result"}
    assert hosts == {target: "ok"}


def test_health_waits_for_available_replicas(cli, git_servers, kube_cluster, tmp_path,
                                             request):
    """minReadySeconds: pods ready at once are available only after it; the API leaves
    availableReplicas out while it is 0. The run waits for availability, kstatus's way."""
    ns, target = "t-minready", "t-minready"
    tree = estate(git_servers, tmp_path, request.node.name, {"lab": {target: cluster_target(
        kube_cluster, k8s_manifests_health_timeout=6)}})
    slow = deployment("slow", ns, 2)
    slow["spec"]["minReadySeconds"] = 25
    tree.write(f"clusters/{target}/app.yaml", docs(namespace(ns), slow))
    tree.commit("a deployment available only 25 s after its pods are ready")
    done = run(cli, tree, code=4)
    text = done.stdout + done.stderr
    assert ("not healthy after 6s: Deployment t-minready/slow: 2 of 2 replicas ready, "
            "2 updated, 0 available") in text, text[-3000:]
    assert "Available=False (MinimumReplicasUnavailable" in text
    dep = get(kube_cluster, "deployment", "slow", "-n", ns)
    assert dep["status"].get("readyReplicas") == 2 and not dep["status"].get("availableReplicas")

    inventory = tree.path / "inventories/lab/hosts.yml"
    inventory.write_text(inventory.read_text().replace(
        "k8s_manifests_health_timeout: 6", "k8s_manifests_health_timeout: 90"))
    tree.commit("wait longer")
    done = run(cli, tree, "lab", "--json", code=0)
    assert report(done, "Report healthy workloads") == "Deployment t-minready/slow: healthy"
    assert get(kube_cluster, "deployment", "slow", "-n", ns)["status"]["availableReplicas"] == 2
