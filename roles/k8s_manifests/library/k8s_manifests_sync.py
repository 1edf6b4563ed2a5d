#!/usr/bin/python
"""Converge one cluster on its rendered manifests in one module run (or, in check mode,
say what a converge would do); the role's tasks/main.yml calls it once per target."""
from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.k8s_manifests_api import ApiError, Cluster, Stopped
from ansible.module_utils.k8s_manifests_core import (
    MANAGED_BY, PHASE1_KINDS, WORKLOADS, changes, fields_held, fingerprint, health, in_sync,
    inventory_data, inventory_read, parse, prepare, prunable, ref_label, stale, takeover,
)
from ansible_collections.kubernetes.core.plugins.module_utils.args_common import (
    AUTH_ARG_SPEC,
)
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.core import (
    AnsibleK8SModule,
)
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.exceptions import (
    CoreException,
)

DOCUMENTATION = r"""
module: k8s_manifests_sync
short_description: Converge a cluster on its manifests (check, take over, apply, prune)
description:
  - Parses the rendered manifests, checks every kind against the server (aggregated
    discovery: two requests), gives namespaced objects that name no namespace the target's,
    marks them as ours and orders them (namespaces and CRDs first).
  - Reads the live objects with one LIST per kind (our label). An object whose content in
    Git and whose managedFields are those recorded when it was last found equal to Git is
    in sync without a request; every other one is dry-run on the server (server-side
    apply, conflicts forced). A rejection refuses the revision before anything is applied
    (C(gitops_refused)).
  - Fields held by kubectl's managers (client-side apply, edit, patch, scale, set ...) are
    handed to our manager first, so that the apply removes or restores them: Git wins.
  - Applies what differs, namespaces and CRDs first (waiting for the CRDs to be
    established), prunes what was applied before and left Git, records the inventory, and
    reads the health of every object (kstatus); those not yet healthy are returned in
    I(waiting) for the role's health task.
  - The first connection failure (refused, reset, timed out) stops the apply; the task
    fails saying which server stopped answering and how many objects were applied before.
  - In check mode nothing is written: the dry-runs are the report.
options:
  sources:
    description: Built sources (kustomize, Helm), C([{source, text, namespace?}]).
    type: list
    elements: dict
    default: []
  templates:
    description: The manifest files rendered by the role, relative to the repository.
    type: list
    elements: str
    default: []
  rendered:
    description: Their rendered text, in the same order.
    type: list
    elements: str
    default: []
  problems:
    description: Problems found while rendering (each refuses the revision).
    type: list
    elements: str
    default: []
  target: {description: The inventory target., type: str, required: true}
  revision: {description: The Git revision recorded on changed objects., type: str, required: true}
  namespace: {description: Namespace of namespaced objects that name none., type: str, default: default}
  field_manager: {description: Server-side apply field manager., type: str, required: true}
  inventory_namespace: {description: Namespace of the inventory ConfigMap., type: str, required: true}
  prune: {description: Delete objects applied before and no longer in Git., type: bool, default: true}
  prune_namespaces: {description: Namespaces too., type: bool, default: false}
  parallel: {description: Requests in flight at once for reads and dry-runs., type: int, default: 8}
  kubeconfig: {description: As kubernetes.core.k8s (all its connection options are accepted)., type: raw}
  context: {description: As kubernetes.core.k8s., type: str}
"""

RETURN = r"""
applied:
  description: "One line per object created ('Kind ns/name: created'), changed ('Kind ns/name:
    path: before -> after, ...') or whose kubectl fields were taken over; in check mode what
    would be."
  type: list
pruned: {description: "'Kind ns/name: pruned' (check mode: would be), or 'kept (why)'.", type: list}
healthy: {description: "'Kind ns/name' of the workloads found healthy.", type: list}
waiting: {description: "Objects not healthy yet ({ref, path, why}).", type: list}
unchanged: {description: Objects found equal to Git., type: int}
"""

INVENTORY_PREFIX = "inventory-"
CRD_TIMEOUT = 60


