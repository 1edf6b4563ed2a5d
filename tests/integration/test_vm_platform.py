"""The `vm` platform end to end: playbooks/site.yml converges a VM declared in an inventory
on a local hypervisor (the lab's libvirtd, guest image and key; tests/lab/libvirt.py).

One VM for the module: converge (define, start, SSH, host roles), an unchanged rerun, a
memory change reported as a pending restart, then applied by a restart (a second boot).
The refusals boot nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.lab.fixtures import vm_lab  # noqa: F401  (pytest fixture)
from tests.lab.libvirt import free_port

pytestmark = pytest.mark.vm
NS = "https://gitops-ansible.dev/xmlns/vm/1"


def write_inventory(lab, tmp_path: Path, vms: dict) -> Path:
    image = lab.image
    group_vars = {
        "platform": "vm", "vm_hypervisor": "localhost",
        "ansible_host": "127.0.0.1", "ansible_port": "{{ vm_ssh_port }}", "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "vm_dir": str(tmp_path / "vms"),
        "vm_images": {"debian": {"base": str(image.base), "kernel": str(image.kernel),
                                 "initrd": str(image.initrd)}},
        "vm_authorized_keys": Path(f"{lab.key}.pub").read_text(),
    }
    inventory = {"all": {"vars": {"gitops_environment": "vmtest"},
                         "children": {"vms": {"vars": group_vars, "hosts": vms}}}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def converge(inventory: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run([f"{bin_dir}/ansible-playbook", "-i", str(inventory),
                           "playbooks/site.yml"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)


def recap_changed(out: str) -> int:
    line = next(line for line in out.splitlines() if " changed=" in line and " ok=" in line)
    return int(line.split("changed=")[1].split()[0])


def test_bad_definitions_are_refused_before_anything_is_touched(vm_lab, tmp_path):
    port = free_port()
    inventory = write_inventory(vm_lab, tmp_path, {
        f"{vm_lab.prefix}ok": {"vm_image": "debian", "vm_ssh_port": port},
        f"{vm_lab.prefix}bad": {"vm_image": "nope", "vm_memory_mib": 64, "vm_name": "../x",
                                "vm_ssh_port": free_port()},
    })
    done = converge(inventory)
    assert done.returncode != 0
    assert "unknown base image nope" in done.stdout
    assert "below the minimum" in done.stdout
    assert '"../x" must match' in done.stdout
    assert not (tmp_path / "vms").exists()
    assert vm_lab.domains() == []

    inventory = write_inventory(vm_lab, tmp_path, {
        f"{vm_lab.prefix}a": {"vm_image": "debian", "vm_ssh_port": port},
        f"{vm_lab.prefix}b": {"vm_image": "debian", "vm_ssh_port": port},
    })
    done = converge(inventory)
    assert done.returncode != 0
    assert f"SSH port {port} on localhost is taken by" in done.stdout
    assert vm_lab.domains() == []


def test_a_domain_that_is_not_ours_is_left_alone(vm_lab, tmp_path):
    foreign = vm_lab.prepare("foreign")  # defined by hand: no gitops metadata
    vm_lab.virsh("define", foreign.xml_path)
    try:
        inventory = write_inventory(vm_lab, tmp_path, {
            foreign.name: {"vm_image": "debian", "vm_ssh_port": free_port()}})
        done = converge(inventory)
        assert done.returncode != 0
        assert "that is not this VM" in done.stdout
        assert NS not in vm_lab.virsh("dumpxml", foreign.name).stdout
        assert "running" not in vm_lab.virsh("domstate", foreign.name).stdout
    finally:
        vm_lab.virsh("undefine", foreign.name, check=False)


def test_converge_rerun_and_pending_restart(vm_lab, tmp_path):
    name = f"{vm_lab.prefix}p1"
    vm = {"vm_image": "debian", "vm_ssh_port": free_port(), "vm_memory_mib": 768,
          "vm_vcpus": 1, "vm_hostname": "vm-platform-1"}
    inventory = write_inventory(vm_lab, tmp_path, {name: vm})
    try:
        done = converge(inventory)
        assert done.returncode == 0, done.stdout[-4000:]
        xml = vm_lab.virsh("dumpxml", name).stdout
        assert NS in xml and "<gitops:environment>vmtest</gitops:environment>" in xml
        assert "running" in vm_lab.virsh("domstate", name).stdout
        hostname = subprocess.run(
            ["ssh", "-i", str(vm_lab.key), "-p", str(vm["vm_ssh_port"]), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", "root@127.0.0.1", "hostname"],
            capture_output=True, text=True, timeout=60)
        assert hostname.stdout.strip() == "vm-platform-1", hostname.stderr

        again = converge(inventory)
        assert again.returncode == 0, again.stdout[-4000:]
        assert recap_changed(again.stdout) == 0, again.stdout[-4000:]

        inventory = write_inventory(vm_lab, tmp_path, {name: {**vm, "vm_memory_mib": 1024}})
        pending = converge(inventory)
        assert pending.returncode == 0, pending.stdout[-4000:]
        assert "PENDING RESTART" in pending.stdout
        assert f"{768 * 1024} KiB" in vm_lab.virsh("dominfo", name).stdout  # still running old
        assert "<memory unit='KiB'>1048576</memory>" in vm_lab.virsh(
            "dumpxml", "--inactive", name).stdout

        inventory = write_inventory(vm_lab, tmp_path, {
            name: {**vm, "vm_memory_mib": 1024, "vm_restart_policy": "restart"}})
        restarted = converge(inventory)
        assert restarted.returncode == 0, restarted.stdout[-4000:]
        assert "Shut the VM down" in restarted.stdout
        assert "PENDING RESTART" not in restarted.stdout
        assert f"{1024 * 1024} KiB" in vm_lab.virsh("dominfo", name).stdout
    finally:
        vm_lab.virsh("destroy", name, check=False)
        vm_lab.virsh("undefine", name, check=False)
