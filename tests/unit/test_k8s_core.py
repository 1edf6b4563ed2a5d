"""The data half of the k8s_manifests role (module_utils/k8s_manifests_core.py: order,
marks, problems, the no-op fingerprint, kubectl's fields taken over, drift paths, prune
candidates, kstatus health) and the checks of its sources lookup (kustomizations that lead
out of the repository). The API half is covered end to end in
tests/integration/test_kubernetes.py."""
from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT

ROLE = ROOT / "roles/k8s_manifests"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


k8s = _load("k8s_manifests_core", ROLE / "module_utils/k8s_manifests_core.py")
lookup = _load("k8s_manifests_sources", ROLE / "lookup_plugins/k8s_manifests_sources.py")

SERVED = {("v1", "Namespace"): False, ("v1", "ConfigMap"): True,
          ("apps/v1", "Deployment"): True,
          ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): False}
CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec: {group: example.com, scope: Namespaced, names: {kind: Widget, plural: widgets}}
"""


def prepared(texts, previous=None, revision="rev1", namespace="default"):
    objects, problems = k8s.parse([{"source": f"c/{i}.yaml", "text": t}
                                   for i, t in enumerate(texts, 1)])
    out, more = k8s.prepare(objects, SERVED, "t", revision, previous or {}, namespace)
    return out, problems + more


def test_objects_come_out_in_apply_order_marked_as_ours():
    out, problems = prepared([
        "kind: Widget\napiVersion: example.com/v1\nmetadata: {name: w, namespace: a}\n",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: a}\n",
        CRD + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: x}\n"],
        namespace="shop")
    assert problems == []
    assert [o["ref"] for o in out] == [
        "v1|Namespace||a", "apiextensions.k8s.io/v1|CustomResourceDefinition||widgets.example.com",
        "v1|ConfigMap|a|c", "example.com/v1|Widget|a|w", "apps/v1|Deployment|shop|d"]
    dep = out[-1]["definition"]
    assert dep["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "gitops-ansible"}
    assert dep["metadata"]["annotations"]["gitops-ansible.io/revision"] == "rev1"
    widget = next(o for o in out if o["ref"].endswith("|w"))
    assert widget["new_kind"] and not out[-1]["new_kind"]


def test_a_helm_release_namespace_comes_before_the_targets():
    objects, _ = k8s.parse([{"source": "chart", "namespace": "web",
                             "text": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"}])
    out, _ = k8s.prepare(objects, SERVED, "t", "r", {}, "shop")
    assert out[0]["ref"] == "v1|ConfigMap|web|c"


def test_an_unchanged_object_keeps_the_revision_that_last_changed_it():
    text = ["apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: a}\ndata: {x: '1'}\n"]
    first, _ = prepared(text)
    previous = {o["ref"]: {"digest": o["digest"], "revision": o["revision"]} for o in first}
    again, _ = prepared(text, previous, "rev2")
    assert again[0]["revision"] == "rev1"
    changed, _ = prepared([text[0].replace("'1'", "'2'")], previous, "rev2")
    assert changed[0]["revision"] == "rev2"


def test_problems_name_the_file_and_document():
    _, problems = prepared([
        "apiVersion: v1\nkind: [x\n", "metadata: {name: y}\n",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\n"])
    assert problems[0].startswith("c/1.yaml:3: invalid YAML")
    assert problems[1] == "c/2.yaml (document 1): missing apiVersion, kind"
    assert "c/3.yaml (document 1): unknown kind Gadget (example.com/v1)" in problems[2]
    assert problems[3] == ("c/4.yaml (document 2): ConfigMap default/c is also defined "
                           "in c/4.yaml (document 1)")


def managed(*entries):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"uid": "u1", "managedFields": [
                {"manager": m, "operation": op, "fieldsV1": f, "time": "t0", **extra}
                for m, op, f, extra in entries]}}


def test_nobody_but_a_status_writer_may_have_written_an_object_in_sync():
    ours = ("gitops-ansible", "Apply", {"f:data": {"f:x": {}}}, {})
    status = ("kube-controller-manager", "Update", {"f:status": {}}, {"subresource": "status"})
    live = managed(ours)
    recorded = {"digest": "d1", "fingerprint": k8s.fingerprint(live)}
    obj = {"digest": "d1"}
    assert k8s.in_sync(obj, live, recorded)
    assert k8s.in_sync(obj, managed(ours, status), recorded)  # status reports do not count
    assert not k8s.in_sync({"digest": "d2"}, live, recorded)  # Git changed
    edited = managed(ours, ("kubectl-edit", "Update", {"f:data": {"f:y": {}}}, {}))
    assert not k8s.in_sync(obj, edited, recorded)
    removed = managed(("gitops-ansible", "Apply", {"f:data": {}}, {}))  # a field removed
    assert not k8s.in_sync(obj, removed, recorded)
    assert not k8s.in_sync(obj, None, recorded) and not k8s.in_sync(obj, live, {})


def test_kubectl_fields_are_handed_to_our_manager():
    port = 'k:{"port":8080,"protocol":"TCP"}'
    live = managed(
        ("gitops-ansible", "Apply", {"f:spec": {"f:ports": {'k:{"port":9898}': {}}}}, {}),
        ("kubectl-patch", "Update", {"f:spec": {"f:ports": {port: {".": {}, "f:port": {}}}}}, {}),
        ("kubectl-scale", "Update", {"f:spec": {"f:replicas": {}}}, {"subresource": "scale"}),
        ("kube-controller-manager", "Update", {"f:status": {}}, {"subresource": "status"}),
        ("helm", "Update", {"f:metadata": {"f:labels": {"f:x": {}}}}, {}))
    fields, managers = k8s.takeover(live, {"spec": {"ports": []}}, "gitops-ansible")
    assert managers == ["kubectl-patch", "kubectl-scale"]
    assert [(e["manager"], e["operation"]) for e in fields] == [
        ("gitops-ansible", "Apply"), ("kube-controller-manager", "Update"), ("helm", "Update")]
    # replicas Git does not set stay with whoever scaled (an autoscaler's way)
    assert fields[0]["fieldsV1"] == {"f:spec": {"f:ports": {
        'k:{"port":9898}': {}, port: {".": {}, "f:port": {}}}}}
    with_replicas, _ = k8s.takeover(live, {"spec": {"replicas": 2}}, "gitops-ansible")
    assert "f:replicas" in with_replicas[0]["fieldsV1"]["f:spec"]
    assert k8s.fields_held(live, ["kubectl-patch"]) == ["spec.ports[port=8080,protocol=TCP]"]
    assert k8s.takeover(managed(("helm", "Update", {}, {})), {}, "gitops-ansible") == (None, [])


def test_drift_is_the_changed_leaf_paths():
    before = {"metadata": {"resourceVersion": "1", "annotations": {"gitops-ansible.io/revision":
                                                                  "a"}},
              "spec": {"replicas": 4, "template": {"spec": {"containers": [
                  {"name": "app", "image": "app:2"}, {"name": "side", "image": "s:1"}]}},
                       "ports": [{"port": 8080}]},
              "status": {"readyReplicas": 4}}
    after = {"metadata": {"resourceVersion": "2", "annotations": {"gitops-ansible.io/revision":
                                                                 "b"}},
             "spec": {"replicas": 2, "template": {"spec": {"containers": [
                 {"name": "app", "image": "app:1"}, {"name": "side", "image": "s:1"}]}},
                      "ports": [{"port": 9898}]},
             "status": {"readyReplicas": 2}}
    assert k8s.changes(before, after) == [
        "spec.ports[port=8080].port: 8080 -> (none)", "spec.ports[port=9898].port: (none) -> 9898",
        "spec.replicas: 4 -> 2",
        'spec.template.spec.containers[name=app].image: "app:2" -> "app:1"']
    assert k8s.changes(after, after) == []


def test_server_errors_are_their_message():
    body = b'{"kind":"Status","message":"Service \\"web\\" is invalid: spec.ports[0].port: ' \
           b'Invalid value: 99999","code":422}'
    assert k8s.server_message(422, body) == ('Service "web" is invalid: spec.ports[0].port: '
                                             'Invalid value: 99999 (HTTP 422)')
    assert k8s.server_message(502, b"<html>bad gateway</html>") == "<html>bad gateway</html> (HTTP 502)"


def test_prune_takes_only_our_objects_of_this_target_not_opted_out():
    ours = {"app.kubernetes.io/managed-by": "gitops-ansible"}

    def live(kind="ConfigMap", labels=ours, **notes):
        return {"kind": kind, "metadata": {"name": "x", "labels": labels, "annotations": {
            "gitops-ansible.io/target": "t", **{f"gitops-ansible.io/{k}": v
                                                for k, v in notes.items()}}}}
    assert k8s.prunable(live(), "t") is None
    assert k8s.prunable(live(prune="disabled"), "t").startswith("annotated")
    assert k8s.prunable(live(), "u") == "no longer ours"
    assert k8s.prunable(live(labels={}), "t") == "no longer ours"
    assert k8s.prunable(live("Namespace"), "t").startswith("a Namespace")
    assert k8s.prunable(live("Namespace"), "t", namespaces=True) is None
    assert k8s.prunable(None, "t") == "gone already"
    assert k8s.stale({"v1|Namespace||a": {}, "v1|ConfigMap|a|x": {}, "v1|ConfigMap|a|y": {}},
                     {"v1|ConfigMap|a|y": {}}) == ["v1|ConfigMap|a|x", "v1|Namespace||a"]


def deployment(**status):
    return {"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, **status}}


def test_health_as_kstatus_computes_it():
    assert k8s.health(deployment(replicas=2, readyReplicas=2, updatedReplicas=2,
                                 availableReplicas=2)) == ("current", None)
    # minReadySeconds: ready but not yet available; the API leaves availableReplicas out
    state, why = k8s.health(deployment(replicas=2, readyReplicas=2, updatedReplicas=2,
                                       conditions=[{"type": "Available", "status": "False",
                                                    "reason": "MinimumReplicasUnavailable",
                                                    "message": "no"}]))
    assert state == "progressing"
    assert why == ("2 of 2 replicas ready, 2 updated, 0 available; "
                   "Available=False (MinimumReplicasUnavailable: no)")
    assert k8s.health(deployment(replicas=3, readyReplicas=2, updatedReplicas=2,
                                 availableReplicas=2))[0] == "progressing"  # old pods left
    stuck = deployment(conditions=[{"type": "Progressing", "status": "False",
                                    "reason": "ProgressDeadlineExceeded"}])
    assert k8s.health(stuck)[0] == "failed"
    unseen = deployment()
    unseen["status"]["observedGeneration"] = 1
    assert k8s.health(unseen)[0] == "progressing"
    job = {"kind": "Job", "status": {"conditions": [{"type": "Failed", "status": "True",
                                                      "reason": "BackoffLimitExceeded"}]}}
    assert k8s.health(job)[0] == "failed"
    sts = {"kind": "StatefulSet", "metadata": {}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                      "availableReplicas": 1, "currentReplicas": 1, "updatedReplicas": 1,
                      "currentRevision": "a", "updateRevision": "b"}}
    assert k8s.health(sts)[0] == "progressing"
    sts["status"]["currentRevision"] = "b"
    assert k8s.health(sts) == ("current", None)
    ds = {"kind": "DaemonSet", "metadata": {}, "status": {
        "observedGeneration": 1, "desiredNumberScheduled": 2, "currentNumberScheduled": 2,
        "updatedNumberScheduled": 2, "numberReady": 2, "numberAvailable": 1}}
    assert k8s.health(ds)[0] == "progressing"
    widget = {"kind": "Widget", "status": {"conditions": [{"type": "Ready", "status": "False",
                                                           "reason": "Waiting"}]}}
    assert k8s.health(widget)[0] == "progressing"
    widget["status"]["conditions"].append({"type": "Stalled", "status": "True"})
    assert k8s.health(widget)[0] == "failed"
    assert k8s.health({"kind": "ConfigMap"}) == ("current", None)


@pytest.mark.parametrize("kustomization, why", [
    ("resources:\n- https://github.com/org/repo//base?ref=v1", "is remote"),
    ("resources:\n- github.com/org/repo/base?ref=v1", "is remote"),
    ("resources: [../../../outside]", "leads outside the repository"),
    ("resources: [missing.yaml]", "not found"),
    ("resources: [../plain]", "a directory without a kustomization"),
    ("helmCharts: [{name: x}]", "helmCharts is not built here"),
    ("configMapGenerator: [{name: c, files: [k=../../../etc-passwd]}]", "leads outside"),
    ("resources: [../base]", "is remote"),  # found in the base the overlay leads to
])
def test_kustomizations_name_local_paths_inside_the_repository_only(tmp_path, kustomization,
                                                                    why):
    root = tmp_path / "repo"
    (root / "clusters/t").mkdir(parents=True)
    (root / "clusters/plain").mkdir()
    (root / "clusters/base").mkdir()
    (root / "clusters/base/kustomization.yaml").write_text(
        "resources: [https://example.com/x.yaml]\n")
    (root / "clusters/t/kustomization.yaml").write_text(kustomization + "\n")
    problems = []
    lookup.check_kustomization(root / "clusters/t", root, problems)
    assert len(problems) == 1 and why in problems[0], problems
    assert problems[0].startswith("clusters/")


def test_sources_walk_manifests_and_stop_at_kustomizations(tmp_path):
    root = tmp_path / "repo"
    (root / "clusters/t/app").mkdir(parents=True)
    (root / "clusters/t/a.yaml").write_text("x: 1\n")
    (root / "clusters/t/app/kustomization.yaml").write_text("resources: [https://x.io/y]\n")
    (root / "clusters/t/app/ignored.yaml").write_text("x: 1\n")
    found = lookup.sources(["clusters/t", "../elsewhere", "clusters/none"], root.resolve(), [],
                           ["kubectl", "kustomize"], "helm", "default")
    assert [t["source"] for t in found["templates"]] == ["clusters/t/a.yaml"]
    assert found["built"] == []
    assert [p.split(":")[0] for p in found["problems"]] == [
        "clusters/t/app/kustomization.yaml", "manifest directory ../elsewhere",
        "manifest directory not found"]


def test_helm_charts_are_checked_before_helm_runs(tmp_path):
    problems = []
    for chart in ({"name": "Web", "chart": "c"}, {"name": "web", "chart": "c", "repo": "r"},
                  {"name": "web", "chart": "../out"}, {"name": "web", "chart": "c", "x": 1}):
        assert lookup.helm_chart(chart, tmp_path, "helm", "default", problems) == []
    assert [p.split(": ", 1)[1][:20] for p in problems] == [
        "'name' must be a rel", "'version' is require", "'../out' leads outsi",
        "unknown key 'x' (exp"]
