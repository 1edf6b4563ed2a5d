"""The Kubernetes platform end to end: commits in a real Git repository, `gitops-ansible`
as a separate process, real API servers (lab/kube.py: etcd + kube-apiserver +
controllers + kwok), kubernetes.core driving the API.

Every test uses its own inventory target (and so its own namespace and inventory ConfigMap)
on the session's cluster "lab"; the multi-cluster test starts a second cluster.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from lab.gitserver import WorkTree
from lab.kube import NEVER_READY_LABEL, KubeCluster, kubectl_path
from tests.conftest import ROOT, events, require, roles_by_host

pytestmark = [pytest.mark.kubernetes, pytest.mark.git, pytest.mark.e2e]
MANAGER = "gitops-ansible"


@pytest.fixture(scope="module", autouse=True)
def prerequisites():
    require(kubectl_path() is not None, "kubectl is not installed")
    try:
        import kubernetes  # noqa: F401
        from ansible_collections.kubernetes.core import plugins  # noqa: F401
    except ImportError as exc:
        require(False, f"kubernetes.core or the kubernetes client is missing "
                       f"(make collections): {exc}")


def docs(*objects) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def namespace(name):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def configmap(name, ns, data, annotations=None):
    meta = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def deployment(name, ns, replicas=2, labels=None):
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, **(labels or {})}},
                                  "spec": {"containers": [{"name": "app",
                                                           "image": "registry.invalid/app:1"}]}}}}


def service(name, ns, port=80):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"port": port}]}}


def estate(git_servers, tmp_path: Path, name: str, envs: dict) -> WorkTree:
    """A served repository with the project's playbooks and roles; ``envs``: {env: hosts}
    where hosts maps a target name to its inventory variables."""
    bare = git_servers.create(name.replace("[", "-").replace("]", ""))
    tree = WorkTree(bare, tmp_path / "worktree")
    for part in ("playbooks", "roles"):
        tree.copy_tree(ROOT / part, part)
    (tree.path / "ansible.cfg").write_text((ROOT / "ansible.cfg").read_text())
    for env, hosts in envs.items():
        tree.write(f"inventories/{env}/hosts.yml",
                   "---\n" + yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False))
    tree.url = f"file://{bare}"
    return tree


def cluster_target(cluster: KubeCluster, **extra) -> dict:
    return {"platform": "kubernetes", "k8s_kubeconfig": str(cluster.kubeconfig),
            "k8s_context": cluster.name, "k8s_manifests_health_timeout": 60, **extra}


def get(cluster: KubeCluster, *args) -> dict | None:
    done = cluster.kubectl("get", *args, "-o", "json", "--show-managed-fields", check=False)
    if done.returncode:
        assert "NotFound" in done.stderr, done.stderr
        return None
    return json.loads(done.stdout)


def managers(obj: dict) -> set:
    return {(m["manager"], m["operation"]) for m in obj["metadata"].get("managedFields", [])}


def run(cli, tree, env="lab", *extra, code=None):
    return cli("run", "--repo", tree.url, "--env", env, *extra, check_code=code)


def report(done, task: str) -> str:
    """The per-object report (message) of a task in a --json run."""
    found = [e.get("message") or "" for e in events(done)
             if e["event"] == "task_result" and e["task"] == task]
    return " | ".join(found)


def test_apply_change_prune(cli, git_servers, kube_cluster, tmp_path, request):
    """Issue 3, tests 1-3: a commit with a Namespace, a ConfigMap and a Deployment is applied
    with our field manager and revision; a second commit changes only what it touches; a
    third removes a ConfigMap (pruned) while a foreign object and an opted-out one stay."""
    ns, target = "t-apply", "t-apply"
    tree = estate(git_servers, tmp_path, request.node.name,
                  {"lab": {target: cluster_target(kube_cluster)}})
    base = f"clusters/{target}"
    tree.write(f"{base}/namespace.yaml", docs(namespace(ns)))
    tree.write(f"{base}/app/config.yaml", docs(configmap("settings", ns, {"greeting": "hello"})))
    tree.write(f"{base}/app/keep.yaml", docs(configmap(
        "keep", ns, {"x": "1"}, {"gitops-ansible.io/prune": "disabled"})))
    tree.write(f"{base}/app/web.yaml", docs(deployment("web", ns, 2), service("web", ns)))
    first = tree.commit("an app: namespace, config, deployment, service")

    done = run(cli, tree, "lab", "--json", code=2)
    assert "Deployment t-apply/web: healthy" in report(done, "Report healthy workloads")
    created = report(done, "Report the objects applied with changes")
    for what in ("Namespace t-apply", "ConfigMap t-apply/settings", "Deployment t-apply/web",
                 "Service t-apply/web"):
        assert f"{what}: created" in created
    for kind, name in (("configmap", "settings"), ("deployment", "web"), ("service", "web")):
        obj = get(kube_cluster, kind, name, "-n", ns)
        assert (MANAGER, "Apply") in managers(obj), obj["metadata"]["managedFields"]
        assert obj["metadata"]["annotations"]["gitops-ansible.io/revision"] == first
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == MANAGER
    dep = get(kube_cluster, "deployment", "web", "-n", ns)
    assert dep["status"]["readyReplicas"] == 2
    untouched = {k: get(kube_cluster, k, "web", "-n", ns)["metadata"]["resourceVersion"]
                 for k in ("service",)}
    ns_version = get(kube_cluster, "namespace", ns)["metadata"]["resourceVersion"]

    # 2: replicas and the ConfigMap change; nothing else does
    tree.write(f"{base}/app/config.yaml", docs(configmap("settings", ns, {"greeting": "hi"})))
    tree.write(f"{base}/app/web.yaml", docs(deployment("web", ns, 3), service("web", ns)))
    second = tree.commit("3 replicas, a new greeting")
    done = run(cli, tree, "lab", "--json", code=2)
    changed = report(done, "Report the objects applied with changes").split("; ")
    assert sorted(changed) == ["ConfigMap t-apply/settings: data.greeting: \"hello\" -> \"hi\"",
                               "Deployment t-apply/web: spec.replicas: 2 -> 3"], changed
    dep = get(kube_cluster, "deployment", "web", "-n", ns)
    assert dep["spec"]["replicas"] == 3 and dep["status"]["readyReplicas"] == 3
    assert dep["metadata"]["annotations"]["gitops-ansible.io/revision"] == second
    assert get(kube_cluster, "configmap", "settings", "-n", ns)["data"] == {"greeting": "hi"}
    assert get(kube_cluster, "service", "web", "-n", ns)["metadata"]["resourceVersion"] \
        == untouched["service"]
    assert get(kube_cluster, "namespace", ns)["metadata"]["resourceVersion"] == ns_version
    assert get(kube_cluster, "service", "web", "-n", ns)["metadata"]["annotations"][
        "gitops-ansible.io/revision"] == first

    # 3: the ConfigMap files leave Git; a foreign object in the namespace and the opted-out
    # ConfigMap stay
    kube_cluster.apply(docs(configmap("foreign", ns, {"owner": "someone else"})))
    tree.remove(f"{base}/app/config.yaml")
    tree.remove(f"{base}/app/keep.yaml")
    tree.commit("no more config")
    done = run(cli, tree, "lab", "--json", code=2)
    assert get(kube_cluster, "configmap", "settings", "-n", ns) is None
    assert get(kube_cluster, "configmap", "keep", "-n", ns) is not None
    assert get(kube_cluster, "configmap", "foreign", "-n", ns)["data"] == {
        "owner": "someone else"}
    assert get(kube_cluster, "deployment", "web", "-n", ns) is not None
    inventory = get(kube_cluster, "configmap", f"inventory-{target}", "-n",
                    "gitops-ansible-system")
    refs = json.loads(inventory["data"]["objects.json"])
    assert "v1|ConfigMap|t-apply|settings" not in refs and "apps/v1|Deployment|t-apply|web" in refs


def test_drift_is_reported_by_plan_and_healed_by_run(cli, git_servers, kube_cluster, tmp_path,
                                                     request):
    ns, target = "t-drift", "t-drift"
    tree = estate(git_servers, tmp_path, request.node.name,
                  {"lab": {target: cluster_target(kube_cluster)}})
    tree.write(f"clusters/{target}/all.yaml", docs(
        namespace(ns), configmap("settings", ns, {"level": "info"}), deployment("web", ns, 2)))
    tree.commit("app")
    run(cli, tree, code=2)
    assert cli("plan", "--repo", tree.url, "--env", "lab", check_code=0)

    kube_cluster.kubectl("scale", "deployment/web", "-n", ns, "--replicas=4")
    kube_cluster.kubectl("patch", "configmap/settings", "-n", ns, "--type=merge",
                         "-p", '{"data": {"level": "debug"}}')
    plan = cli("plan", "--repo", tree.url, "--env", "lab", check_code=2)
    assert "Deployment t-drift/web: spec.replicas: 4 -> 2" in plan.stdout
    assert 'ConfigMap t-drift/settings: data.level: "debug" -> "info"' in plan.stdout
    assert get(kube_cluster, "deployment", "web", "-n", ns)["spec"]["replicas"] == 4

    run(cli, tree, "lab", "--force", code=2)
    assert get(kube_cluster, "deployment", "web", "-n", ns)["spec"]["replicas"] == 2
    assert get(kube_cluster, "configmap", "settings", "-n", ns)["data"] == {"level": "info"}
    cli("plan", "--repo", tree.url, "--env", "lab", check_code=0)


def test_crd_and_custom_resource_in_one_commit(cli, git_servers, kube_cluster, tmp_path,
                                               request):
    ns, target = "t-crd", "t-crd"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                        "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                            "type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}}
    widget = {"apiVersion": "example.com/v1", "kind": "Widget",
              "metadata": {"name": "w1", "namespace": ns}, "spec": {"size": 3}}
    tree = estate(git_servers, tmp_path, request.node.name,
                  {"lab": {target: cluster_target(kube_cluster)}})
    # the custom resource sorts first by file name: the role orders by kind, not by file
    tree.write(f"clusters/{target}/a-widget.yaml", docs(widget))
    tree.write(f"clusters/{target}/b-crd.yaml", docs(crd, namespace(ns)))
    tree.commit("a CRD, a namespace and a custom resource")
    done = run(cli, tree, "lab", "--json", code=2)
    assert "Widget t-crd/w1: created" in report(done, "Report the objects applied with changes")
    assert get(kube_cluster, "widget", "w1", "-n", ns)["spec"] == {"size": 3}
    run(cli, tree, "lab", "--force", code=0)  # converged: nothing changes


def test_bad_manifests_are_refused_before_anything_is_applied(cli, git_servers, kube_cluster,
                                                              tmp_path, request):
    ns, target = "t-bad", "t-bad"
    tree = estate(git_servers, tmp_path, request.node.name,
                  {"lab": {target: cluster_target(kube_cluster)}})
    base = f"clusters/{target}"
    tree.write(f"{base}/app.yaml", docs(namespace(ns), configmap("settings", ns, {"v": "1"})))
    tree.commit("good")
    run(cli, tree, code=2)
    version = get(kube_cluster, "configmap", "settings", "-n", ns)["metadata"]["resourceVersion"]

    # an unknown kind and a manifest the server rejects, beside a change that would apply
    tree.write(f"{base}/app.yaml", docs(namespace(ns), configmap("settings", ns, {"v": "2"})))
    tree.write(f"{base}/gadget.yaml", docs({"apiVersion": "example.com/v1", "kind": "Gadget",
                                            "metadata": {"name": "g", "namespace": ns}}))
    tree.write(f"{base}/svc.yaml", docs(service("web", ns, port=99999)))
    tree.write(f"{base}/new-ns.yaml", docs(namespace("t-bad-new")))
    tree.commit("an unknown kind, an invalid port")
    # refused by the role before anything was applied: a refusal (exit 5), not a failure
    done = run(cli, tree, code=5)
    assert "unknown kind Gadget (example.com/v1)" in done.stdout + done.stderr
    assert f"{base}/gadget.yaml" in done.stdout + done.stderr
    assert get(kube_cluster, "configmap", "settings", "-n", ns)["metadata"]["resourceVersion"] \
        == version
    tree.remove(f"{base}/gadget.yaml")
    tree.commit("no more gadget")
    done = run(cli, tree, code=5)
    text = done.stdout + done.stderr
    assert "the server rejects 1 object(s), nothing applied" in text
    assert f"{base}/svc.yaml (document 1): Service t-bad/web" in text and "99999" in text
    assert '"kind":"Status"' not in text  # the server's message, not its JSON
    run(cli, tree, code=5)  # remembered: the same revision is not tried again
    assert get(kube_cluster, "configmap", "settings", "-n", ns)["metadata"]["resourceVersion"] \
        == version
    assert get(kube_cluster, "namespace", "t-bad-new") is None

    # invalid YAML and a document without kind: refused by the orchestrator (exit 5)
    tree.write(f"{base}/svc.yaml", "---\napiVersion: v1\nkind: Service\nmetadata: {name: [x\n")
    tree.write(f"{base}/nokind.yaml", "---\napiVersion: v1\nmetadata:\n  name: y\n")
    tree.commit("broken YAML")
    done = run(cli, tree, code=5)
    assert f"{base}/svc.yaml:" in done.stderr and "invalid YAML" in done.stderr
    assert f"{base}/nokind.yaml:2: document 1: no kind" in done.stderr
    assert get(kube_cluster, "configmap", "settings", "-n", ns)["data"] == {"v": "1"}
    assert get(kube_cluster, "namespace", "t-bad-new") is None


def test_a_rollout_that_never_becomes_ready_fails_the_run(cli, git_servers, kube_cluster,
                                                          tmp_path, request):
    ns, target = "t-stuck", "t-stuck"
    tree = estate(git_servers, tmp_path, request.node.name, {"lab": {target: cluster_target(
        kube_cluster, k8s_manifests_health_timeout=10)}})
    tree.write(f"clusters/{target}/app.yaml", docs(
        namespace(ns), deployment("fine", ns, 1),
        deployment("stuck", ns, 2, labels={NEVER_READY_LABEL: "true"})))
    tree.commit("a deployment that never becomes ready")
    started = time.monotonic()
    done = run(cli, tree, code=4)
    took = time.monotonic() - started
    text = done.stdout + done.stderr
    assert "not healthy after 10s: Deployment t-stuck/stuck: 0 of 2 replicas ready" in text
    assert "Deployment t-stuck/fine" not in text.split("not healthy after")[1].splitlines()[0]
    assert took < 90, took


@pytest.fixture(scope="module")
def other(kube_assets, tmp_path_factory):
    with KubeCluster(tmp_path_factory.mktemp("kube-other"), "other", assets=kube_assets) as c:
        yield c


def test_two_clusters_and_a_mixed_environment(cli, git_servers, kube_cluster, other, tmp_path,
                                              request):
    """One environment with two clusters (prod-eu on "lab", prod-us on "other"), and an
    environment mixing a cluster with a `local` target (the controller: the bare-host lab
    would only add SSH start-up time): each target gets its platform's roles only."""
    out = tmp_path / "out"
    local = {"platform": "local", "ansible_connection": "local",
             "host_files_directories": [{"path": str(out), "mode": "0755"}]}
    tree = estate(git_servers, tmp_path, request.node.name, {
        "prod": {"prod-eu": cluster_target(kube_cluster), "prod-us": cluster_target(other)},
        "mixed": {"mixed-k8s": cluster_target(kube_cluster), "box": local}})
    for name, region in (("prod-eu", "eu"), ("prod-us", "us")):
        tree.write(f"clusters/{name}/app.yaml", docs(namespace("t-shop"), configmap(
            "region", "t-shop", {"region": region, "target": "{{ inventory_hostname }}"})))
    tree.write("bases/common/ns.yaml", docs(namespace("t-common")))
    tree.write("inventories/prod/group_vars/all.yml", "---\nk8s_manifests_dirs:\n"
               "  - bases/common\n  - \"clusters/{{ inventory_hostname }}\"\n")
    tree.write("clusters/mixed-k8s/app.yaml", docs(namespace("t-mixed")))
    tree.commit("two clusters, a mixed environment")

    done = run(cli, tree, "prod", "--json", code=2)
    for cluster, region, name in ((kube_cluster, "eu", "prod-eu"), (other, "us", "prod-us")):
        assert get(cluster, "configmap", "region", "-n", "t-shop")["data"] == {
            "region": region, "target": name}
        assert get(cluster, "namespace", "t-common") is not None
    hosts = {e["host"]: e["outcome"] for e in events(done) if e["event"] == "host_result"}
    assert hosts == {"prod-eu": "changed", "prod-us": "changed"}

    done = run(cli, tree, "mixed", "--json", code=2)
    roles = {}
    for e in events(done):
        if e["event"] == "task_result" and e["status"] != "skipped":
            roles.setdefault(e["host"], set()).add(e["role"])
    assert roles["mixed-k8s"] - {None} == {"k8s_manifests"}, roles
    assert roles["box"] - {None} == {"host_files"}, roles
    assert out.is_dir()
    assert get(kube_cluster, "namespace", "t-mixed") is not None
    assert get(other, "namespace", "t-mixed") is None


