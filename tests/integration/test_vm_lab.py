"""The VM lab itself: one TCG guest defined and started through virsh, reached over SSH.

One boot only: define to SSH ~40 s on 2 quiet cores under TCG (2-3.5 min measured while
other builds loaded them), plus 5-7 min once per machine for the guest image (`make
vm-assets`). The later `vm` platform
tests build on the same fixture.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from lab.libvirt import qemu_rss_kib, wait_ssh
from tests.conftest import require

pytestmark = pytest.mark.vm


def _dominfo(lab, name: str) -> dict[str, str]:
    out = lab.virsh("dominfo", name).stdout
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def test_vm_boots_and_answers_ssh_with_injected_key_and_hostname(vm_lab):
    require(shutil.which("ssh") is not None, "ssh (openssh-client) is not installed")
    vm = vm_lab.prepare("t1", hostname="vm-test-1", memory_mib=768, vcpus=2)
    try:
        started = time.monotonic()
        vm_lab.virsh("define", vm.xml_path)
        vm_lab.virsh("start", vm.name)
        wait_ssh(vm.port, console_log=vm.console_log)
        to_ssh = time.monotonic() - started

        done = vm_lab.ssh(vm, "uname -r; hostname")
        assert done.returncode == 0, done.stderr
        kernel, hostname = done.stdout.split()
        assert hostname == "vm-test-1"
        built = json.loads((vm_lab.image.directory / "build.json").read_text())
        assert built["kernel"] == f"vmlinuz-{kernel}"  # booted the image's own kernel

        info = _dominfo(vm_lab, vm.name)
        assert info["State"] == "running"
        assert info["CPU(s)"] == "2"
        assert info["Max memory"] == f"{768 * 1024} KiB"
        assert info["Used memory"] == f"{768 * 1024} KiB"

        rss_mib = qemu_rss_kib(vm.name) / 1024
        print(f"\nVM {vm.name}: define -> SSH {to_ssh:.1f} s, qemu RSS {rss_mib:.0f} MiB")
    finally:
        vm_lab.virsh("destroy", vm.name, check=False)
        vm_lab.virsh("undefine", vm.name, check=False)
    assert vm.name not in vm_lab.domains()
