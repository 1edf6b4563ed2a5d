"""Filters of the k8s_manifests role: the pure-data half of the Kubernetes platform.

Everything that talks to the API goes through kubernetes.core modules in tasks/main.yml;
these filters only turn data into data: rendered files into ordered, marked objects
(with every problem found, file and document named), dry-run results into per-object
errors and drift, the previous inventory into the objects to prune, workload status into
health verdicts.
"""
from __future__ import annotations

import copy
import hashlib
import json

import yaml

MANAGED_BY = ("app.kubernetes.io/managed-by", "gitops-ansible")
ANNOTATION = "gitops-ansible.io/"
PRUNE_DISABLED = "disabled"
# Applied first, in this order: what other objects need to exist (namespaces, CRDs), then
# the cluster-wide and namespaced configuration workloads read, then everything else.
PHASE1_KINDS = ("Namespace", "CustomResourceDefinition")
KIND_ORDER = ("Namespace", "CustomResourceDefinition", "PriorityClass", "StorageClass",
              "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Role", "RoleBinding",
              "ResourceQuota", "LimitRange", "Secret", "ConfigMap", "PersistentVolume",
              "PersistentVolumeClaim", "Service")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _ref(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return "|".join((obj["apiVersion"], obj["kind"], meta.get("namespace") or "",
                     meta.get("name") or ""))


def ref_label(ref: str) -> str:
    api_version, kind, namespace, name = ref.split("|")
    return f"{kind} {namespace + '/' if namespace else ''}{name}"


def _served(apis: dict) -> dict:
    """{(group, kind): namespaced} for every kind the server serves, any version."""
    served = {}
    for group_version, kinds in (apis or {}).items():
        for kind, info in (kinds or {}).items():
            served[(_group(group_version), kind)] = bool(info.get("namespaced"))
            served[(group_version, kind)] = bool(info.get("namespaced"))
    return served


def parse(texts, paths, target, revision, previous=None, apis=None, root=""):
    """Rendered files -> {objects, problems}, objects in apply order, marked as ours.

    ``previous``: the inventory of the last apply ({ref: {digest, revision}}): an object
    whose content is unchanged keeps the revision that last changed it, so that a new
    commit changes only the objects it touches.
    """
    previous = previous or {}
    served = _served(apis)
    problems, objects = [], []
    crd_kinds = {}
    for text, path in zip(texts, paths):
        rel = path[len(root):].lstrip("/") if root and path.startswith(root) else path
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            problems.append(f"{rel}{line}: invalid YAML: {getattr(exc, 'problem', exc)}")
            continue
        for index, doc in enumerate(docs, 1):
            if doc is None:
                continue
            where = f"{rel} (document {index})"
            if not isinstance(doc, dict):
                problems.append(f"{where}: not a mapping")
                continue
            missing = [k for k in ("apiVersion", "kind") if not doc.get(k)]
            if not (doc.get("metadata") or {}).get("name"):
                missing.append("metadata.name")
            if missing:
                problems.append(f"{where}: missing {', '.join(missing)}")
                continue
            if doc["kind"].endswith("List") and "items" in doc:
                problems.append(f"{where}: a List; write its items as separate documents")
                continue
            if doc["kind"] == "CustomResourceDefinition":
                spec = doc.get("spec") or {}
                kind = (spec.get("names") or {}).get("kind")
                if kind:
                    crd_kinds[(spec.get("group", ""), kind)] = spec.get("scope") != "Cluster"
            objects.append({"source": where, "definition": doc})
    known = dict(served)
    known.update(crd_kinds)
    seen = {}
    for obj in objects:
        doc = obj["definition"]
        key = (_group(doc["apiVersion"]), doc["kind"])
        if apis is not None and key not in known:
            problems.append(f"{obj['source']}: unknown kind {doc['kind']} "
                            f"({doc['apiVersion']}): no such API on the server and no "
                            f"CustomResourceDefinition in these manifests defines it")
            continue
        namespaced = known.get(key, True)
        meta = doc.setdefault("metadata", {})
        if namespaced and not meta.get("namespace"):
            meta["namespace"] = "default"
        if not namespaced:
            meta.pop("namespace", None)
        obj["ref"] = _ref(doc)
        if obj["ref"] in seen:
            problems.append(f"{obj['source']}: {ref_label(obj['ref'])} is also defined in "
                            f"{seen[obj['ref']]}")
            continue
        seen[obj["ref"]] = obj["source"]
        obj["new_kind"] = key in crd_kinds and key not in served
        obj["namespace"] = meta.get("namespace") or ""
        _mark(obj, target, revision, previous)
    objects = [o for o in objects if "ref" in o and "digest" in o]
    objects.sort(key=_order)
    return {"objects": objects, "problems": problems,
            "phase1": [o for o in objects if o["definition"]["kind"] in PHASE1_KINDS],
            "phase2": [o for o in objects if o["definition"]["kind"] not in PHASE1_KINDS],
            "inventory": {o["ref"]: {"digest": o["digest"], "revision": o["revision"]}
                          for o in objects}}


def _mark(obj, target, revision, previous) -> None:
    doc = obj["definition"]
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]
    before = previous.get(obj["ref"]) or {}
    obj["digest"] = digest
    obj["revision"] = before.get("revision") if before.get("digest") == digest else revision
    meta = doc["metadata"]
    meta.setdefault("labels", {})[MANAGED_BY[0]] = MANAGED_BY[1]
    notes = meta.setdefault("annotations", {})
    notes[ANNOTATION + "revision"] = str(obj["revision"])
    notes[ANNOTATION + "target"] = str(target)
    notes[ANNOTATION + "digest"] = digest


