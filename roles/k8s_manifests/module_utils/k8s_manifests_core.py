"""The data half of the k8s_manifests role: no I/O, so that unit tests can cover it.

- ``prepare``: rendered documents -> the objects to apply, checked against the server's
  kinds, given the target's namespace when they name none, marked as ours, in apply order;
- ``fingerprint``/``in_sync``: an object nobody wrote since it was last found equal to Git
  needs no request (the cycle's no-op path);
- ``takeover``: the managedFields that give kubectl's fields to our manager, so that a
  hand edit is undone by the next apply (what Flux does);
- ``changes``: the leaf paths that differ between two versions of an object;
- ``health``: kstatus's verdict (current, in progress, failed) for workloads and for any
  object with a Ready, Reconciling or Stalled condition.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re

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
# Fields a server or a controller writes, never Git: not drift.
NOT_DRIFT = ("metadata.managedFields", "metadata.resourceVersion", "metadata.generation",
             "metadata.creationTimestamp", "metadata.uid", "metadata.selfLink", "status",
             "metadata.annotations." + ANNOTATION)
SHOWN_PATHS = 8     # changed leaf paths shown per object
VALUE_MAX = 200     # characters of a before or after value shown


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def ref_of(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return "|".join((obj.get("apiVersion", ""), obj.get("kind", ""),
                     meta.get("namespace") or "", meta.get("name") or ""))


def ref_label(ref: str) -> str:
    _, kind, namespace, name = ref.split("|")
    return f"{kind} {namespace + '/' if namespace else ''}{name}"


# -- documents -> objects -----------------------------------------------------------------

def parse(sources: list[dict]) -> tuple[list[dict], list[str]]:
    """[{source, text, namespace?}] -> ([{source, definition, namespace?}], problems), every
    problem located; ``namespace``: where a source's namespaced objects go when they name
    none (a Helm release's)."""
    problems, objects = [], []
    for item in sources:
        where = item["source"]
        try:
            docs = list(yaml.safe_load_all(item["text"]))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            problems.append(f"{where}{line}: invalid YAML: {getattr(exc, 'problem', exc)}")
            continue
        for index, doc in enumerate(docs, 1):
            if doc is None:
                continue
            at = f"{where} (document {index})"
            if not isinstance(doc, dict):
                problems.append(f"{at}: not a mapping")
                continue
            missing = [k for k in ("apiVersion", "kind") if not doc.get(k)]
            if not (doc.get("metadata") or {}).get("name"):
                missing.append("metadata.name")
            if missing:
                problems.append(f"{at}: missing {', '.join(missing)}")
                continue
            if doc["kind"].endswith("List") and "items" in doc:
                problems.append(f"{at}: a List; write its items as separate documents")
                continue
            objects.append({"source": at, "definition": doc,
                            "namespace": item.get("namespace")})
    return objects, problems


def crd_kinds(objects: list[dict]) -> dict[tuple, bool]:
    """{(group, kind): namespaced} of the kinds the CRDs in the set define."""
    kinds = {}
    for obj in objects:
        doc = obj["definition"]
        if doc["kind"] == "CustomResourceDefinition":
            spec = doc.get("spec") or {}
            kind = (spec.get("names") or {}).get("kind")
            if kind:
                kinds[(spec.get("group", ""), kind)] = spec.get("scope") != "Cluster"
    return kinds


def prepare(objects, served, target, revision, previous, namespace="default"):
    """Check kinds, place, mark and order the objects: (objects, problems).

    ``served``: {(apiVersion, kind): namespaced} of the kinds the server has (None: not
    known, every kind accepted); ``previous``: the inventory of the last apply ({ref:
    {digest, revision, ...}}): an object whose content is unchanged keeps the revision that
    last changed it, so that a new commit changes only the objects it touches."""
    defined = crd_kinds(objects)
    problems, seen, out = [], {}, []
    for obj in objects:
        doc = copy.deepcopy(obj["definition"])
        key = (doc["apiVersion"], doc["kind"])
        crd_key = (group_of(doc["apiVersion"]), doc["kind"])
        if served is not None and key not in served and crd_key not in defined:
            problems.append(f"{obj['source']}: unknown kind {doc['kind']} ({doc['apiVersion']}): "
                            "no such API on the server and no CustomResourceDefinition in "
                            "these manifests defines it")
            continue
        namespaced = served.get(key, defined.get(crd_key)) if served is not None else \
            defined.get(crd_key, doc["kind"] not in ("Namespace", "CustomResourceDefinition"))
        meta = doc.setdefault("metadata", {})
        if namespaced and not meta.get("namespace"):
            meta["namespace"] = obj.get("namespace") or namespace
        if not namespaced:
            meta.pop("namespace", None)
        ref = ref_of(doc)
        if ref in seen:
            problems.append(f"{obj['source']}: {ref_label(ref)} is also defined in {seen[ref]}")
            continue
        seen[ref] = obj["source"]
        out.append(_mark({"source": obj["source"], "definition": doc, "ref": ref,
                          "namespace": meta.get("namespace") or "",
                          "new_kind": served is not None and key not in served},
                         target, revision, previous))
    out.sort(key=_order)
    return out, problems


def _mark(obj, target, revision, previous) -> dict:
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
    return obj


def _order(obj) -> tuple:
    kind = obj["definition"]["kind"]
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER) + (
        1 if kind in WORKLOADS else 0)
    return (rank, obj["namespace"], kind, obj["definition"]["metadata"]["name"])


