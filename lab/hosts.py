"""Bare hosts for tests: sshd in network namespaces, each host on its own overlay rootfs.

    lab = HostLab(workdir, ["web-1", "web-2"], prefix="gattest", subnet="198.18.0")
    with lab:                                   # start() ... stop()
        lab.hosts["web-1"].address              # "198.18.0.11"; also .name .root .port
        lab.exec("web-1", ["hostname"])         # CompletedProcess, run inside the host
        lab.inventory_vars()                    # connection vars for an Ansible inventory

Layout: a bridge PREFIX-br holding SUBNET.1/24 in the root namespace; per host a network
namespace PREFIX-NAME with eth0 = SUBNET.(10+i)/24, i = 1, 2, ... in the order of the names
(no default route: the hosts reach only the bridge address), and a veth PREFIX-hI into the
bridge. start() refuses a subnet that this machine already routes. Each host's root is an
overlay: lower = the cached rootfs (rootfs.py), upper/work in WORKDIR/hosts/NAME, mounted on
the host side at WORKDIR/hosts/NAME/merged (= Host.root, so tests can read what the host has).
sshd runs in that netns inside its own mount, PID, UTS and IPC namespaces, chrooted into the
overlay, with fresh /proc, /sys (read-only), /dev (tmpfs + devpts) and /run. Only net.* of
/proc/sys is writable there: those sysctls are per network namespace; the rest would change
this machine's kernel. apt in the hosts uses the proxy (aptproxy.py) on SUBNET.1:3142.

WORKDIR keeps: id_ed25519 (client key, authorized for root everywhere), known_hosts,
hosts/NAME/ssh_host_ed25519_key (kept across start/stop/reset), hosts/NAME/sshd.log,
aptproxy.log, lab.json (what `python -m lab down` needs). Processes, mounts and links
carry the prefix (command-line tag gitops-lab:PREFIX:..., overlay source gitops-lab-PREFIX,
interface and netns names PREFIX-...), so start() first removes whatever a crashed run with
the same prefix left, and stop() removes all of it again. One lab per prefix at a time: the
process that started a lab holds a lock on its prefix (another start() with that prefix
waits), except `python -m lab up`, whose hosts outlive it (a later `up` replaces them).

start() gives every host a fresh (empty) upper layer. stop_host/start_host: the host's
processes die (SSH: connection refused) and come back with its filesystem kept, like a power
cycle. reset_host: pristine filesystem, same host key. rekey_host: new host key.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root
from .rootfs import ROOTFS_KEY, ensure_rootfs, mirror_hosts
from .system import connects, run, ssh_banner

PROXY_PORT = 3142
LOCK_WAIT = 1200  # seconds to wait while another process uses a lab with the same prefix
# Not 192.0.2 (TEST-NET-1): on the project's machines that is the real uplink's subnet.
DEFAULT_SUBNET = "198.18.0"
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}

# Runs as PID 1 of the host's new namespaces; $1 = merged root, $2 = host name.
HOST_INIT = r"""
set -e
R=$1
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3
mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9
mknod -m 666 "$R/dev/tty" c 5 0
mkdir -m 755 "$R/dev/pts" && mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
mkdir -m 755 "$R/run/sshd" && mkdir -m 1777 "$R/run/lock"
hostname "$2"
exec chroot "$R" /usr/sbin/sshd -D -e -o HostKey=/etc/ssh/ssh_host_ed25519_key
"""


@dataclass
class Host:
    name: str
    address: str
    root: Path  # the merged overlay, seen from this machine
    port: int = 22


class HostLab:
    def __init__(self, workdir, names, prefix="gattest", subnet=DEFAULT_SUBNET,
                 rootfs=None, cache_dir=None):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", prefix):
            raise ValueError(f"prefix {prefix!r}: 1-10 lowercase letters/digits (interface names)")
        if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", subnet):
            raise ValueError(f"subnet {subnet!r}: the first three octets, like 198.18.0")
        if len(set(names)) != len(names) or not 0 < len(names) <= 200 or not all(
                re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", n) for n in names):
            raise ValueError(f"host names {names!r}: unique, lowercase letters, digits and '-'")
        self.workdir = Path(workdir).resolve()
        self.names, self.prefix, self.subnet = list(names), prefix, subnet
        self.rootfs, self.cache_dir = rootfs, cache_dir
        self.gateway = f"{subnet}.1"
        self.bridge = f"{prefix}-br"
        self.key = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.proxy_url = f"http://{self.gateway}:{PROXY_PORT}/"
        self.hosts = {name: Host(name, f"{subnet}.{10 + i}", self._dir(name) / "merged")
                      for i, name in enumerate(self.names, start=1)}
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = None

    # ---- whole lab ---------------------------------------------------------------------
    def start(self) -> "HostLab":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self.cleanup()
            self._check_subnet_free()
            self.rootfs = Path(self.rootfs or ensure_rootfs(self.cache_dir))
            self._make_keys()
            self._write_known_hosts()
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            self._start_proxy()
            for i, name in enumerate(self.names, start=1):
                self._make_netns(i, name)
                self._mount_fresh(name)
                self._spawn(name)
            for name in self.names:
                self._wait_ssh(name)
            self._write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove everything the lab (or a crashed lab with this prefix) made; keep keys, logs."""
        self.cleanup()
        for name in self.names:
            d = self._dir(name)
            if not _mounted_under(d):
                for sub in ("merged", "upper", "work"):
                    shutil.rmtree(d / sub, ignore_errors=True)
        (self.workdir / "lab.json").unlink(missing_ok=True)
        if self._lock:
            self._lock.close()
            self._lock = None

    def cleanup(self) -> None:
        """Kill, unmount and delete whatever carries this lab's prefix."""
        self._kill(f"gitops-lab:{self.prefix}:")
        for line in open("/proc/self/mountinfo"):
            fields = line.split()
            after = fields[fields.index("-") + 1:]
            if after[:2] == ["overlay", f"gitops-lab-{self.prefix}"]:
                _umount(fields[4])
        for ns in _lines("ip", "netns", "list"):
            if ns.split()[0].startswith(self.prefix + "-"):
                run("ip", "netns", "delete", ns.split()[0], check=False)
        for link in _lines("ip", "-o", "link", "show"):
            name = link.split(":")[1].strip().split("@")[0]
            if name.startswith(self.prefix + "-"):
                run("ip", "link", "delete", name, check=False)

    def __enter__(self) -> "HostLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @classmethod
    def from_state(cls, workdir) -> "HostLab":
        """The lab that `start()` recorded in WORKDIR/lab.json (for `down` from another process)."""
        state = json.loads((Path(workdir) / "lab.json").read_text())
        return cls(workdir, state["names"], state["prefix"], state["subnet"], state["rootfs"])

    # ---- one host ----------------------------------------------------------------------
    def exec(self, name: str, argv, **kwargs) -> subprocess.CompletedProcess:
        """Run argv inside host NAME (its namespaces and root), as root; output captured as text."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        cmd = ["nsenter", "-t", str(self._pid1(name)), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
               "--", *argv]
        return subprocess.run(cmd, env=HOST_ENV, **kwargs)

    def stop_host(self, name: str) -> None:
        """All of the host's processes die; its address answers 'connection refused'."""
        self._kill(f"gitops-lab:{self.prefix}:host:{name}")

    def start_host(self, name: str) -> None:
        self.stop_host(name)
        self._spawn(name)
        self._wait_ssh(name)

    def reset_host(self, name: str) -> None:
        """Pristine filesystem (empty upper layer), same host key."""
        self.stop_host(name)
        _umount(str(self.hosts[name].root))
        self._mount_fresh(name)
        self.start_host(name)

    def rekey_host(self, name: str, update_known_hosts: bool = False) -> None:
        """New host key; known_hosts keeps the old one unless update_known_hosts."""
        key = self._dir(name) / "ssh_host_ed25519_key"
        key.unlink(missing_ok=True)
        Path(f"{key}.pub").unlink(missing_ok=True)
        self._make_keys()
        if update_known_hosts:
            self._write_known_hosts()
        self.start_host(name)

    # ---- for inventories ---------------------------------------------------------------
    def inventory_vars(self) -> dict:
        return {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": (
                f"-o UserKnownHostsFile={self.known_hosts} -o GlobalKnownHostsFile=/dev/null"
                " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"),
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def inventory(self) -> dict:
        """A whole YAML inventory (as a dict): every host with ansible_host, plus the vars."""
        return {"all": {"hosts": {h.name: {"ansible_host": h.address} for h in self.hosts.values()},
                        "vars": self.inventory_vars()}}

    # ---- internals ---------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.workdir / "hosts" / name

    def _take_lock(self) -> None:
        """Hold /run/lock/gitops-ansible-lab-PREFIX.lock while this process runs the lab, so a
        second test session with the same prefix waits instead of taking the first one's
        hosts for a crashed run's leftovers. (`python -m lab up` lets go when it exits.)"""
        lock_dir = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
        self._lock = open(lock_dir / f"gitops-ansible-lab-{self.prefix}.lock", "w")
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                return fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab prefix {self.prefix} stayed in use by another "
                                       f"process for {LOCK_WAIT} s") from None
                time.sleep(1)

    def _check_subnet_free(self) -> None:
        """Refuse a subnet this machine already uses: the bridge would hijack its traffic."""
        ours = ipaddress.ip_network(f"{self.subnet}.0/24")
        used = [line.split()[0] for line in _lines("ip", "-4", "route", "show")]
        used += [w[i + 1] for w in map(str.split, _lines("ip", "-o", "-4", "addr", "show"))
                 for i, word in enumerate(w[:-1]) if word == "inet"]
        for net in used:
            if net != "default" and ipaddress.ip_network(net, strict=False).overlaps(ours):
                raise RuntimeError(f"subnet {ours} overlaps {net}, which this machine already "
                                   "uses: choose another lab subnet")

    def _make_keys(self) -> None:
        keys = [self.key] + [self._dir(n) / "ssh_host_ed25519_key" for n in self.names]
        for key in keys:
            if not key.exists():
                key.parent.mkdir(parents=True, exist_ok=True)
                run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gitops-lab",
                     "-f", str(key))

    def _write_known_hosts(self) -> None:
        lines = []
        for name, host in self.hosts.items():
            kind, blob = (self._dir(name) / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            lines.append(f"{host.address} {kind} {blob}\n")
        self.known_hosts.write_text("".join(lines))

    def _start_proxy(self) -> None:
        script = Path(__file__).with_name("aptproxy.py")
        argv = [sys.executable, str(script), "--listen", f"{self.gateway}:{PROXY_PORT}",
                "--cache", str(cache_root(self.cache_dir) / "apt-pool"),
                "--tag", f"gitops-lab:{self.prefix}:proxy"]
        for host in mirror_hosts():
            argv += ["--allow", host]
        self._popen("proxy", argv, self.workdir / "aptproxy.log")
        _wait(lambda: connects(self.gateway, PROXY_PORT), 15, "apt proxy",
              self.workdir / "aptproxy.log")

    def _make_netns(self, i: int, name: str) -> None:
        ns, veth = f"{self.prefix}-{name}", f"{self.prefix}-h{i}"
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "set", veth, "master", self.bridge, "up")
        run("ip", "-n", ns, "addr", "add", f"{self.hosts[name].address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")

    def _mount_fresh(self, name: str) -> None:
        d, host = self._dir(name), self.hosts[name]
        for sub in ("upper", "work"):
            shutil.rmtree(d / sub, ignore_errors=True)
            (d / sub).mkdir(parents=True)
        host.root.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "overlay", f"gitops-lab-{self.prefix}", "-o",
             f"lowerdir={self.rootfs},upperdir={d / 'upper'},workdir={d / 'work'}", str(host.root))
        r = host.root
        (r / "etc/hostname").write_text(f"{name}\n")
        (r / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n{host.address}\t{name}\n")
        (r / "etc/apt/apt.conf.d/01gitops-lab-proxy").write_text(
            f'Acquire::http::Proxy "{self.proxy_url}";\n')
        (r / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(f"{self.key}.pub", r / "root/.ssh/authorized_keys")

    def _spawn(self, name: str) -> None:
        root = self.hosts[name].root
        for suffix in ("", ".pub"):  # the host key lives outside the overlay: reset keeps it
            dest = root / f"etc/ssh/ssh_host_ed25519_key{suffix}"
            shutil.copyfile(self._dir(name) / f"ssh_host_ed25519_key{suffix}", dest)
            dest.chmod(0o644 if suffix else 0o600)
        argv = ["nsenter", f"--net=/run/netns/{self.prefix}-{name}", "--",
                "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child", "--",
                "sh", "-c", HOST_INIT, f"gitops-lab:{self.prefix}:host:{name}", str(root), name]
        self._popen(name, argv, self._dir(name) / "sshd.log")

    def _popen(self, key: str, argv: list[str], log_path: Path) -> None:
        with open(log_path, "ab") as log:  # own session: the lab outlives `python -m lab up`
            self._procs[key] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ssh(self, name: str) -> None:
        host, proc, log = self.hosts[name], self._procs[name], self._dir(name) / "sshd.log"

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"host {name} exited with {proc.returncode}:\n"
                                   + log.read_text(errors="replace")[-2000:])
            return ssh_banner(host.address, host.port)
        _wait(ready, 30, f"sshd on {name}", log)

    def _pid1(self, name: str) -> int:
        """PID (seen from here) of the host's init: the child of its tagged unshare process."""
        tagged = {pid for pid, _, argv in _processes()
                  if f"gitops-lab:{self.prefix}:host:{name}" in argv}
        for pid, ppid, _ in _processes():
            if ppid in tagged:
                return pid
        raise RuntimeError(f"host {name} is not running")

    def _kill(self, tag: str) -> None:
        """SIGKILL the processes tagged TAG (TAG* if it ends with ':') and their children (a
        host's PID 1: with it dies the host's whole PID namespace); wait until they are gone."""
        procs = list(_processes())
        tagged = {pid for pid, _, argv in procs if pid != os.getpid() and any(
            a == tag or (tag.endswith(":") and a.startswith(tag)) for a in argv)}
        victims = tagged | {pid for pid, ppid, _ in procs if ppid in tagged}
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for key, proc in list(self._procs.items()):
            if proc.pid in victims:
                proc.wait()
                del self._procs[key]
        _wait(lambda: not any(_alive(pid) for pid in victims), 15, f"end of {tag} processes")

    def _write_state(self) -> None:
        state = {"prefix": self.prefix, "subnet": self.subnet, "names": self.names,
                 "rootfs": str(self.rootfs), "pids": {k: p.pid for k, p in self._procs.items()},
                 "hosts": {n: h.address for n, h in self.hosts.items()},
                 "key": str(self.key), "known_hosts": str(self.known_hosts)}
        (self.workdir / "lab.json").write_text(json.dumps(state, indent=2) + "\n")


def unavailable_reason(cache_dir=None) -> str | None:
    """Why this machine cannot run the lab (None if it can)."""
    if os.geteuid() != 0:
        return "the host lab needs root (network namespaces, mounts)"
    tools = ["ip", "nsenter", "unshare", "mount", "ssh", "ssh-keygen"]
    if not (cache_root(cache_dir) / ROOTFS_KEY).is_dir():
        tools.append("debootstrap")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        return f"the host lab needs {', '.join(missing)} (apt-get install iproute2 " \
               "openssh-client debootstrap)"
    if subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"],
                      capture_output=True).returncode:
        return "cannot create network/mount/PID namespaces here"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "`ip netns` does not work here"
    return None


# ---- small helpers --------------------------------------------------------------------
def _lines(*argv: str) -> list[str]:
    return [line for line in run(*argv, check=False).stdout.splitlines() if line.strip()]


def _processes():
    """(pid, ppid, argv) of every process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        yield int(entry), int(stat.rsplit(")", 1)[1].split()[1]), argv.split("\0")


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(ready, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n{tail}")
        time.sleep(0.05)


def _mounted_under(path: Path) -> bool:
    prefix = str(path) + "/"
    return any(line.split()[4].startswith(prefix) for line in open("/proc/self/mountinfo"))


def _umount(mountpoint: str) -> None:
    if run("umount", mountpoint, check=False).returncode:
        run("umount", "-l", mountpoint, check=False)
