"""The `vm` platform end to end on a local hypervisor (the lab's libvirtd, guest image and
key; lab/libvirt.py).

One VM for the module, driven by commits and `gitops-ansible run` in an environment that
also holds the lab's bare hosts: converge (define, start, SSH, guest roles), an unchanged
rerun, a memory change reported as a pending restart then applied by a restart (a second
boot), removal from Git reported as orphaned, then pruned. The refusals boot nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab.libvirt import qemu_pid
from lab.system import free_port
from tests.conftest import ROOT, events, roles_by_host

pytestmark = pytest.mark.vm
NS = "https://gitops-ansible.dev/xmlns/vm/1"


def write_inventory(lab, tmp_path: Path, vms: dict) -> Path:
    image = lab.image
    group_vars = {
        "platform": "vm", "vm_hypervisor": "localhost", "vm_hypervisors": ["localhost"],
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


def guest(lab, port: int, command: str) -> str:
    done = subprocess.run(
        ["ssh", "-i", str(lab.key), "-p", str(port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def messages(done) -> list[str]:
    """What the run reported per task (recorded with the task: output, JSON, store)."""
    return [e["message"] for e in events(done) if e["event"] == "task_result" and e.get("message")]


def dominfo(lab, name: str) -> dict[str, str]:
    out = lab.virsh("dominfo", name).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


# The suite's longest test, first in its module: under xdist (`make test`) a worker is
# handed its next module while two tests of this one remain, which then waits behind them.
@pytest.mark.baremetal
def test_a_vm_from_git_beside_bare_hosts(cli, git_servers, host_lab, vm_lab, tmp_path,
                                          request):
    """Commit by commit, as a user drives it: declare, rerun, change memory (pending, then
    restart), remove (orphaned), prune. The first commit mixes the VM with the lab's bare
    hosts, each with its platform's roles."""
    from tests.integration.test_baremetal import VAULT, bare_metal_roles_only, lab_estate

    tree = lab_estate(git_servers, host_lab, tmp_path, request.node.name)
    inv, name, port = tree.path / "inventories/lab", f"{vm_lab.prefix}web", free_port()
    vm_dir = tmp_path / "vms"
    image = vm_lab.image
    (inv / "group_vars/all.yml").write_text(yaml.safe_dump({
        "gitops_environment": "lab", "vm_hypervisors": ["localhost"], "vm_dir": str(vm_dir),
        "vm_images": {"debian-bookworm": {"base": str(image.base), "kernel": str(image.kernel),
                                          "initrd": str(image.initrd)}}}))
    # The guest gets the bare hosts' host-role settings, reached through its SSH forward.
    guest_vars = yaml.safe_load((inv / "group_vars/baremetal.yml").read_text())
    guest_vars = {k: v for k, v in guest_vars.items() if k.startswith("host_")}
    guest_vars.update({
        "platform": "vm", "vm_hypervisor": "localhost", "ansible_host": "127.0.0.1",
        "ansible_port": "{{ vm_ssh_port }}", "ansible_user": "root",
        "ansible_ssh_private_key_file": str(vm_lab.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "vm_authorized_keys": Path(f"{vm_lab.key}.pub").read_text()})
    (inv / "group_vars/vms.yml").write_text(yaml.safe_dump(guest_vars))
    vm = {"vm_image": "debian-bookworm", "vm_ssh_port": port, "vm_memory_mib": 768,
          "vm_vcpus": 1, "vm_hostname": "web-vm"}
    (inv / "host_vars").mkdir(exist_ok=True)
    host_vars = inv / f"host_vars/{name}.yml"
    host_vars.write_text(yaml.safe_dump(vm))
    hosts_file = inv / "hosts.yml"
    hosts = yaml.safe_load(hosts_file.read_text())
    hosts["all"]["children"]["vms"] = {"hosts": {name: None}}
    hosts_file.write_text(yaml.safe_dump(hosts))
    tree.commit("a VM beside the bare hosts")

    def run(message: str, code: int):
        tree.commit(message)
        return cli("run", "--repo", tree.url, "--env", "lab", *VAULT, "--json",
                   timeout=1800, check_code=code)

    # 1. Declared: defined with its resources, running, SSH, the guest roles converged;
    #    the bare hosts get the host roles only, the VM the vm role and the host roles.
    done = cli("run", "--repo", tree.url, "--env", "lab", *VAULT, "--json", timeout=1800,
               check_code=2)
    roles = roles_by_host(done)
    assert "vm" in roles[name] and {"host_packages", "host_files", "host_services"} <= roles[name]
    for host in ("web-1", "web-2", "db-1"):
        assert bare_metal_roles_only(roles, host), roles
    assert vm_lab.domains() == [name]
    info = dominfo(vm_lab, name)
    assert (info["State"], info["Max memory"], info["CPU(s)"]) == ("running", "786432 KiB", "1")
    assert guest(vm_lab, port, "hostname") == "web-vm"
    assert guest(vm_lab, port, "dpkg-query -W -f '${Status}' tree") == "install ok installed"
    assert guest(vm_lab, port, "systemctl is-active cron") == "active"
    assert "platform: vm" in guest(vm_lab, port, "cat /etc/motd")
    assert "deploy:" in guest(vm_lab, port, "getent passwd deploy")
    assert "deploy:" in host_lab.exec("web-1", ["getent", "passwd", "deploy"]).stdout
    qemu = qemu_pid(name)

    # 2. A commit that does not touch the VM: nothing changes, no restart.
    hosts["all"]["children"]["baremetal"]["children"].pop("web")
    hosts["all"]["children"].pop("hardened")  # a subset of the web hosts
    hosts_file.write_text(yaml.safe_dump(hosts))
    done = run("the web hosts leave this environment", 0)
    assert qemu_pid(name) == qemu

    # 3. More memory: with the default policy the definition changes and the restart is
    #    reported as pending; with `restart` it happens.
    host_vars.write_text(yaml.safe_dump({**vm, "vm_memory_mib": 1024}))
    tree.commit("web-vm: 1 GiB")
    plan = cli("plan", "--repo", tree.url, "--env", "lab", *VAULT, "--json", timeout=1800,
               check_code=2)
    assert any("PENDING RESTART" in m for m in messages(plan)), messages(plan)
    assert "<memory unit='KiB'>786432</memory>" in vm_lab.virsh(
        "dumpxml", "--inactive", name).stdout  # plan changed nothing
    done = cli("run", "--repo", tree.url, "--env", "lab", *VAULT, "--json", timeout=1800,
               check_code=2)
    assert any(f"PENDING RESTART: {name} runs 768 MiB and 1 vCPU(s), Git says 1024 MiB" in m
               for m in messages(done)), messages(done)
    assert dominfo(vm_lab, name)["Used memory"] == "786432 KiB" and qemu_pid(name) == qemu
    assert "<memory unit='KiB'>1048576</memory>" in vm_lab.virsh(
        "dumpxml", "--inactive", name).stdout
    host_vars.write_text(yaml.safe_dump({**vm, "vm_memory_mib": 1024,
                                         "vm_restart_policy": "restart"}))
    done = run("web-vm: restart now", 2)
    assert "PENDING RESTART" not in done.stdout
    assert any(e["event"] == "task_result" and e["task"] == "Shut the VM down"
               and e["status"] == "changed" for e in events(done))
    assert dominfo(vm_lab, name)["Max memory"] == "1048576 KiB" and qemu_pid(name) != qemu
    assert guest(vm_lab, port, "hostname") == "web-vm"

    # 4. Removed from Git: reported orphaned and left alone; a domain defined by hand (no
    #    metadata) is never reported or touched.
    foreign = vm_lab.prepare("handmade")
    vm_lab.virsh("define", foreign.xml_path)
    try:
        hosts["all"]["children"].pop("vms")
        hosts_file.write_text(yaml.safe_dump(hosts))
        host_vars.unlink()
        done = run("web-vm leaves Git", 2)
        reports = messages(done)
        assert any(f"ORPHANED VM {name} on localhost" in m and "left alone" in m
                   for m in reports), reports
        assert not any(foreign.name in m for m in reports)
        assert dominfo(vm_lab, name)["State"] == "running"

        # 5. The prune policy on: powered off, undefined, its files gone.
        all_vars = yaml.safe_load((inv / "group_vars/all.yml").read_text())
        (inv / "group_vars/all.yml").write_text(yaml.safe_dump({**all_vars, "vm_prune": True}))
        tree.commit("prune orphaned VMs")
        plan = cli("plan", "--repo", tree.url, "--env", "lab", *VAULT, "--json",
                   timeout=1800, check_code=2)
        assert any(f"ORPHANED VM {name}" in m and "would be removed" in m
                   for m in messages(plan)), messages(plan)
        assert dominfo(vm_lab, name)["State"] == "running"
        done = cli("run", "--repo", tree.url, "--env", "lab", *VAULT, "--json", timeout=1800,
                   check_code=2)
        assert name not in vm_lab.virsh("list", "--all", "--name").stdout.split()
        assert not (vm_dir / name).exists()
        assert foreign.name in vm_lab.domains()
    finally:
        vm_lab.virsh("undefine", foreign.name, check=False)


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
        f"{vm_lab.prefix}c": {"vm_image": "debian", "vm_ssh_port": free_port(),
                              "vm_name": f"{vm_lab.prefix}a"},
    })
    done = converge(inventory)
    assert done.returncode != 0
    assert f"SSH port {port} on localhost is taken by" in done.stdout
    assert f"VM name {vm_lab.prefix}a is declared by {vm_lab.prefix}a, {vm_lab.prefix}c" \
        in done.stdout, done.stdout[-3000:]
    assert not (tmp_path / "vms").exists()
    assert vm_lab.domains() == []

    inventory = write_inventory(vm_lab, tmp_path, {
        f"{vm_lab.prefix}a": {"vm_image": "debian", "vm_ssh_port": port,
                              "vm_hypervisor": "hv-elsewhere"}})
    done = converge(inventory)
    assert done.returncode != 0
    assert "vm_hypervisor is hv-elsewhere, which vm_hypervisors (localhost) does not list" \
        in done.stdout, done.stdout[-3000:]
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
