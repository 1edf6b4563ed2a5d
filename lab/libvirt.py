"""libvirt for the VM lab: a running libvirtd and TCG guests reached over SSH on 127.0.0.1.

    uri = ensure_libvirtd()                     # "qemu:///system"; starts it unless it answers
    lab = VmLab(workdir, prefix="gatlab-")      # .image .key .known_hosts .uri
    with lab:                                   # start() ... stop()
        vm = lab.prepare("web-1", memory_mib=1024, vcpus=1)   # files + XML, nothing defined
        lab.virsh("define", vm.xml_path); lab.virsh("start", vm.name)
        wait_ssh(vm.port, console_log=vm.console_log)
        lab.ssh(vm, "hostname")                 # CompletedProcess; strict host key checking
        qemu_rss_kib(vm.name)

These helpers serve the tests and their fixtures only: the product defines its VMs through
Ansible (community.libvirt). A test gets from here what such a hypervisor host needs: a
libvirtd, the cached guest image (guest.py), a client key pair, and cleanup of every domain
whose name starts with the lab's prefix (start() first removes what a crashed run left).

libvirtd is started by hand (no systemd as PID 1 here): `virtlogd -d`, then `libvirtd -d`,
under a lock, only when its socket does not answer; once started it keeps running for later
sessions, like the image cache. It also gives /dev/kvm Debian's udev permissions (root:kvm
0660; see _kvm_device_as_debian: without them every define/start re-probes QEMU). Debian's
libvirt-daemon-system(-sysv) package provides qemu.conf, the libvirt-qemu user and
/var/log/libvirt; without the package libvirtd's QEMU driver does not start ("Failed to
parse user 'libvirt-qemu'"). -sysv rather than -systemd: no systemd pulled in.

Domains (domain_xml): type='qemu' (TCG; /dev/kvm here cannot run a stock guest kernel),
translation cache 128 MiB (<tcg><tb-cache>, i.e. -accel tcg,tb-size=128), direct kernel
boot of the image's kernel and initrd, vda = a qcow2 overlay on the base image, vdb = the
seed disk (hostname, authorized_keys, SSH host key; guest.make_seed), serial console on a
pty logged to console.log, no graphics (libvirt rejects <graphics type='none'/>; omitted
means none), no balloon. The NIC is qemu user-mode networking with
hostfwd=tcp:127.0.0.1:PORT-:22, which libvirt 9.0 cannot express (port forwards there
need passt), so it goes in <qemu:commandline> with an explicit PCI address that libvirt
does not hand out (slot 0x1e). qemu runs as root without relabelling (per-domain DAC
seclabel): the cached base image and kernel stay root-owned and shared by concurrent VMs.
"""

from __future__ import annotations

import fcntl
import grp
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from .cache import cache_root
from .guest import GUEST_KEY, GuestImage, ensure_guest_image, make_seed
from .system import free_port, run, ssh_banner

URI = "qemu:///system"
SOCKET = "/run/libvirt/libvirt-sock"
VIRTLOGD_SOCKET = "/run/libvirt/virtlogd-sock"
LOG_DIR = Path("/var/log/libvirt")
NIC_PCI_SLOT = 0x1e  # free on i440fx: libvirt fills slots upwards from 0x02
BOOT_TIMEOUT = 480  # seconds to SSH under TCG: ~2-3.5 min measured with load 7-8 on 2 cores
VIRSH_ENV = {"LIBVIRT_DEFAULT_URI": URI, "LANG": "C"}


@dataclass
class Vm:
    name: str          # the libvirt domain: PREFIX + short name
    hostname: str      # what the seed sets inside the guest
    port: int          # 127.0.0.1:PORT -> guest :22
    memory_mib: int
    vcpus: int
    dir: Path
    overlay: Path
    seed: Path
    host_key: Path     # private; .pub beside it; also in known_hosts
    known_hosts: Path  # this VM's line only
    console_log: Path
    xml_path: Path
    xml: str