def _order(obj) -> tuple:
    kind = obj["definition"]["kind"]
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER) + (
        1 if kind in WORKLOADS else 0)
    return (rank, obj["namespace"], kind, obj["definition"]["metadata"]["name"])


def definitions(objects):
    return [o["definition"] for o in objects]


def split_ready(objects, namespaces):
    """Objects the server can dry-run now: their namespace exists and their kind is served."""
    existing = set(namespaces or [])
    return [o for o in objects if (not o["namespace"] or o["namespace"] in existing)
            and not o.get("new_kind")]


def split_later(objects, namespaces):
    ready = {o["ref"] for o in split_ready(objects, namespaces)}
    return [o for o in objects if o["ref"] not in ready]


def _results(register):
    """Per-object results of a k8s_manifests_apply task, in the order of its objects."""
    return (register or {}).get("objects") or []


def errors(register, objects):
    """Per-object errors of a k8s_manifests_apply task."""
    found = []
    if register and register.get("failed") and register.get("msg"):
        found.append(str(register["msg"]))
    for obj, res in zip(objects, _results(register)):
        error = res.get("error") if isinstance(res, dict) else None
        if error:
            msg = error.get("msg") if isinstance(error, dict) else str(error)
            found.append(f"{obj['source']}: {ref_label(obj['ref'])}: {_short(msg)}")
    return found


def _short(msg) -> str:
    text = str(msg)
    try:  # "Failed to apply object: b'{...json status...}'" -> its message
        start = text.index("{")
        body = text[start:].rstrip("'\" ")
        return text[:start].split(":")[0] + ": " + json.loads(
            body.encode().decode("unicode_escape")).get("message", body)
    except (ValueError, AttributeError, UnicodeDecodeError):
        return text[:600]


def changes(register, objects):
    """'Kind ns/name: created' or ': field, field' for every object an apply changed."""
    report = []
    for obj, res in zip(objects, _results(register)):
        if not isinstance(res, dict) or not res.get("changed"):
            continue
        diff = res.get("diff") or {}
        before, after = diff.get("before"), diff.get("after")
        if res.get("method") == "create" or not before:
            report.append(f"{ref_label(obj['ref'])}: created")
            continue
        was, now = dict(_paths(before)), dict(_paths(after))
        skip = ("metadata.managedFields", "metadata.resourceVersion", "metadata.generation",
                "status", "metadata.annotations." + ANNOTATION)
        paths = [p for p in sorted(set(was) | set(now)) if not p.startswith(skip)]
        shown = [f"{p}: {_value(was.get(p))} -> {_value(now.get(p))}" for p in paths[:6]]
        more = f" (+{len(paths) - 6} more)" if len(paths) > 6 else ""
        report.append(f"{ref_label(obj['ref'])}: " + (", ".join(shown) + more or "changed"))
    return report


