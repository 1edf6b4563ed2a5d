#!/usr/bin/python
"""Wait for the objects k8s_manifests_sync found not healthy yet (kstatus's verdict)."""
from __future__ import annotations

import copy
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.k8s_manifests_api import ApiError, Cluster, Stopped
from ansible.module_utils.k8s_manifests_core import health
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
module: k8s_manifests_health
short_description: Wait until objects are healthy, as kstatus defines it
description:
  - Reads each object every I(delay) seconds until it is current (healthy), failed
    (a Deployment past its progress deadline, a failed Job, a Stalled condition), or
    I(timeout) seconds have passed; fails naming every object that is not healthy and why
    (replicas ready, updated and available, the conditions that say why).
options:
  objects:
    description: The objects to wait for (C([{label, path}]), as k8s_manifests_sync returns them in I(waiting)).
    type: list
    elements: dict
    required: true
  timeout: {description: Seconds to wait., type: int, required: true}
  delay: {description: Seconds between reads., type: float, default: 2}
  kubeconfig: {description: As kubernetes.core.k8s (all its connection options are accepted)., type: raw}
  context: {description: As kubernetes.core.k8s., type: str}
"""

RETURN = r"""
healthy: {description: "'Kind ns/name' of the objects that became healthy.", type: list}
unhealthy: {description: "'Kind ns/name: why' of the objects that did not.", type: list}
"""


def wait(cluster: Cluster, objects: list[dict], timeout: int, delay: float) -> tuple:
    deadline = time.monotonic() + timeout
    pending = {o["label"]: o for o in objects}
    healthy, why = [], {}
    while pending:
        for label, obj in list(pending.items()):
            try:
                state, reason = health(cluster.request("GET", obj["path"]))
            except ApiError as exc:
                state, reason = ("failed", "not found") if exc.status == 404 else \
                    ("progressing", str(exc))
            if state == "current":
                healthy.append(label)
                del pending[label]
            elif state == "failed":
                why[label] = reason
                del pending[label]
            else:
                why[label] = reason
        if not pending or time.monotonic() + delay > deadline:
            break
        time.sleep(delay)
    return healthy, [f"{label}: {why[label]}" for label in sorted(why) if label not in healthy]


def main() -> None:
    spec = copy.deepcopy(AUTH_ARG_SPEC)
    spec.update(objects={"type": "list", "elements": "dict", "required": True},
                timeout={"type": "int", "required": True},
                delay={"type": "float", "default": 2})
    module = AnsibleK8SModule(module_class=AnsibleModule, argument_spec=spec,
                              supports_check_mode=True)
    params = module.params
    try:
        healthy, unhealthy = wait(Cluster(module), params["objects"], params["timeout"],
                                  params["delay"])
    except CoreException as exc:
        module.fail_from_exception(exc)
    except Stopped as exc:
        module.fail_json(msg=f"the API server stopped answering ({exc}) while waiting for "
                             "health")
    if unhealthy:
        module.fail_json(msg=f"not healthy after {params['timeout']}s: " + "; ".join(unhealthy),
                         healthy=healthy, unhealthy=unhealthy)
    module.exit_json(changed=False, healthy=healthy, unhealthy=[])


if __name__ == "__main__":
    main()