class VmLab:
    def __init__(self, workdir, prefix: str = "gatlab-", uri: str = URI, cache_dir=None):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,15}-", prefix):
            raise ValueError(f"prefix {prefix!r}: lowercase letters/digits ending in '-'")
        self.workdir = Path(workdir).resolve()
        self.prefix, self.uri, self.cache_dir = prefix, uri, cache_dir
        self.key = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.image: GuestImage | None = None
        self.vms: dict[str, Vm] = {}

    def start(self) -> "VmLab":
        self.workdir.mkdir(parents=True, exist_ok=True)
        ensure_libvirtd()
        self.cleanup()
        self.image = ensure_guest_image(self.cache_dir)
        if not self.key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gitops-vm-lab",
                 "-f", str(self.key))
        return self

    def stop(self) -> None:
        self.cleanup()

    def __enter__(self) -> "VmLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def domains(self) -> list[str]:
        """Every domain (running or not) whose name carries this lab's prefix."""
        out = self.virsh("list", "--all", "--name").stdout.split()
        return [name for name in out if name.startswith(self.prefix)]

    def cleanup(self) -> None:
        """Destroy and undefine this lab's domains; their files in WORKDIR stay (logs)."""
        for name in self.domains():
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, check=False)

    def prepare(self, short_name: str, hostname: str | None = None, memory_mib: int = 1024,
                vcpus: int = 1, port: int | None = None) -> Vm:
        """Files and domain XML for one VM (overlay, seed, host key); defines nothing."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", short_name):
            raise ValueError(f"VM name {short_name!r}: lowercase letters, digits and '-'")
        hostname = hostname or short_name
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", hostname):
            raise ValueError(f"hostname {hostname!r}: lowercase letters, digits and '-'")
        name = self.prefix + short_name
        d = self.workdir / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        taken = {v.port for v in self.vms.values() if v.name != name}
        if port in taken:
            raise ValueError(f"port {port} is already forwarded to another VM of this lab")
        while port is None or port in taken:  # not yet bound by qemu: do not hand out twice
            port = free_port()
        host_key = d / "ssh_host_ed25519_key"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", hostname, "-f", str(host_key))
        kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
        known = d / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
        overlay = self.image.overlay(d / "root.qcow2")
        seed = make_seed(d / "seed.img", hostname, Path(f"{self.key}.pub").read_text(), host_key)
        console = d / "console.log"
        xml = domain_xml(name, self.image, overlay, seed, port, memory_mib, vcpus, console)
        xml_path = d / "domain.xml"
        xml_path.write_text(xml)
        vm = Vm(name, hostname, port, memory_mib, vcpus, d, overlay, seed, host_key, known,
                console, xml_path, xml)
        self.vms[name] = vm
        self.known_hosts.write_text("".join(v.known_hosts.read_text() for v in self.vms.values()))
        return vm

    def virsh(self, *args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["virsh", "-c", self.uri, *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=dict(os.environ, **VIRSH_ENV))
        if check and proc.returncode:
            raise RuntimeError(f"virsh {' '.join(map(str, args))}: exit {proc.returncode}: "
                               f"{proc.stderr.strip()}")
        return proc

    def ssh_argv(self, vm: Vm) -> list[str]:
        return ["ssh", "-i", str(self.key), "-p", str(vm.port), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={vm.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR", "root@127.0.0.1"]

    def ssh(self, vm: Vm, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh_argv(vm), command], capture_output=True, text=True,
                              timeout=timeout)


def domain_xml(name: str, image: GuestImage, overlay: Path, seed: Path, port: int,
               memory_mib: int, vcpus: int, console_log: Path,
               nic_slot: int = NIC_PCI_SLOT) -> str:
    def q(value) -> str:
        return quoteattr(str(value))
    netdev = f"user,id=gatnet0,hostfwd=tcp:127.0.0.1:{port}-:22"
    device = f"virtio-net-pci,netdev=gatnet0,bus=pci.0,addr={nic_slot:#x}"
    return f"""\
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>{int(vcpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(image.cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
    <tcg><tb-cache unit='MiB'>128</tb-cache></tcg>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={q(overlay)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file={q(seed)}/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='pty'>
      <log file={q(console_log)} append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'>
    <label>+0:+0</label>
  </seclabel>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value={q(netdev)}/>
    <qemu:arg value='-device'/>
    <qemu:arg value={q(device)}/>
  </qemu:commandline>
</domain>
"""


# ---- libvirtd -------------------------------------------------------------------------
def ensure_libvirtd(timeout: float = 60) -> str:
    """The libvirt URI, after starting virtlogd and libvirtd unless they already answer."""
    _kvm_device_as_debian()
    if _answers():
        return URI
    run_dir = Path("/run/gitops-ansible-lab")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "libvirtd.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others then reuse
        if _answers():
            return URI
        LOG_DIR.mkdir(parents=True, exist_ok=True)  # both daemons exit without it
        if not _connects_unix(VIRTLOGD_SOCKET):
            _daemon("virtlogd", run_dir)
        _daemon("libvirtd", run_dir)
        deadline = time.monotonic() + timeout
        while not _answers():
            if time.monotonic() > deadline:
                log = LOG_DIR / "libvirtd.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise TimeoutError(f"libvirtd did not answer within {timeout} s\n{tail}")
            time.sleep(0.2)
    return URI


def _kvm_device_as_debian() -> None:
    """/dev/kvm root:kvm 0660, as Debian's udev rules make it; this sandbox leaves it 0600.

    Otherwise libvirt finds KVM usable while probing QEMU and not usable (for the qemu
    user) when it checks its capabilities cache, so it probes QEMU again on every define
    and start: 4 s each on an idle machine, ~50 s under load. The domains stay TCG.
    """
    kvm = Path("/dev/kvm")
    try:
        gid = grp.getgrnam("kvm").gr_gid
        st = kvm.stat()
    except (KeyError, OSError):
        return
    if st.st_gid != gid or st.st_mode & 0o060 != 0o060:
        os.chown(kvm, -1, gid)
        os.chmod(kvm, (st.st_mode & 0o7777) | 0o060)


def _daemon(program: str, run_dir: Path) -> None:
    """PROGRAM -d: it forks into the background and outlives us; no pipes to keep open."""
    with open(run_dir / f"{program}.start.log", "w") as err:
        proc = subprocess.run([program, "-d"], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    if proc.returncode:
        raise RuntimeError(f"{program} -d: exit {proc.returncode}: "
                           f"{(run_dir / f'{program}.start.log').read_text().strip()}")


def _answers() -> bool:
    if not _connects_unix(SOCKET):
        return False
    return subprocess.run(["virsh", "-c", URI, "uri"], capture_output=True,
                          timeout=30).returncode == 0


def _connects_unix(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(path)
        return True
    except OSError:
        return False


# ---- guests ---------------------------------------------------------------------------
def wait_ssh(port: int, host: str = "127.0.0.1", timeout: float = BOOT_TIMEOUT,
             console_log: Path | None = None) -> float:
    """Seconds until sshd's banner arrives on HOST:PORT (the hostfwd port accepts early)."""
    start = time.monotonic()
    while not ssh_banner(host, port, timeout=2.5):
        if time.monotonic() - start > timeout:
            tail = ""
            if console_log and console_log.exists():
                tail = console_log.read_text(errors="replace")[-3000:]
            raise TimeoutError(f"no SSH on {host}:{port} after {timeout} s\n{tail}")
        time.sleep(0.5)
    return time.monotonic() - start


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def qemu_rss_kib(name: str) -> int:
    """Resident memory of the domain's qemu process, in KiB."""
    for line in Path(f"/proc/{qemu_pid(name)}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for the qemu of {name}")


def unavailable_reason(cache_dir=None) -> str | None:
    """Why this machine cannot run the VM lab (None if it can)."""
    if os.geteuid() != 0:
        return "the VM lab needs root (libvirtd on qemu:///system)"
    tools = ["virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "ssh",
             "ssh-keygen"]
    if not (cache_root(cache_dir) / GUEST_KEY / "build.json").is_file():
        tools += ["debootstrap", "mkfs.ext4", "chroot"]
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        return (f"the VM lab needs {', '.join(missing)} (apt-get install libvirt-daemon-system "
                "libvirt-daemon-system-sysv libvirt-clients qemu-system-x86 qemu-utils "
                "debootstrap; or make system)")
    if not Path("/etc/libvirt/qemu.conf").exists():
        return "libvirt's QEMU driver is not configured (apt-get install libvirt-daemon-system)"
    return None