def _paths(value, prefix=""):
    """(dotted path, leaf value) pairs of a diff half."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _paths(item, f"{prefix}.{key}" if prefix else str(key))
    elif prefix:
        yield prefix, value


def _value(value) -> str:
    if value is None:
        return "(none)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def new_objects(objects):
    return [f"{ref_label(o['ref'])}: would be created" for o in objects]


def stale(previous, current):
    """Refs applied before and no longer in Git, in reverse apply order (CRDs, namespaces last)."""
    gone = [ref for ref in (previous or {}) if ref not in (current or {})]
    first = {"Namespace": 2, "CustomResourceDefinition": 1}
    return sorted(gone, key=lambda ref: (first.get(ref.split("|")[1], 0), ref))


def prunable(live, target, namespaces=False):
    """Live objects (k8s_info results) we may delete: ours, this target's, not opted out.

    Namespaces only with ``namespaces``: deleting one deletes everything in it, objects
    that are not ours too, so by default a namespace that left Git stays."""
    out = []
    for item in live or []:
        for obj in item.get("resources") or []:
            if obj.get("kind") == "Namespace" and not namespaces:
                continue
            meta = obj.get("metadata") or {}
            labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
            if labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
                continue
            if notes.get(ANNOTATION + "target") != str(target):
                continue
            if notes.get(ANNOTATION + "prune") == PRUNE_DISABLED:
                continue
            ref = "|".join((obj["apiVersion"], obj["kind"], meta.get("namespace") or "",
                            meta["name"]))
            out.append({"ref": ref, "label": ref_label(ref),
                        "definition": {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                                       "metadata": {k: v for k, v in (
                                           ("name", meta["name"]),
                                           ("namespace", meta.get("namespace"))) if v}}})
    return out


def ref_query(ref):
    api_version, kind, namespace, name = ref.split("|")
    return {"api_version": api_version, "kind": kind, "namespace": namespace or None,
            "name": name}


def workloads(objects):
    return [o["ref"] for o in objects if o["definition"]["kind"] in WORKLOADS]


def _conditions(status):
    return {c.get("type"): c for c in (status or {}).get("conditions") or []}


def health(obj):
    """None when healthy, else why not (one line)."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    status, meta = obj.get("status") or {}, obj.get("metadata") or {}
    conds = _conditions(status)
    if kind == "Job":
        if (conds.get("Complete") or {}).get("status") == "True":
            return None
        failed = conds.get("Failed") or {}
        if failed.get("status") == "True":
            return f"failed: {failed.get('reason')}: {failed.get('message')}"
        return (f"not complete: {status.get('succeeded', 0)} succeeded, "
                f"{status.get('active', 0)} active, {status.get('failed', 0)} failed")
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return "rollout not observed yet by the controller"
    if kind == "DaemonSet":
        want = status.get("desiredNumberScheduled", 0)
        ready, updated = status.get("numberReady", 0), status.get("updatedNumberScheduled", 0)
        if ready < want or updated < want:
            return f"{ready} of {want} pods ready, {updated} updated"
        return None
    want = spec.get("replicas", 1)
    ready = status.get("readyReplicas", 0)
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", ready) if kind == "Deployment" else ready
    if ready >= want and updated >= want and available >= want and \
            status.get("replicas", 0) <= want:
        return None
    why = f"{ready} of {want} replicas ready, {updated} updated, {available} available"
    for name in ("Progressing", "Available", "ReplicaFailure"):
        cond = conds.get(name)
        if cond and (cond.get("status") != "True" or cond.get("reason") ==
                     "ProgressDeadlineExceeded"):
            why += f"; {name}={cond.get('status')} ({cond.get('reason')}: {cond.get('message')})"
    return why


def unhealthy(live, refs):
    """Messages for every wanted workload (refs) that is not healthy in ``live`` (k8s_info)."""
    wanted = set(refs or [])
    found, out = set(), []
    for item in live or []:
        for obj in item.get("resources") or []:
            meta = obj.get("metadata") or {}
            ref = "|".join((obj.get("apiVersion", ""), obj.get("kind", ""),
                            meta.get("namespace") or "", meta.get("name", "")))
            if ref not in wanted:
                continue
            found.add(ref)
            why = health(obj)
            if why:
                out.append(f"{ref_label(ref)}: {why}")
    out.extend(f"{ref_label(ref)}: not found" for ref in sorted(wanted - found))
    return out


def inventory_data(inventory):
    return {"objects.json": json.dumps(inventory, sort_keys=True, indent=0)}


def inventory_read(info):
    for obj in (info or {}).get("resources") or []:
        text = (obj.get("data") or {}).get("objects.json")
        if text:
            try:
                return json.loads(text)
            except ValueError:
                return {}
    return {}


class FilterModule:
    def filters(self):
        return {"k8s_manifests_parse": parse, "k8s_manifests_definitions": definitions,
                "k8s_manifests_ready": split_ready, "k8s_manifests_later": split_later,
                "k8s_manifests_errors": errors, "k8s_manifests_changes": changes,
                "k8s_manifests_new": new_objects, "k8s_manifests_stale": stale,
                "k8s_manifests_prunable": prunable, "k8s_manifests_ref_query": ref_query,
                "k8s_manifests_workloads": workloads, "k8s_manifests_unhealthy": unhealthy,
                "k8s_manifests_inventory_data": inventory_data,
                "k8s_manifests_inventory_read": inventory_read,
                "k8s_manifests_ref_label": ref_label}
