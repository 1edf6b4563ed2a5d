"""Where a cluster's objects come from (issue 18): kustomize overlays per target, Helm
charts declared in the inventory (a chart in Git, and one from a chart repository served
on loopback), and the target's namespace for objects that name none. Their output goes
through the same path as plain manifests: marks, prune, drift, health.

Real API server (lab/kube.py), the lab's helm (built from the Go module proxy and cached)
and kubectl's built-in kustomize."""
from __future__ import annotations

import functools
import http.server
import subprocess
import threading

import pytest
import yaml

from lab.kube import kubectl_path
from tests.integration.test_kubernetes import (
    cluster_target, configmap, deployment, docs, estate, get, namespace, report, run, service,
)

pytestmark = [pytest.mark.kubernetes, pytest.mark.git, pytest.mark.e2e]


@pytest.fixture
def tools(helm) -> dict:
    """The role's commands, pointed at the lab's binaries (the PATH's kubectl may be a
    version dispatcher)."""
    return {"k8s_manifests_kustomize": [kubectl_path(), "kustomize"],
            "k8s_manifests_helm": str(helm)}


def unplaced(obj: dict) -> dict:
    """The object without a namespace (the kustomization or the target gives it one)."""
    obj["metadata"].pop("namespace", None)
    return obj


def kustomization(**spec) -> str:
    return yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1",
                           "kind": "Kustomization", **spec}, sort_keys=False)


def test_kustomize_overlays_per_target(cli, git_servers, kube_cluster, tools, tmp_path,
                                       request):
    ns = "t-kprod"
    tree = estate(git_servers, tmp_path, request.node.name, {"lab": {
        "t-kust": cluster_target(kube_cluster, k8s_namespace="t-kdefault", **tools)}})
    app = "bases/app"
    tree.write(f"{app}/base/kustomization.yaml", kustomization(
        resources=["deployment.yaml", "service.yaml"],
        labels=[{"pairs": {"app.kubernetes.io/part-of": "shop"}}]))
    tree.write(f"{app}/base/deployment.yaml", docs(unplaced(deployment("web", None, 1))))
    tree.write(f"{app}/base/service.yaml", docs(unplaced(service("web", None))))
    replicas = [{"op": "replace", "path": "/spec/replicas", "value": 3}]
    tree.write(f"{app}/overlays/prod/kustomization.yaml", kustomization(
        namespace=ns, resources=["../../base"],
        patches=[{"target": {"kind": "Deployment", "name": "web"},
                  "patch": yaml.safe_dump(replicas)}],
        configMapGenerator=[{"name": "settings", "literals": ["greeting=hello"]}]))
    tree.write("clusters/t-kust/kustomization.yaml", kustomization(
        resources=["namespace.yaml", "../../bases/app/overlays/prod"]))
    tree.write("clusters/t-kust/namespace.yaml", docs(namespace(ns)))
    # beside the kustomization's directory, plain manifests: no namespace named
    tree.write("clusters/t-kust-plain/config.yaml", docs(
        namespace("t-kdefault"), unplaced(configmap("plain", None, {"x": "1"}))))
    inventory = tree.path / "inventories/lab/hosts.yml"
    hosts = yaml.safe_load(inventory.read_text())
    hosts["all"]["hosts"]["t-kust"]["k8s_manifests_dirs"] = ["clusters/t-kust",
                                                             "clusters/t-kust-plain"]
    inventory.write_text(yaml.safe_dump(hosts))
    tree.commit("a kustomized app with a prod overlay")

    done = run(cli, tree, "lab", "--json", code=2)
    created = report(done, "Report the objects applied with changes")
    dep = get(kube_cluster, "deployment", "web", "-n", ns)
    assert dep["spec"]["replicas"] == 3
    assert dep["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shop"
    assert dep["metadata"]["annotations"]["gitops-ansible.io/target"] == "t-kust"
    generated = [c["metadata"]["name"] for c in kube_cluster_items(kube_cluster, ns)
                 if c["metadata"]["name"].startswith("settings-")]
    assert len(generated) == 1 and f"ConfigMap {ns}/{generated[0]}: created" in created
    assert get(kube_cluster, "configmap", "plain", "-n", "t-kdefault")["data"] == {"x": "1"}
    assert "Deployment t-kprod/web: healthy" in report(done, "Report healthy workloads")

    # the overlay changes: the generated ConfigMap gets a new name, the old one is pruned
    overlay = tree.path / f"{app}/overlays/prod/kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("greeting=hello", "greeting=hi")
                       .replace("value: 3", "value: 2"))
    tree.commit("prod: 2 replicas, a new greeting")
    done = run(cli, tree, "lab", "--json", code=2)
    assert "Deployment t-kprod/web: spec.replicas: 3 -> 2" in report(
        done, "Report the objects applied with changes")
    assert f"ConfigMap {ns}/{generated[0]}: pruned" in report(done, "Report the pruned objects")
    assert get(kube_cluster, "configmap", generated[0], "-n", ns) is None
    cli("plan", "--repo", tree.url, "--env", "lab", check_code=0)

    # a remote base is refused before anything is applied
    overlay.write_text(overlay.read_text().replace(
        "- ../../base", "- ../../base\n- https://github.com/kubernetes-sigs/kustomize//"
        "examples/helloWorld?ref=v5.0.0"))
    tree.commit("a remote base")
    done = run(cli, tree, "lab", code=5)
    text = done.stdout + done.stderr
    assert "bases/app/overlays/prod/kustomization.yaml: 'https://github.com/" in text
    assert "is remote" in text
    assert get(kube_cluster, "deployment", "web", "-n", ns)["spec"]["replicas"] == 2