class Sync:
    def __init__(self, module: AnsibleK8SModule):
        self.module, self.params = module, module.params
        self.check = module.check_mode
        self.cluster = Cluster(module)
        self.pool = ThreadPoolExecutor(max(1, self.params["parallel"]))
        self.result = {"changed": False, "applied": [], "pruned": [], "healthy": [],
                       "waiting": [], "unchanged": 0}
        self.done: list[str] = []  # what was applied, in order

    # -- steps ----------------------------------------------------------------------------
    def run(self) -> dict:
        params = self.params
        rendered = [{"source": source, "text": text}
                    for source, text in zip(params["templates"], params["rendered"])]
        objects, problems = parse(rendered + params["sources"])
        problems = list(params["problems"]) + problems
        served = self.cluster.discover()
        previous_cm = self.cluster.get(
            f"v1|ConfigMap|{params['inventory_namespace']}|{INVENTORY_PREFIX}{params['target']}")
        previous = inventory_read(previous_cm)
        objects, more = prepare(objects, served, params["target"], params["revision"],
                                previous, params["namespace"])
        if problems + more:
            self.refuse(f"{len(problems + more)} invalid manifest(s), nothing applied",
                        problems + more)
        live = self.read_live(objects, previous)
        todo = [o for o in objects if not in_sync(o, live.get(o["ref"]), previous.get(o["ref"]))]
        self.result["unchanged"] = len(objects) - len(todo)
        namespaces = self.namespaces(todo)
        now = [o for o in todo if not o["new_kind"] and (
            not o["namespace"] or o["namespace"] in namespaces)]
        later = [o for o in todo if o not in now]
        seen = self.dry_run(now, live, refuse=True)
        inventory = {o["ref"]: self.record(o, previous, live, seen) for o in objects}
        if self.check:
            for obj in later:
                self.result["applied"].append(f"{ref_label(obj['ref'])}: would be created")
            self.prune(previous, inventory, live)
            self.result["changed"] = self.changed()
            return self.result
        waiting = {o["ref"] for o in later} | set(seen["differ"])
        self.converge([o for o in todo if o["ref"] in waiting], later, live, inventory)
        self.prune(previous, inventory, live)
        self.record_inventory(previous_cm, previous, inventory)
        self.health(objects, live, inventory)
        self.result["changed"] = self.changed()
        return self.result

    def read_live(self, objects, previous) -> dict:
        """One LIST per kind of the objects and of the inventory (to prune)."""
        kinds = {tuple(o["ref"].split("|")[:2]) for o in objects} | {
            tuple(ref.split("|")[:2]) for ref in previous}
        kinds = sorted(k for k in kinds if k in self.cluster.kinds)
        live = {}
        for found in self.pool.map(lambda k: self.cluster.list_ours(*k), kinds):
            live.update(found)
        return live

    def namespaces(self, objects) -> set:
        wanted = sorted({o["namespace"] for o in objects if o["namespace"]})
        got = self.pool.map(lambda n: self.cluster.get(f"v1|Namespace||{n}"), wanted)
        return {name for name, obj in zip(wanted, got) if obj is not None}

    def dry_run(self, objects, live, refuse: bool) -> dict:
        """Server-side dry-run of ``objects``; every rejection refuses (or fails, when
        something was applied already). {differ: {ref: dry-run result}, same: {...}}."""
        takeovers = {o["ref"]: self.takeover_plan(o, live.get(o["ref"])) for o in objects}

        def one(obj):
            try:
                return self.cluster.apply(obj, self.params["field_manager"], True), None
            except ApiError as exc:
                return None, f"{obj['source']}: {ref_label(obj['ref'])}: {exc}"

        results = list(self.pool.map(one, objects))
        # an object kubectl holds fields of is checked by its apply, after the takeover
        # (the dry-run keeps kubectl's fields: a replaced list item is then a duplicate)
        errors = [e for obj, (_, e) in zip(objects, results) if e and not takeovers[obj["ref"]]]
        if errors:
            what = f"the server rejects {len(errors)} object(s)"
            if refuse:
                self.refuse(f"{what}, nothing applied", errors)
            self.fail(f"{what}; applied so far: namespaces and CRDs only "
                      f"({', '.join(self.done) or 'none'})", errors)
        seen = {"differ": {}, "same": {}}
        for obj, (after, error) in zip(objects, results):
            before = live.get(obj["ref"])
            taken = takeovers[obj["ref"]]
            if taken and self.check:
                self.result["applied"].append(taken["line"])
            if error:  # kubectl's fields are taken over first
                seen["differ"][obj["ref"]] = None
                continue
            diff = changes(before, after) if before else None
            if before is None or diff or taken:
                seen["differ"][obj["ref"]] = after
                if self.check and before is None:
                    self.result["applied"].append(f"{ref_label(obj['ref'])}: would be created")
                elif self.check and diff:
                    self.result["applied"].append(f"{ref_label(obj['ref'])}: {', '.join(diff)}")
            else:
                seen["same"][obj["ref"]] = after
        return seen

    def takeover_plan(self, obj, live) -> dict | None:
        if not live:
            return None
        fields, managers = takeover(live, obj["definition"], self.params["field_manager"])
        if fields is None:
            return None
        held = fields_held(live, managers)
        shown = ", ".join(held[:8]) + (f" (+{len(held) - 8} more)" if len(held) > 8 else "")
        return {"fields": fields, "line": f"{ref_label(obj['ref'])}: fields of "
                f"{', '.join(managers)} taken over: {shown or '(none)'}"}

    def converge(self, todo, later, live, inventory) -> None:
        """Apply what differs: namespaces and CRDs, then (after a dry-run of what needed
        them) the rest, in kind order."""
        first = [o for o in todo if o["definition"]["kind"] in PHASE1_KINDS]
        rest = [o for o in todo if o["definition"]["kind"] not in PHASE1_KINDS]
        self.apply_all(first, live, inventory)
        for obj in first:
            if obj["definition"]["kind"] == "CustomResourceDefinition":
                self.established(obj)
                self.cluster.learn(obj)
        if later:
            later_rest = [o for o in later if o["definition"]["kind"] not in PHASE1_KINDS]
            self.dry_run(later_rest, live, refuse=not first)
        self.apply_all(rest, live, inventory)

    def apply_all(self, objects, live, inventory) -> None:
        for obj in objects:
            before = live.get(obj["ref"])
            taken = self.takeover_plan(obj, before)
            try:
                if taken:
                    self.take_over(obj, before, taken)
                after = self.cluster.apply(obj, self.params["field_manager"], False)
            except Stopped as exc:
                self.stop(obj, exc)
            except ApiError as exc:
                self.fail(f"1 of {len(objects)} object(s) failed to apply; the objects "
                          "before it were applied; no prune, no inventory update",
                          [f"{obj['source']}: {ref_label(obj['ref'])}: {exc}"])
            label = ref_label(obj["ref"])
            self.done.append(label)
            if before is None:
                self.result["applied"].append(f"{label}: created")
            else:
                diff = changes(before, after)
                if diff:
                    self.result["applied"].append(f"{label}: {', '.join(diff)}")
            live[obj["ref"]] = after
            inventory[obj["ref"]]["fingerprint"] = fingerprint(after)

    def take_over(self, obj, before, taken) -> None:
        patch = [{"op": "test", "path": "/metadata/resourceVersion",
                  "value": before["metadata"]["resourceVersion"]},
                 {"op": "replace", "path": "/metadata/managedFields", "value": taken["fields"]}]
        self.cluster.request("PATCH", self.cluster.ref_path(obj["ref"]), None,
                             patch, "application/json-patch+json")
        self.result["applied"].append(taken["line"])

    def established(self, obj) -> None:
        name = obj["definition"]["metadata"]["name"]
        deadline = time.monotonic() + CRD_TIMEOUT
        while True:
            crd = self.cluster.get(obj["ref"]) or {}
            conds = {c.get("type"): c.get("status")
                     for c in (crd.get("status") or {}).get("conditions") or []}
            if conds.get("Established") == "True":
                return
            if time.monotonic() > deadline:
                self.fail(f"CustomResourceDefinition {name} not established after "
                          f"{CRD_TIMEOUT}s; namespaces and CRDs were applied", [])
            time.sleep(0.5)

    def record(self, obj, previous, live, seen) -> dict:
        """The object's inventory entry: its fingerprint when it is (found) equal to Git."""
        entry = {"digest": obj["digest"], "revision": obj["revision"]}
        ref = obj["ref"]
        if ref in seen["same"] and live.get(ref):
            entry["fingerprint"] = fingerprint(live[ref])
        elif ref not in seen["differ"] and (previous.get(ref) or {}).get("fingerprint"):
            entry["fingerprint"] = previous[ref]["fingerprint"]
        return entry

    def prune(self, previous, inventory, live) -> None:
        if not self.params["prune"]:
            return
        for ref in stale(previous, inventory):
            obj = live.get(ref) if tuple(ref.split("|")[:2]) in self.cluster.kinds else None
            why = prunable(obj, self.params["target"], self.params["prune_namespaces"])
            label = ref_label(ref)
            if why:
                if why != "gone already":
                    self.result["pruned"].append(f"{label}: kept ({why})")
                continue
            if not self.check:
                try:
                    self.cluster.request("DELETE", self.cluster.ref_path(ref), None,
                                         {"propagationPolicy": "Background"},
                                         "application/json")
                except ApiError as exc:
                    if exc.status != 404:
                        self.fail("pruning failed; everything in Git was applied",
                                  [f"{label}: {exc}"])
                except Stopped as exc:
                    self.stop({"ref": ref}, exc)
            self.result["pruned"].append(f"{label}: {'would be pruned' if self.check else 'pruned'}")

    def record_inventory(self, previous_cm, previous, inventory) -> None:
        if previous_cm is not None and previous == inventory:
            return
        ns, name = self.params["inventory_namespace"], INVENTORY_PREFIX + self.params["target"]
        docs = [] if previous_cm is not None else [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}]
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": name, "namespace": ns,
                                  "labels": {MANAGED_BY[0]: MANAGED_BY[1]}},
                     "data": inventory_data(inventory)})
        for doc in docs:
            meta = doc["metadata"]
            ref = "|".join(("v1", doc["kind"], meta.get("namespace", ""), meta["name"]))
            try:
                self.cluster.apply({"ref": ref, "definition": doc},
                                   self.params["field_manager"], False)
            except (ApiError, Stopped) as exc:
                self.fail(f"everything was applied, but the inventory {ns}/{name} could not "
                          f"be recorded: {exc}", [])

    def health(self, objects, live, inventory) -> None:
        for obj in objects:
            found = live.get(obj["ref"])
            if found is None:
                continue
            state, why = health(found)
            label = ref_label(obj["ref"])
            if state == "current":
                conds = (found.get("status") or {}).get("conditions") or []
                if obj["definition"]["kind"] in WORKLOADS or any(
                        isinstance(c, dict) and c.get("type") == "Ready" for c in conds):
                    self.result["healthy"].append(label)
            else:
                self.result["waiting"].append({"ref": obj["ref"], "label": label,
                                               "path": self.cluster.ref_path(obj["ref"]),
                                               "state": state, "why": why})

    # -- endings ----------------------------------------------------------------------------
    def changed(self) -> bool:
        r = self.result
        return bool(r["applied"] or [p for p in r["pruned"] if not p.endswith(")")])

    def refuse(self, what: str, problems: list[str]) -> None:
        self.module.fail_json(msg=f"{what}: {'; '.join(problems)}",
                              gitops_refused=True, problems=problems, **self.result)

    def fail(self, what: str, problems: list[str]) -> None:
        tail = f": {'; '.join(problems)}" if problems else ""
        self.module.fail_json(msg=f"{what}{tail}", **self.result)

    def stop(self, obj, exc: Stopped) -> None:
        self.module.fail_json(
            msg=f"the API server {self.cluster.server} stopped answering ({exc}) at "
                f"{ref_label(obj['ref'])}; "
                + ("a dry-run: nothing applied" if self.check else
                   f"{len(self.done)} object(s) applied before it, the others not (or not "
                   "confirmed); no prune, no inventory update"),
            stopped=str(exc), **self.result)


def main() -> None:
    spec = copy.deepcopy(AUTH_ARG_SPEC)
    spec.update(
        sources={"type": "list", "elements": "dict", "default": []},
        templates={"type": "list", "elements": "str", "default": []},
        rendered={"type": "list", "elements": "str", "default": []},
        problems={"type": "list", "elements": "str", "default": []},
        target={"type": "str", "required": True},
        revision={"type": "str", "required": True},
        namespace={"type": "str", "default": "default"},
        field_manager={"type": "str", "required": True},
        inventory_namespace={"type": "str", "required": True},
        prune={"type": "bool", "default": True},
        prune_namespaces={"type": "bool", "default": False},
        parallel={"type": "int", "default": 8})
    module = AnsibleK8SModule(module_class=AnsibleModule, argument_spec=spec,
                              supports_check_mode=True)
    try:
        sync = Sync(module)
        result = sync.run()
    except CoreException as exc:  # the client could not be made (kubeconfig, context)
        module.fail_from_exception(exc)
    except Stopped as exc:
        module.fail_json(msg=f"the API server stopped answering ({exc}) before anything was "
                             "applied", stopped=str(exc))
    except ApiError as exc:
        module.fail_json(msg=f"the API server answered: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
