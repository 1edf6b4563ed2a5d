#!/usr/bin/python
"""List the libvirt domains that gitops-ansible defined (see docs/vm.md)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: vm_domains
short_description: The domains of a hypervisor that carry gitops-ansible's metadata
description:
  - Reads each domain's persistent metadata element in the namespace I(namespace); a domain
    without it is not listed, so nothing built on this list can touch it.
  - Read-only; supports check mode.
options:
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
  namespace:
    description: XML namespace of the metadata element written by the role's domain template.
    type: str
    required: true
"""

RETURN = r"""
domains:
  description: One entry per domain of ours.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Domain name., type: str}
    state: {description: running, shut off, ..., type: str}
    environment: {description: Environment that defined it., type: str}
    inventory_host: {description: Inventory host it was defined for., type: str}
    directory: {description: Directory holding its disks., type: str}
"""

STATES = {1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shut off",
          6: "crashed", 7: "suspended"}


def ours(dom, libvirt, namespace: str) -> dict | None:
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace,
                            libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    except libvirt.libvirtError:
        return None  # no element in our namespace: not ours
    root = ET.fromstring(text)

    def field(name: str) -> str:
        found = root.find(name)
        if found is None:  # libvirt may keep our prefix or drop it
            found = root.find(f"{{{namespace}}}{name}")
        return (found.text or "").strip() if found is not None else ""

    if field("managed-by") != "gitops-ansible":
        return None
    return {"name": dom.name(), "state": STATES.get(dom.state()[0], "unknown"),
            "environment": field("environment"), "inventory_host": field("inventory-host"),
            "directory": field("directory")}


def main() -> None:
    module = AnsibleModule(
        argument_spec={"uri": {"type": "str", "default": "qemu:///system"},
                       "namespace": {"type": "str", "required": True}},
        supports_check_mode=True)
    try:
        import libvirt
    except ImportError:
        module.fail_json(msg="the python libvirt bindings are missing on the hypervisor "
                             "(Debian: python3-libvirt)")
    try:
        conn = libvirt.open(module.params["uri"])
        domains = [d for d in (ours(dom, libvirt, module.params["namespace"])
                               for dom in conn.listAllDomains()) if d]
        conn.close()
    except libvirt.libvirtError as err:
        module.fail_json(msg=f"{module.params['uri']}: {err}")
    module.exit_json(changed=False, domains=sorted(domains, key=lambda d: d["name"]))


if __name__ == "__main__":
    main()