def kube_cluster_items(cluster, ns) -> list:
    done = cluster.kubectl("get", "configmaps", "-n", ns, "-o", "json")
    return yaml.safe_load(done.stdout)["items"]


CHART = {
    "Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    "values.yaml": "replicas: 1\ngreeting: hello\nextra: false\n",
    "templates/deployment.yaml": """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels: {chart: "{{ .Chart.Name }}-{{ .Chart.Version }}"}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec: {containers: [{name: app, image: registry.invalid/web:1}]}
""",
    "templates/configmap.yaml": """apiVersion: v1
kind: ConfigMap
metadata: {name: {{ .Release.Name }}-settings}
data: {greeting: {{ .Values.greeting | quote }}}
""",
    "templates/extra.yaml": """{{- if .Values.extra }}
apiVersion: v1
kind: ConfigMap
metadata: {name: {{ .Release.Name }}-extra}
data: {x: "1"}
{{- end }}
""",
    "templates/test-hook.yaml": """apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-test
  annotations: {"helm.sh/hook": test}
spec: {containers: [{name: t, image: registry.invalid/t:1}]}
""",
}


@pytest.fixture
def chart_repository(helm, tmp_path):
    """A chart repository (index.yaml and the packaged chart) served on loopback."""
    src, served = tmp_path / "cache-chart", tmp_path / "repo"
    cache = {**CHART, "Chart.yaml": "apiVersion: v2\nname: cache\nversion: 1.2.3\n"}
    for name, text in cache.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    served.mkdir()
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([helm, "package", str(src), "-d", str(served)], check=True, env=env,
                   capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(served)))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    subprocess.run([helm, "repo", "index", str(served), "--url", url], check=True, env=env,
                   capture_output=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()


def test_helm_charts_from_git_and_from_a_chart_repository(cli, git_servers, kube_cluster,
                                                          chart_repository, tools, tmp_path,
                                                          request):
    ns, target = "t-helm", "t-helm"
    charts = [{"name": "web", "chart": "charts/web", "namespace": ns,
               "values": {"replicas": "{{ web_replicas }}", "greeting": "hello"}},
              {"name": "cache", "chart": "cache", "repo": chart_repository, "version": "1.2.3"}]
    tree = estate(git_servers, tmp_path, request.node.name, {"lab": {target: cluster_target(
        kube_cluster, k8s_namespace="t-helm-cache", web_replicas=2,
        k8s_manifests_helm_charts=charts, **tools)}})
    for name, text in CHART.items():
        tree.write(f"charts/web/{name}", text)
    tree.write(f"clusters/{target}/namespaces.yaml", docs(namespace(ns),
                                                          namespace("t-helm-cache")))
    tree.commit("two releases")

    done = run(cli, tree, "lab", "--json", code=2)
    dep = get(kube_cluster, "deployment", "web", "-n", ns)
    assert dep["spec"]["replicas"] == 2 and dep["metadata"]["labels"]["chart"] == "web-0.1.0"
    assert get(kube_cluster, "configmap", "web-settings", "-n", ns)["data"] == {
        "greeting": "hello"}
    assert get(kube_cluster, "deployment", "cache", "-n", "t-helm-cache") is not None
    assert get(kube_cluster, "pod", "web-test", "-n", ns) is None  # hooks are not applied
    assert "Deployment t-helm/web: healthy" in report(done, "Report healthy workloads")

    # values from the inventory change, a template goes away: changed, pruned
    inventory = tree.path / "inventories/lab/hosts.yml"
    inventory.write_text(inventory.read_text().replace("web_replicas: 2", "web_replicas: 3"))
    tree.remove("charts/web/templates/configmap.yaml")
    tree.commit("3 replicas, no settings")
    plan = cli("plan", "--repo", tree.url, "--env", "lab", check_code=2)
    assert "Deployment t-helm/web: spec.replicas: 2 -> 3" in plan.stdout
    assert "ConfigMap t-helm/web-settings: would be pruned" in plan.stdout
    done = run(cli, tree, "lab", "--json", code=2)
    assert get(kube_cluster, "deployment", "web", "-n", ns)["spec"]["replicas"] == 3
    assert get(kube_cluster, "configmap", "web-settings", "-n", ns) is None
    assert "ConfigMap t-helm/web-settings: pruned" in report(done, "Report the pruned objects")

    # a chart that does not render is refused, naming the release
    tree.write("charts/web/templates/broken.yaml", "{{ .Values.nope.deeper }}\n")
    tree.commit("a broken template")
    done = run(cli, tree, "lab", code=5)
    text = done.stdout + done.stderr
    assert "k8s_manifests_helm_charts[web]: helm template failed" in text and "nil pointer" in text
    assert get(kube_cluster, "deployment", "web", "-n", ns)["spec"]["replicas"] == 3
