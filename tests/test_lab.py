"""The host lab itself works: systemd hosts, SSH, Ansible, apt through the proxy, stop/start,
reset, rekey; and the lab's cached helm renders a chart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lab.hosts import HostLab
from lab.kube import HELM_KUBE_VERSION, HELM_VERSION

pytestmark = pytest.mark.baremetal
VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


def ssh(lab, name, command):
    host = lab.hosts[name]
    return subprocess.run(
        ["ssh", "-i", str(lab.key), "-o", f"UserKnownHostsFile={lab.known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
         "-p", str(host.port), f"root@{host.address}", command],
        capture_output=True, text=True, timeout=60)


def leftovers(prefix):
    """Interfaces, namespaces, overlay mounts, cgroups and processes a lab with PREFIX would
    leave."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [w for w in (links + netns).split() if w.startswith(f"{prefix}-")]
    found += [m for m in Path("/proc/self/mountinfo").read_text().splitlines()
              if f"gitops-lab-{prefix} " in m]
    cgroups = Path("/sys/fs/cgroup")
    found += [str(c) for pattern in (f"gitops-lab-{prefix}-*", f"*/gitops-lab-{prefix}-*")
              for c in cgroups.glob(pattern)]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return found + [p for p in ps.splitlines() if f"gitops-lab:{prefix}:" in p]


def test_ssh_into_every_host(host_lab):
    for name in host_lab.hosts:
        result = ssh(host_lab, name, "hostname")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == name


def test_hosts_boot_systemd_with_sshd_and_journald(host_lab):
    """Each host booted from a pristine filesystem: this module may run after others that
    left the session's hosts with failed units of their own."""
    machine_ids = set()
    for name in host_lab.hosts:
        host_lab.reset_host(name)
        state = ssh(host_lab, name, "systemctl is-system-running").stdout.strip()
        assert state == "running", host_lab.boot_report(name)
        assert ssh(host_lab, name, "systemctl --failed --no-legend --plain").stdout == ""
        assert ssh(host_lab, name, "cat /proc/1/comm").stdout.strip() == "systemd"
        active = ssh(host_lab, name, "systemctl is-active ssh systemd-journald dbus")
        assert active.stdout.split() == ["active"] * 3
        journal = ssh(host_lab, name, "journalctl -b -u ssh --no-pager")
        assert "Server listening on 0.0.0.0 port 22" in journal.stdout
        machine_ids.add(ssh(host_lab, name, "cat /etc/machine-id").stdout.strip())
    assert len(machine_ids) == len(host_lab.hosts)


def test_a_host_that_boots_with_a_failed_unit_is_booted_again_then_refused_naming_it(
        lab_rootfs, tmp_path):
    """A unit that fails on a pristine host is the lab's fault: one more boot, with a warning
    that carries the host's report; the second failure stops the lab with that report."""
    layer = tmp_path / "layer/etc/systemd/system"
    (layer / "multi-user.target.wants").mkdir(parents=True)
    (layer / "gat-broken.service").write_text(
        "[Unit]\nDescription=fails at every boot\n[Service]\nType=oneshot\n"
        "ExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n")
    (layer / "multi-user.target.wants/gat-broken.service").symlink_to("../gat-broken.service")
    lab = HostLab(tmp_path / "lab", ["web-1"], prefix="gatboot", subnet="198.18.14",
                  rootfs=lab_rootfs, layers={"web-1": [tmp_path / "layer"]})
    with pytest.warns(RuntimeWarning, match="booting web-1 once more") as warned:
        with pytest.raises(RuntimeError) as refused:
            lab.start()
    boots = [str(w.message) for w in warned if w.category is RuntimeWarning]
    assert len(boots) == 1
    for report in (*boots, str(refused.value)):
        assert "host web-1 of lab gatboot: systemd says 'degraded' after booting" in report
        assert "gat-broken.service" in report.split("$ systemctl --failed", 1)[1]
    assert leftovers("gatboot") == []


def test_only_per_namespace_sysctls_are_writable_in_a_host(host_lab):
    ours = Path("/proc/sys/net/core/somaxconn").read_text()
    try:
        assert ssh(host_lab, "web-1", "sysctl -w net.core.somaxconn=1234").returncode == 0
        assert ssh(host_lab, "web-1", "sysctl -n net.core.somaxconn").stdout.strip() == "1234"
        assert Path("/proc/sys/net/core/somaxconn").read_text() == ours
        refused = ssh(host_lab, "web-1", "sysctl -w kernel.pid_max=40000")
        assert refused.returncode != 0
    finally:
        host_lab.reset_host("web-1")


def test_ansible_playbook_on_all_hosts(host_lab, tmp_path):
    (tmp_path / "inventory.yml").write_text(json.dumps(host_lab.inventory()))
    (tmp_path / "site.yml").write_text("""
- hosts: all
  tasks:
    - ansible.builtin.ping:
    - ansible.builtin.user: {name: deploy, shell: /bin/bash}
    - ansible.builtin.command: sysctl -w net.ipv4.ip_forward=1
    - ansible.builtin.copy: {dest: /etc/motd, content: "{{ inventory_hostname }}\\n"}
""")
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", ANSIBLE_NOCOLOR="1",
               ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp"))
    try:
        run = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "inventory.yml",
                              "site.yml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        for name, host in host_lab.hosts.items():
            assert (host.root / "etc/motd").read_text() == f"{name}\n"
            assert "\ndeploy:" in (host.root / "etc/passwd").read_text()
            forward = host_lab.exec(name, ["cat", "/proc/sys/net/ipv4/ip_forward"])
            assert forward.stdout.strip() == "1"
    finally:
        for name in host_lab.hosts:  # leave the shared hosts pristine
            host_lab.reset_host(name)


