#!/usr/bin/python
"""Server-side apply (or dry-run, in check mode) of a list of objects, for k8s_manifests."""
from __future__ import annotations

import copy

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubernetes.core.plugins.module_utils.args_common import (
    AUTH_ARG_SPEC,
)
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import (
    get_api_client,
)
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.core import (
    AnsibleK8SModule,
)
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.exceptions import (
    CoreException,
)
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.runner import (
    perform_action,
)
from ansible_collections.kubernetes.core.plugins.module_utils.k8s.service import (
    K8sService,
)

DOCUMENTATION = r"""
module: k8s_manifests_apply
short_description: Apply Kubernetes objects one by one, and stop when the API server goes away
description:
  - What kubernetes.core.k8s does with C(apply), C(server_side_apply) (conflicts forced),
    C(continue_on_error) and C(hidden_fields=[metadata.managedFields]), object by object
    with its own code (perform_action), except for a connection failure.
  - kubernetes.core 6.6 puts the urllib3 exception of a connection failure (refused, reset,
    timed out) into its result; Ansible cannot serialize it, so the whole task fails with
    "Value of unknown type" and the results of the objects applied before are lost. Here
    every error is text, and the first connection failure stops the apply: the task fails,
    saying which server stopped answering and how many objects were applied before, with
    the results of those in I(objects); the objects after it are not attempted, instead of
    each failing after urllib3's retries.
  - In check mode, a server-side dry-run.
options:
  definitions:
    description: The objects, in apply order.
    type: list
    elements: dict
    required: true
  field_manager:
    description: Server-side apply field manager.
    type: str
    required: true
  kubeconfig:
    description: As kubernetes.core.k8s (all its connection options are accepted).
    type: raw
  context:
    description: As kubernetes.core.k8s.
    type: str
"""

RETURN = r"""
objects:
  description: One result per object attempted, in the order given (as kubernetes.core.k8s
    returns them, or C({changed: false, error: {msg}})); the objects after a stop are missing.
  returned: always
  type: list
  elements: dict
stopped:
  description: Why the apply stopped (the API server stopped answering), else null.
  returned: always
  type: str
"""


def transport_error(exc: BaseException):
    """The urllib3 error behind ``exc`` (connection refused, reset, timed out), if any."""
    import urllib3

    seen = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.HTTPError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def socket_error(error: BaseException) -> OSError | None:
    """The operating system's error under urllib3's (ECONNREFUSED, ECONNRESET, a timeout):
    a MaxRetryError keeps it in .reason, a ProtocolError in its arguments."""
    import urllib3

    inner = [getattr(error, "reason", None), error.__cause__, error.__context__, *error.args]
    for item in inner:
        if isinstance(item, OSError) and not isinstance(item, urllib3.exceptions.HTTPError):
            return item
        found = socket_error(item) if isinstance(item, BaseException) else None
        if found:
            return found
    return None


def stopped_message(server: str, error: BaseException, definition: dict) -> str:
    cause = socket_error(error)
    why = (cause.strerror or str(cause)) if cause else str(error)
    meta = definition.get("metadata") or {}
    where = "/".join(filter(None, (meta.get("namespace"), meta.get("name"))))
    return f"the API server {server} stopped answering ({why}) at {definition['kind']} {where}"


def apply_all(module: AnsibleK8SModule) -> dict:
    # kubernetes.core.k8s's options for it, where its service reads them: module.params
    params = module.params
    params.update(apply=True, state="present", hidden_fields=["metadata.managedFields"],
                  server_side_apply={"field_manager": params["field_manager"],
                                     "force_conflicts": True})
    client = get_api_client(module)
    svc = K8sService(client, module)
    results, stopped = [], None
    for definition in params["definitions"]:
        try:
            results.append(perform_action(svc, definition, params))
        except Exception as exc:  # noqa: BLE001 - as kubernetes.core's continue_on_error
            results.append({"changed": False, "error": {"msg": str(exc)}})
            cut = transport_error(exc)
            if cut is not None:
                stopped = stopped_message(client.configuration.host, cut, definition)
                break
    result = {"changed": any(r["changed"] for r in results), "objects": results,
              "stopped": stopped}
    if stopped:
        done = sum(1 for r in results if "error" not in r)
        rest = len(params["definitions"]) - done
        result["msg"] = f"{stopped}; " + (
            "a dry-run: nothing applied" if module.check_mode else
            f"{done} object(s) applied before it, the other {rest} not (or not confirmed)")
    return result


def main() -> None:
    spec = copy.deepcopy(AUTH_ARG_SPEC)
    spec.update(definitions={"type": "list", "elements": "dict", "required": True},
                field_manager={"type": "str", "required": True})
    module = AnsibleK8SModule(module_class=AnsibleModule, argument_spec=spec,
                              supports_check_mode=True)
    try:
        result = apply_all(module)
    except CoreException as exc:  # the client could not be made (kubeconfig, context)
        module.fail_from_exception(exc)
    if result["stopped"]:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
