"""roles/vm/templates/domain.xml.j2: the domain the VM platform defines.

Rendered with plain Jinja2 (the template uses only builtin filters), then compared with the
lab's domain (lab/libvirt.py:domain_xml), which boots under TCG on these machines:
the same XML apart from the metadata that marks the domain as ours.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import pytest

from lab.guest import GuestImage
from lab.libvirt import domain_xml
from tests.conftest import ROOT

ROLE = ROOT / "roles" / "vm"
NS = "https://gitops-ansible.dev/xmlns/vm/1"


def defaults() -> dict:
    import yaml

    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def render(**overrides) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined)
    values = {k: v for k, v in defaults().items() if "{{" not in str(v)}
    values.update({
        "inventory_hostname": "web-vm-01", "vm_name": "web-vm-01", "vm_environment": "dev",
        "vm_image": "debian", "vm_ssh_port": 2201, "vm_memory_mib": 768, "vm_vcpus": 2,
        "vm_dir": "/srv/vms",
        "vm_images": {"debian": {"base": "/img/base.qcow2", "kernel": "/img/vmlinuz",
                                 "initrd": "/img/initrd.img"}},
    })
    values.update(overrides)
    return env.get_template("domain.xml.j2").render(**values)


def canonical(element: ET.Element) -> tuple:
    return (element.tag, sorted(element.attrib.items()), (element.text or "").strip(),
            [canonical(child) for child in element])


def test_same_domain_as_the_lab_apart_from_our_metadata():
    ours = ET.fromstring(render())
    metadata = ours.find("metadata")
    ours.remove(metadata)
    image = GuestImage(Path("/img"), Path("/img/base.qcow2"), Path("/img/vmlinuz"),
                       Path("/img/initrd.img"))
    d = Path("/srv/vms/web-vm-01")
    lab = ET.fromstring(domain_xml("web-vm-01", image, d / "root.qcow2", d / "seed.img", 2201,
                                   768, 2, d / "console.log"))
    assert canonical(ours) == canonical(lab)


def test_metadata_marks_the_domain_as_ours():
    marker = ET.fromstring(render()).find(f"metadata/{{{NS}}}vm")
    assert marker is not None
    assert marker.findtext(f"{{{NS}}}managed-by") == "gitops-ansible"
    assert marker.findtext(f"{{{NS}}}environment") == "dev"
    assert marker.findtext(f"{{{NS}}}inventory-host") == "web-vm-01"


def test_resources_and_port_forward_follow_the_definition():
    root = ET.fromstring(render(vm_memory_mib=2048, vm_vcpus=3, vm_ssh_port=40022))
    assert root.findtext("memory") == "2048" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "3"
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert "user,id=gatnet0,hostfwd=tcp:127.0.0.1:40022-:22" in args


def test_values_are_escaped():
    root = ET.fromstring(render(inventory_hostname="a<b>&c"))
    assert root.find(f"metadata/{{{NS}}}vm").findtext(f"{{{NS}}}inventory-host") == "a<b>&c"


def test_kvm_domains_have_no_tcg_cache():
    root = ET.fromstring(render(vm_domain_type="kvm"))
    assert root.get("type") == "kvm"
    assert root.find("features/tcg") is None


def test_unknown_image_does_not_render():
    with pytest.raises(jinja2.UndefinedError):
        render(vm_image="nope")