@pytest.mark.baremetal
def test_a_cluster_beside_bare_hosts(cli, git_servers, host_lab, kube_cluster, tmp_path,
                                     request):
    """The project's estate on the lab's SSH hosts plus a cluster in the same environment:
    the bare hosts get the host roles only, the cluster the manifests role only."""
    from tests.integration.test_baremetal import VAULT, bare_metal_roles_only, lab_estate

    tree = lab_estate(git_servers, host_lab, tmp_path, request.node.name)
    inventory = tree.path / "inventories/lab/hosts.yml"
    hosts = yaml.safe_load(inventory.read_text())
    hosts["all"]["children"]["clusters"] = {"hosts": {"lab-k8s": cluster_target(kube_cluster)}}
    inventory.write_text("---\n" + yaml.safe_dump(hosts, sort_keys=False))
    tree.write("clusters/lab-k8s/app.yaml", docs(namespace("t-beside-hosts")))
    tree.commit("a cluster beside the bare hosts")

    done = run(cli, tree, "lab", *VAULT, "--json", code=2)
    roles = roles_by_host(done)
    assert roles["lab-k8s"] - {None} == {"k8s_manifests"}, roles
    for host in ("web-1", "web-2", "db-1"):
        assert bare_metal_roles_only(roles, host), roles
    assert get(kube_cluster, "namespace", "t-beside-hosts") is not None
    assert "deploy:" in host_lab.exec("web-1", ["getent", "passwd", "deploy"]).stdout