def test_apt_installs_through_the_proxy(host_lab):
    started = time.monotonic()
    install = host_lab.exec("db-1", ["apt-get", "install", "-y", "-q", "cron"], timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    print(f"apt-get install cron: {time.monotonic() - started:.1f} s")
    try:
        assert host_lab.exec("db-1", ["service", "cron", "start"]).returncode == 0
        assert host_lab.exec("db-1", ["pgrep", "-x", "cron"]).returncode == 0
        # not an open proxy: anything but the Debian mirror is refused
        probe = ("import urllib.request as u, urllib.error as e\n"
                 f"o = u.build_opener(u.ProxyHandler({{'http': '{host_lab.proxy_url}'}}))\n"
                 "try: o.open('http://example.com/', timeout=10)\n"
                 "except e.HTTPError as err: print(err.code)\n")
        assert host_lab.exec("db-1", ["python3", "-c", probe]).stdout.strip() == "403"
    finally:
        host_lab.reset_host("db-1")


def test_stopped_host_is_unreachable_until_started(host_lab):
    assert ssh(host_lab, "web-2", "touch /root/kept").returncode == 0
    boot_id = "cat /proc/sys/kernel/random/boot_id"
    first_boot = ssh(host_lab, "web-2", boot_id).stdout
    host_lab.stop_host("web-2")
    down = ssh(host_lab, "web-2", "true")
    assert down.returncode == 255 and "refused" in down.stderr
    host_lab.start_host("web-2")
    assert ssh(host_lab, "web-2", "test -e /root/kept").returncode == 0
    # a power cycle: booted anew, to the end
    assert ssh(host_lab, "web-2", boot_id).stdout not in ("", first_boot)
    assert ssh(host_lab, "web-2", "systemctl is-system-running").stdout.strip() == "running"
    host_lab.reset_host("web-2")


def test_reset_host_gives_a_pristine_filesystem(host_lab):
    assert ssh(host_lab, "web-1", "useradd alice && touch /root/marker").returncode == 0
    host_lab.reset_host("web-1")
    assert ssh(host_lab, "web-1", "test ! -e /root/marker && ! id alice").returncode == 0
    assert not (host_lab.hosts["web-1"].root / "root/marker").exists()


def test_rekeyed_host_fails_host_key_check(host_lab):
    host_lab.rekey_host("web-1")
    mismatch = ssh(host_lab, "web-1", "true")
    assert mismatch.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in mismatch.stderr
    host_lab.rekey_host("web-1", update_known_hosts=True)
    assert ssh(host_lab, "web-1", "true").returncode == 0


def test_cli_lab_outlives_the_command_and_down_leaves_nothing(lab_rootfs, tmp_path):
    lab_cli = [sys.executable, "-m", "lab"]
    started = time.monotonic()
    up = subprocess.run(lab_cli + ["up", "--dir", str(tmp_path), "--prefix", "gatcli",
                                   "--subnet", "198.18.1", "--hosts", "solo-1,solo-2"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert time.monotonic() - started < 20, "starting two hosts from a cached rootfs is slow"
    try:
        lab = HostLab.from_state(tmp_path)
        assert json.loads(up.stdout)["hosts"] == {"solo-1": "198.18.1.11", "solo-2": "198.18.1.12"}
        assert ssh(lab, "solo-2", "hostname").stdout.strip() == "solo-2"
    finally:
        down = subprocess.run(lab_cli + ["down", "--dir", str(tmp_path)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert leftovers("gatcli") == []


def test_cached_helm_renders_a_chart_with_values_from_stdin(helm, tmp_path):
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "templates/cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  x: {{ .Values.x | quote }}\n"
        "  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n")
    env = dict(os.environ, **{f"HELM_{kind}_HOME": str(tmp_path / kind.lower())
                              for kind in ("CACHE", "CONFIG", "DATA")})

    def run(*args, stdin=None):
        done = subprocess.run([str(helm), *args], input=stdin, capture_output=True, text=True,
                              env=env, timeout=60)
        assert done.returncode == 0, f"helm {' '.join(args)}: {done.stderr}"
        return done.stdout

    assert run("version", "--short").strip() == HELM_VERSION
    rendered = yaml.safe_load(run("template", "demo", str(chart), "--values", "-",
                                  stdin="x: from stdin\n"))
    assert rendered["metadata"]["name"] == "demo-cm"
    # the Kubernetes version stamped in as Helm's release build does (v1.37.0), not v1.20.0
    kube = f"v{'.'.join(HELM_KUBE_VERSION)}.0"
    assert rendered["data"] == {"x": "from stdin", "kube": kube}
