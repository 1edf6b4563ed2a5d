"""The data half of the k8s_manifests role (its filter plugin): order, marks, problems,
prune candidates, health verdicts. The API half is covered end to end in
tests/integration/test_kubernetes.py."""
from __future__ import annotations

import importlib.util

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    "k8s_filters", ROOT / "roles/k8s_manifests/filter_plugins/k8s_manifests.py")
k8s = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(k8s)

APIS = {"v1": {"Namespace": {"namespaced": False}, "ConfigMap": {"namespaced": True}},
        "apps/v1": {"Deployment": {"namespaced": True}},
        "apiextensions.k8s.io/v1": {"CustomResourceDefinition": {"namespaced": False}}}
CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec: {group: example.com, scope: Namespaced, names: {kind: Widget, plural: widgets}}
"""


def test_objects_come_out_in_apply_order_marked_as_ours():
    texts = ["kind: Widget\napiVersion: example.com/v1\nmetadata: {name: w, namespace: a}\n",
             "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n"
             "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: a}\n",
             CRD + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"]
    out = k8s.parse(texts, ["/r/c/1.yaml", "/r/c/2.yaml", "/r/c/3.yaml"], "t", "rev1",
                    apis=APIS, root="/r")
    assert out["problems"] == []
    assert [o["ref"] for o in out["objects"]] == [
        "v1|Namespace||a", "apiextensions.k8s.io/v1|CustomResourceDefinition||widgets.example.com",
        "v1|ConfigMap|a|c", "example.com/v1|Widget|a|w", "apps/v1|Deployment|default|d"]
    dep = out["objects"][-1]["definition"]
    assert dep["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "gitops-ansible"}
    assert dep["metadata"]["annotations"]["gitops-ansible.io/revision"] == "rev1"
    assert [o["ref"].split("|")[1] for o in out["phase1"]] == ["Namespace",
                                                              "CustomResourceDefinition"]
    widget = next(o for o in out["objects"] if o["ref"].endswith("|w"))
    assert widget["new_kind"] and k8s.split_ready([widget], ["a"]) == []


def test_an_unchanged_object_keeps_the_revision_that_last_changed_it():
    text = ["apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: a}\ndata: {x: '1'}\n"]
    first = k8s.parse(text, ["f.yaml"], "t", "rev1", apis=APIS)
    again = k8s.parse(text, ["f.yaml"], "t", "rev2", previous=first["inventory"], apis=APIS)
    assert again["inventory"]["v1|ConfigMap|a|c"]["revision"] == "rev1"
    changed = k8s.parse([text[0].replace("'1'", "'2'")], ["f.yaml"], "t", "rev2",
                        previous=first["inventory"], apis=APIS)
    assert changed["inventory"]["v1|ConfigMap|a|c"]["revision"] == "rev2"


def test_problems_name_the_file_and_document():
    texts = ["apiVersion: v1\nkind: [x\n", "metadata: {name: y}\n",
             "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n",
             "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
             "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\n"]
    out = k8s.parse(texts, ["/r/a.yaml", "/r/b.yaml", "/r/c.yaml", "/r/d.yaml"], "t", "r",
                    apis=APIS, root="/r")
    assert out["problems"][0].startswith("a.yaml:3: invalid YAML")
    assert out["problems"][1] == "b.yaml (document 1): missing apiVersion, kind"
    assert "c.yaml (document 1): unknown kind Gadget (example.com/v1)" in out["problems"][2]
    assert out["problems"][3] == ("d.yaml (document 2): ConfigMap default/c is also defined "
                                  "in d.yaml (document 1)")


def test_prune_takes_only_our_objects_of_this_target_not_opted_out():
    def live(name, labels=None, annotations=None):
        return {"resources": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": name, "namespace": "a", "labels": labels or {},
            "annotations": annotations or {}}}]}
    ours = {"app.kubernetes.io/managed-by": "gitops-ansible"}
    found = k8s.prunable([
        live("mine", ours, {"gitops-ansible.io/target": "t"}),
        live("kept", ours, {"gitops-ansible.io/target": "t", "gitops-ansible.io/prune": "disabled"}),
        live("other-target", ours, {"gitops-ansible.io/target": "u"}),
        live("foreign"), {"resources": []}], "t")
    assert [f["label"] for f in found] == ["ConfigMap a/mine"]
    namespace = {"resources": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "a", "labels": ours, "annotations": {"gitops-ansible.io/target": "t"}}}]}
    assert k8s.prunable([namespace], "t") == []  # it holds objects that are not ours too
    assert [f["label"] for f in k8s.prunable([namespace], "t", True)] == ["Namespace a"]
    assert k8s.stale({"v1|Namespace||a": {}, "v1|ConfigMap|a|x": {}, "v1|ConfigMap|a|y": {}},
                     {"v1|ConfigMap|a|y": {}}) == ["v1|ConfigMap|a|x", "v1|Namespace||a"]


def test_health_verdicts():
    dep = {"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2,
                      "updatedReplicas": 2, "availableReplicas": 2}}
    assert k8s.health(dep) is None
    dep["status"].update(readyReplicas=0, availableReplicas=0, conditions=[
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
         "message": "no"}])
    assert k8s.health(dep).startswith("0 of 2 replicas ready, 2 updated, 0 available; "
                                      "Available=False (MinimumReplicasUnavailable: no)")
    job = {"kind": "Job", "status": {"conditions": [{"type": "Failed", "status": "True",
                                                      "reason": "BackoffLimitExceeded"}]}}
    assert k8s.health(job).startswith("failed: BackoffLimitExceeded")
    assert k8s.unhealthy([], ["apps/v1|Deployment|a|gone"]) == ["Deployment a/gone: not found"]