# -- the no-op path ------------------------------------------------------------------------

def fingerprint(live: dict) -> str:
    """What changes whenever anyone but a status writer changes the object: its uid and
    its managedFields (every write records its manager, its fields and the time), the
    status subresource's entries left out (controllers report there all the time)."""
    meta = live.get("metadata") or {}
    entries = [e for e in meta.get("managedFields") or [] if e.get("subresource") != "status"]
    text = json.dumps([meta.get("uid"), entries], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def in_sync(obj: dict, live: dict | None, recorded: dict) -> bool:
    """Git has not changed the object since it was last applied or found equal to Git, and
    nobody has written it since then: nothing to ask the server."""
    return bool(live and recorded and recorded.get("digest") == obj["digest"]
                and recorded.get("fingerprint") == fingerprint(live))


# -- Git wins: kubectl's fields become ours ---------------------------------------------------

KUBECTL_MANAGER = re.compile(r"^(kubectl(-.+)?|before-first-apply)$")
# Left to whoever holds them when Git does not set them: an autoscaler or a person's
# `kubectl scale` of a Deployment whose manifest leaves replicas out.
KEPT_UNLESS_SET = (("f:spec", "f:replicas"),)


def _merge(into: dict, fields: dict) -> dict:
    for key, value in fields.items():
        into[key] = _merge(dict(into.get(key) or {}), value) if isinstance(value, dict) \
            and value else into.get(key, value)
    return into


def takeover(live: dict, desired: dict, manager: str) -> tuple[list | None, list[str]]:
    """The managedFields that hand every field held by kubectl's managers (client-side
    apply, edit, patch, scale, set, label ...) to ``manager``'s Apply entry, and the names
    of those managers; (None, []) when kubectl holds nothing. The next server-side apply
    then removes what only kubectl had set, and restores what it had changed."""
    entries = (live.get("metadata") or {}).get("managedFields") or []
    taken = [e for e in entries if KUBECTL_MANAGER.match(e.get("manager") or "")
             and e.get("subresource") != "status"]
    if not taken:
        return None, []
    ours = next((e for e in entries if e.get("manager") == manager
                 and e.get("operation") == "Apply" and not e.get("subresource")), None)
    fields = copy.deepcopy((ours or {}).get("fieldsV1") or {})
    for entry in taken:
        held = copy.deepcopy(entry.get("fieldsV1") or {})
        for path in KEPT_UNLESS_SET:
            if not _has(desired, [p[2:] for p in path]):
                _drop(held, path)
        _merge(fields, held)
    merged = {"manager": manager, "operation": "Apply", "apiVersion": live.get("apiVersion"),
              "time": (ours or taken[0]).get("time"), "fieldsType": "FieldsV1",
              "fieldsV1": fields}
    rest = [e for e in entries if e is not ours and all(e is not t for t in taken)]
    return [merged] + rest, sorted({e["manager"] for e in taken})


def _has(doc, keys) -> bool:
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return False
        doc = doc[key]
    return True


def _drop(fields: dict, path: tuple) -> None:
    node = fields
    for key in path[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(path[-1], None)


# -- reports ---------------------------------------------------------------------------------

def changes(before: dict | None, after: dict) -> list[str]:
    """'path: before -> after' for every leaf that differs (what a server or a controller
    writes left out); lists of named items are keyed by name (containers[name=app])."""
    was, now = dict(_leaves(before or {})), dict(_leaves(after or {}))
    paths = [p for p in sorted(set(was) | set(now))
             if not p.startswith(NOT_DRIFT) and was.get(p) != now.get(p)]
    shown = [f"{p}: {_value(was.get(p))} -> {_value(now.get(p))}" for p in paths[:SHOWN_PATHS]]
    if len(paths) > SHOWN_PATHS:
        shown.append(f"(+{len(paths) - SHOWN_PATHS} more)")
    return shown


LIST_KEYS = ("name", "port", "containerPort", "key", "type", "mountPath", "ip", "path")


def _leaves(value, prefix=""):
    """(path, leaf value) pairs; a list of mappings that share a key is keyed by it."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
        key = next((k for k in LIST_KEYS if all(k in i for i in value)
                    and len({json.dumps(i[k]) for i in value}) == len(value)), None)
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}[{key}={item[key]}]" if key else
                               f"{prefix}[{index}]")
    elif prefix:
        yield prefix, value


def _value(value) -> str:
    if value is None:
        return "(none)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= VALUE_MAX else text[:VALUE_MAX - 3] + "..."


def server_message(status: int | None, body) -> str:
    """The message of a Kubernetes Status body (JSON), else the body's first line."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    message = message or (text.strip().splitlines() or [""])[0][:500]
    return f"{message} (HTTP {status})" if status and not message.endswith(")") else message


def fields_held(live: dict, managers: list[str]) -> list[str]:
    """The field paths ``managers`` hold on ``live``, readable ('spec.ports[port=8080]')."""
    paths = []
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") in managers and entry.get("subresource") != "status":
            paths += _field_paths(entry.get("fieldsV1") or {})
    return sorted(set(paths))


def _field_paths(fields: dict, prefix="") -> list[str]:
    out = []
    for key, value in fields.items():
        if key == ".":
            continue
        if key.startswith("f:"):
            step = f"{prefix}.{key[2:]}" if prefix else key[2:]
        elif key.startswith("k:"):
            try:
                item = json.loads(key[2:])
                step = f"{prefix}[{','.join(f'{k}={v}' for k, v in item.items())}]"
            except ValueError:
                step = f"{prefix}[{key[2:]}]"
        elif key.startswith("v:"):
            step = f"{prefix}[{key[2:]}]"
        else:
            step = f"{prefix}.{key}"
        # a list item is named whole (spec.ports[port=8080,protocol=TCP])
        leaf = key.startswith("k:") or not isinstance(value, dict) or not set(value) - {"."}
        if step.startswith("metadata.annotations." + ANNOTATION) or \
                step.startswith(("metadata.labels." + MANAGED_BY[0])):
            continue
        out += [step] if leaf else _field_paths(value, step)
    return out


# -- prune -----------------------------------------------------------------------------------

def stale(previous: dict, current: dict) -> list[str]:
    """Refs applied before and no longer in Git, in reverse apply order (CRDs, namespaces
    last)."""
    gone = [ref for ref in previous or {} if ref not in (current or {})]
    last = {"Namespace": 2, "CustomResourceDefinition": 1}
    return sorted(gone, key=lambda ref: (last.get(ref.split("|")[1], 0), ref))


def prunable(live: dict | None, target: str, namespaces: bool = False) -> str | None:
    """None when ``live`` may be deleted (ours, this target's, not opted out), else why
    it stays. Namespaces only with ``namespaces``: deleting one deletes everything in it,
    objects that are not ours too."""
    if live is None:
        return "gone already"
    meta = live.get("metadata") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    if live.get("kind") == "Namespace" and not namespaces:
        return "a Namespace (k8s_manifests_prune_namespaces is off)"
    if labels.get(MANAGED_BY[0]) != MANAGED_BY[1] or notes.get(ANNOTATION + "target") != target:
        return "no longer ours"
    if notes.get(ANNOTATION + "prune") == PRUNE_DISABLED:
        return f"annotated {ANNOTATION}prune={PRUNE_DISABLED}"
    return None


# -- health (kstatus) --------------------------------------------------------------------------

def _conditions(status) -> dict:
    return {c.get("type"): c for c in (status or {}).get("conditions") or []
            if isinstance(c, dict)}


def _why(cond) -> str:
    return f"{cond.get('type')}={cond.get('status')} ({cond.get('reason')}: {cond.get('message')})"


def health(obj: dict) -> tuple[str, str | None]:
    """(current | progressing | failed, why not current), as kstatus computes it."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    status, meta = obj.get("status") or {}, obj.get("metadata") or {}
    conds = _conditions(status)
    if kind == "Job":
        return _job(status, conds)
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return "progressing", "the controller has not observed the last change yet"
    if kind in ("Deployment", "StatefulSet", "DaemonSet") and observed is None:
        return "progressing", "the controller has not reported on it yet"
    if kind == "Deployment":
        return _deployment(spec, status, conds)
    if kind == "StatefulSet":
        return _statefulset(spec, status)
    if kind == "DaemonSet":
        return _daemonset(status)
    stalled, ready = conds.get("Stalled") or {}, conds.get("Ready")
    if stalled.get("status") == "True":
        return "failed", _why(stalled)
    if (conds.get("Reconciling") or {}).get("status") == "True":
        return "progressing", _why(conds["Reconciling"])
    if ready is not None and ready.get("status") != "True":
        return "progressing", _why(ready)
    return "current", None


def _job(status, conds):
    if (conds.get("Complete") or {}).get("status") == "True":
        return "current", None
    failed = conds.get("Failed") or {}
    if failed.get("status") == "True":
        return "failed", f"failed: {failed.get('reason')}: {failed.get('message')}"
    return "progressing", (f"not complete: {status.get('succeeded', 0)} succeeded, "
                           f"{status.get('active', 0)} active, {status.get('failed', 0)} failed")


def _deployment(spec, status, conds):
    want = spec.get("replicas", 1)
    # the API leaves out a count that is 0: availableReplicas absent means none available
    ready, updated = status.get("readyReplicas", 0), status.get("updatedReplicas", 0)
    available, total = status.get("availableReplicas", 0), status.get("replicas", 0)
    progressing = conds.get("Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return "failed", _deployment_why(want, ready, updated, available, conds)
    if updated < want or total > updated or available < want or ready < want:
        return "progressing", _deployment_why(want, ready, updated, available, conds)
    if (conds.get("Available") or {}).get("status") == "False":
        return "progressing", _deployment_why(want, ready, updated, available, conds)
    return "current", None


def _deployment_why(want, ready, updated, available, conds) -> str:
    why = f"{ready} of {want} replicas ready, {updated} updated, {available} available"
    for name in ("Available", "Progressing", "ReplicaFailure"):
        cond = conds.get(name)
        if cond and (cond.get("status") != "True" or cond.get("reason") ==
                     "ProgressDeadlineExceeded"):
            why += f"; {_why(cond)}"
    return why


def _statefulset(spec, status):
    want = spec.get("replicas", 1)
    ready, available = status.get("readyReplicas", 0), status.get("availableReplicas", 0)
    current, updated = status.get("currentReplicas", 0), status.get("updatedReplicas", 0)
    rolling = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"
    partition = ((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get(
        "partition", 0)
    why = f"{ready} of {want} replicas ready, {available} available, {updated} updated"
    if ready < want or available < want or status.get("replicas", 0) > want:
        return "progressing", why
    if rolling and partition == 0 and (status.get("updateRevision") !=
                                       status.get("currentRevision") or current < want):
        return "progressing", f"{why}; rolling update to {status.get('updateRevision')} running"
    if rolling and partition and updated < want - partition:
        return "progressing", f"{why}; partitioned rollout at {partition}"
    return "current", None


def _daemonset(status):
    want = status.get("desiredNumberScheduled", 0)
    scheduled = status.get("currentNumberScheduled", 0)
    updated = status.get("updatedNumberScheduled", 0)
    ready, available = status.get("numberReady", 0), status.get("numberAvailable", 0)
    if scheduled < want or updated < want or ready < want or available < want:
        return "progressing", (f"{ready} of {want} pods ready, {available} available, "
                               f"{updated} updated")
    return "current", None


# -- the inventory of applied objects -----------------------------------------------------

def inventory_data(inventory: dict) -> dict:
    return {"objects.json": json.dumps(inventory, sort_keys=True, indent=0)}


def inventory_read(configmap: dict | None) -> dict:
    text = ((configmap or {}).get("data") or {}).get("objects.json")
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
