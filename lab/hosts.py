"""Bare hosts for tests: Debian with systemd, each booted by systemd-nspawn in a network
namespace of its own, over an overlay of the cached rootfs.

    lab = HostLab(workdir, ["web-1", "web-2"], prefix="gattest", subnet="198.18.0")
    with lab:                                   # start() ... stop()
        lab.hosts["web-1"].address              # "198.18.0.11"; also .name .root .port
        lab.exec("web-1", ["hostname"])         # CompletedProcess, run inside the host
        lab.inventory_vars()                    # connection vars for an Ansible inventory

Layout: a bridge PREFIX-br holding SUBNET.1/24 in the root namespace; per host a network
namespace PREFIX-NAME with eth0 = SUBNET.(10+i)/24, i = 1, 2, ... in the order of the names
(no default route: the hosts reach only the bridge address), and a veth PREFIX-hI into the
bridge. start() refuses a subnet that this machine already routes. Each host's root is an
overlay: lower = the cached rootfs (rootfs.py), under the host's extra read-only layers if
it has any (layers={NAME: [DIR, ...]}, as nodes.py gives execution nodes their runtime),
upper/work in WORKDIR/hosts/NAME, mounted on the host side at WORKDIR/hosts/NAME/merged
(= Host.root, so tests can read what the host has).
`systemd-nspawn --boot` boots the host's systemd (PID 1 of its own PID namespace) in that
network namespace over that root: journald, D-Bus, logind and ssh.service run as on a
server, so roles can start, enable, restart and reload services, sshd included. Its /proc/sys
is read-only except net.*: those sysctls are per network namespace; the rest would change
this machine's kernel. start() raises this machine's fs.inotify.max_user_instances to
INOTIFY_INSTANCES where it is lower: the hosts' systemds share root's. Each host has its own
machine ID and cgroup (gitops-lab-PREFIX-NAME in the cgroup hierarchies systemd uses).
apt in the hosts uses the proxy (aptproxy.py) on SUBNET.1:3142. start() returns once every
host answers SSH and has finished booting. A host booted from a pristine filesystem (start,
reset_host) must come up "running": one that gives no SSH banner within BOOT_TIMEOUT, or has
a failed unit, is booted once more with a RuntimeWarning carrying boot_report(NAME) (its
systemd's state, jobs, failed units and warnings), and a second such boot raises with that
report.

WORKDIR keeps: id_ed25519 (client key, authorized for root everywhere), known_hosts,
hosts/NAME/ssh_host_ed25519_key (kept across start/stop/reset), hosts/NAME/console.log
(systemd-nspawn's messages and the host's console; sshd logs to the host's journal),
aptproxy.log, lab.json (what `python -m lab down` needs). Processes, mounts, cgroups and
links carry the prefix (command-line tag gitops-lab:PREFIX:..., overlay source
gitops-lab-PREFIX, cgroup, interface and netns names PREFIX-...), so start() first removes
whatever a crashed run with the same prefix left, and stop() removes all of it again. One lab
per prefix at a time: the process that started a lab holds a lock on its prefix (another
start() with that prefix waits), except `python -m lab up`, whose hosts outlive it (a later
`up` replaces them).

start() gives every host a fresh (empty) upper layer. stop_host/start_host: the host's
processes die (SSH: connection refused) and it boots again with its filesystem kept, like a
power cycle. reset_host: pristine filesystem, same host key. rekey_host: new host key.
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
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root
from .rootfs import ROOTFS_KEY, ensure_rootfs, mirror_hosts
from .system import connects, run, ssh_banner, wait_until

# Seconds a host may take from systemd-nspawn to an SSH banner: ~2 s on a quiet machine, but
# 30 s was not enough for the 4th host of a lab booted while another lab converged 12 hosts
# beside the suite (2 cores). A ceiling, not a delay.
BOOT_TIMEOUT = 120

PROXY_PORT = 3142
# Every host's systemd, journald, logind and D-Bus take inotify instances (~7 per host, all
# root's, as the hosts share this machine's user IDs); the kernel's default of 128 per user
# ran out with ~25 hosts up at once across the suite's labs, and a host's systemd then
# stalled ("Failed to create inotify object: Too many open files"). start() raises the limit
# to this where it is lower (never lowers it).
INOTIFY_INSTANCES = 1024
LOCK_WAIT = 1200  # seconds to wait while another process uses a lab with the same prefix
# Not 192.0.2 (TEST-NET-1): on the project's machines that is the real uplink's subnet.
DEFAULT_SUBNET = "198.18.0"
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}

# systemd-nspawn's environment: of /proc/sys only net.* is writable (the rest is this
# machine's kernel); /tmp on the host's own disk, as on a server (nspawn's default: a tmpfs).
NSPAWN_ENV = {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network", "SYSTEMD_NSPAWN_TMPFS_TMP": "0"}
# Moves itself into the cgroups named by $1 (cgroup.procs files), then runs the rest: nspawn
# makes its container's cgroups under its own, and two hosts must not share them.
JOIN_CGROUPS = 'for procs in $1; do echo $$ > "$procs"; done; shift; exec "$@"'


@dataclass
class Host:
    name: str
    address: str
    root: Path  # the merged overlay, seen from this machine
    port: int = 22


class HostLab:
    def __init__(self, workdir, names, prefix="gattest", subnet=DEFAULT_SUBNET,
                 rootfs=None, cache_dir=None, layers=None):
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
        # {name: [directories]}: read-only layers of that host's overlay above the rootfs
        # (nodes.py: an execution node's runtime)
        self.layers = {name: [Path(p) for p in paths] for name, paths in (layers or {}).items()}
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
            _raise_limit(Path("/proc/sys/fs/inotify/max_user_instances"), INOTIFY_INSTANCES)
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
                self._wait_booted(name, pristine=True)
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
        self._remove_cgroups(f"gitops-lab-{self.prefix}-*")
        for mountpoint, fstype, source, _ in _mounts():
            if (fstype, source) == ("overlay", f"gitops-lab-{self.prefix}"):
                _umount(mountpoint)
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
        """Run argv inside host NAME (the namespaces and root of its systemd), as root; output
        captured as text."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        cmd = ["nsenter", "-t", str(self._pid1(name)), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
               "--", *argv]
        return subprocess.run(cmd, env=HOST_ENV, **kwargs)

    def stop_host(self, name: str) -> None:
        """All of the host's processes die at once (no shutdown, like a power cut); its
        address answers 'connection refused'."""
        self._kill(f"gitops-lab:{self.prefix}:host:{name}")
        self._remove_cgroups(f"gitops-lab-{self.prefix}-{name}")

    def start_host(self, name: str) -> None:
        self.stop_host(name)
        self._spawn(name)
        self._wait_booted(name)

    def reset_host(self, name: str) -> None:
        """Pristine filesystem (empty upper layer), same host key."""
        self.stop_host(name)
        self._remount_fresh(name)
        self._spawn(name)
        self._wait_booted(name, pristine=True)

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
        lower = ":".join(map(str, [*self.layers.get(name, []), self.rootfs]))
        run("mount", "-t", "overlay", f"gitops-lab-{self.prefix}", "-o",
             f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}", str(host.root))
        r = host.root
        (r / "etc/hostname").write_text(f"{name}\n")
        (r / "etc/machine-id").write_text(f"{uuid.uuid4().hex}\n")  # a new one per install
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
        cgroups = [top / f"gitops-lab-{self.prefix}-{name}" for top in _cgroup_roots()]
        for cgroup in cgroups:
            cgroup.mkdir(exist_ok=True)
        argv = ["sh", "-c", JOIN_CGROUPS, "sh", " ".join(f"{c}/cgroup.procs" for c in cgroups),
                "systemd-nspawn", "--quiet", "--boot", f"--directory={root}",
                f"--machine={self.prefix}-{name}", "--settings=no",
                # No machined and no systemd on this machine to ask for a scope unit.
                "--register=no", "--keep-unit", "--private-users=no",
                f"--network-namespace-path=/run/netns/{self.prefix}-{name}",
                "--capability=CAP_NET_ADMIN",  # its own addresses, routes and net.* sysctls
                # The host's own files stay: no resolver, UTC, its journal inside.
                "--resolv-conf=off", "--timezone=off", "--link-journal=no",
                "--console=pipe",
                # After --boot, arguments go to the host's systemd, which ignores a word it
                # does not know: this one tags nspawn's command line.
                "--", f"gitops-lab:{self.prefix}:host:{name}"]
        self._popen(name, argv, self._dir(name) / "console.log", NSPAWN_ENV)

    def _popen(self, key: str, argv: list[str], log_path: Path, env: dict | None = None) -> None:
        with open(log_path, "ab") as log:  # own session: the lab outlives `python -m lab up`
            self._procs[key] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True,
                                                env=dict(os.environ, **(env or {})))

    def _remount_fresh(self, name: str) -> None:
        _umount(str(self.hosts[name].root))
        self._mount_fresh(name)

    def _wait_booted(self, name: str, pristine: bool = False) -> None:
        """Until the host answers SSH and its systemd has finished starting its units. A host
        that does not get there, or that comes up from a PRISTINE filesystem with a unit
        failed (the lab's fault: nothing of a test's is on it yet), is booted once more, with
        a warning carrying its systemd's report; a second such boot raises with that report."""
        for attempt in (1, 2):
            problem = self._boot_problem(name, pristine)
            if problem is None:
                return
            report = f"host {name} of lab {self.prefix}: {problem}\n{self.boot_report(name)}"
            if attempt == 2:
                raise RuntimeError(report)
            warnings.warn(f"{report}\nbooting {name} once more", RuntimeWarning, stacklevel=3)
            self.stop_host(name)
            if pristine:
                self._remount_fresh(name)
            self._spawn(name)

    def _boot_problem(self, name: str, pristine: bool) -> str | None:
        """What kept host NAME from booting (None: it answers SSH, and its systemd says
        "running", or "degraded" where the host is not PRISTINE)."""
        host, proc = self.hosts[name], self._procs[name]
        try:
            wait_until(lambda: proc.poll() is not None or ssh_banner(host.address, host.port),
                       BOOT_TIMEOUT, f"sshd on {name}", interval=0.05)
        except TimeoutError:
            return f"no SSH banner within {BOOT_TIMEOUT} s"
        if proc.poll() is not None:
            return f"systemd-nspawn exited with {proc.returncode}"
        try:
            state = self.exec(name, ["systemctl", "is-system-running", "--wait"],
                              timeout=BOOT_TIMEOUT).stdout.strip()
        except subprocess.TimeoutExpired:
            return f"systemd still starting units after {BOOT_TIMEOUT} s"
        if state == "running" or (state == "degraded" and not pristine):
            return None
        return f"systemd says {state!r} after booting"

    def boot_report(self, name: str) -> str:
        """What host NAME's systemd says about this boot: its state, pending jobs, failed
        units and the journal's warnings; then the tail of its console log."""
        parts = []
        for argv in (["systemctl", "is-system-running"], ["systemctl", "list-jobs"],
                     ["systemctl", "--failed"],
                     ["journalctl", "-b", "-p", "warning", "-n", "60", "--no-pager"]):
            try:
                out = self.exec(name, argv, timeout=30)
                text = (out.stdout + out.stderr).strip()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                text = f"(not answered: {e})"
            parts.append(f"$ {' '.join(argv)}\n{text}")
        log = self._dir(name) / "console.log"
        if log.exists():
            parts.append("console.log:\n" + log.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def _pid1(self, name: str) -> int:
        """PID (seen from here) of the host's systemd: the child of its tagged systemd-nspawn
        that has a PID namespace of its own."""
        procs = list(_processes())
        tagged = {pid for pid, _, argv in procs if f"gitops-lab:{self.prefix}:host:{name}" in argv}
        for pid, ppid, _ in procs:
            if ppid in tagged and _pid_namespace(pid) not in (None, _pid_namespace(ppid)):
                return pid
        raise RuntimeError(f"host {name} is not running")

    def _kill(self, tag: str) -> None:
        """SIGKILL the processes tagged TAG (TAG* if it ends with ':') and their children; wait
        until they are gone. The children go first: with a host's systemd dies its whole PID
        namespace, and its systemd-nspawn then exits by itself, removing its lock and its
        entries in /run/systemd/nspawn (nspawn is killed only if it has not after a while)."""
        procs = list(_processes())
        tagged = {pid for pid, _, argv in procs if pid != os.getpid() and any(
            a == tag or (tag.endswith(":") and a.startswith(tag)) for a in argv)}
        children = {pid for pid, ppid, _ in procs if ppid in tagged}
        parents = {ppid for pid, ppid, _ in procs if pid in children}
        _sigkill(children | (tagged - parents))
        _gone(parents, 5)
        _sigkill(parents)
        victims = tagged | children
        for key, proc in list(self._procs.items()):
            if proc.pid in victims:
                proc.wait()
                del self._procs[key]
        if not _gone(victims, 15):
            raise TimeoutError(f"timed out after 15 s waiting for the end of {tag} processes")

    def _remove_cgroups(self, pattern: str) -> None:
        """Remove the hosts' cgroups named PATTERN (a glob), deepest first; a process that
        is exiting may keep one busy for a moment."""
        def removed() -> bool:
            tops = [top for root in _cgroup_roots() for top in root.glob(pattern)]
            found = tops + [d for top in tops for d in top.rglob("*") if d.is_dir()]
            for cgroup in sorted(found, key=lambda d: len(d.parts), reverse=True):
                try:
                    cgroup.rmdir()
                except OSError:
                    return False
            return True
        _wait(removed, 15, f"removal of the cgroups {pattern}")

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
    tools = ["ip", "nsenter", "unshare", "mount", "ssh", "ssh-keygen", "systemd-nspawn"]
    if not (cache_root(cache_dir) / ROOTFS_KEY).is_dir():
        tools.append("debootstrap")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        return f"the host lab needs {', '.join(missing)} (apt-get install iproute2 " \
               "openssh-client debootstrap systemd-container)"
    if not _cgroup_roots():
        return "no cgroup2 or name=systemd cgroup hierarchy is mounted (systemd-nspawn needs one)"
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


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _sigkill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _gone(pids, timeout: float) -> bool:
    """Wait until none of PIDS is alive, at most TIMEOUT seconds; are they gone?"""
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


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


def _raise_limit(sysctl: Path, floor: int) -> None:
    """Set the kernel limit SYSCTL to FLOOR if it is lower."""
    if int(sysctl.read_text()) < floor:
        sysctl.write_text(f"{floor}\n")


def _mounts():
    """(mount point, file system type, source, super options) of every mount here."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype, source, options = fields[fields.index("-") + 1:][:3]
        yield fields[4], fstype, source, options.split(",")


def _mounted_under(path: Path) -> bool:
    prefix = str(path) + "/"
    return any(mountpoint.startswith(prefix) for mountpoint, *_ in _mounts())


def _cgroup_roots() -> list[Path]:
    """The cgroup hierarchies that systemd (and so nspawn) uses: the unified (cgroup2) one
    and, on a machine with both, the v1 name=systemd one."""
    return [Path(mountpoint) for mountpoint, fstype, _, options in _mounts()
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options)]


def _umount(mountpoint: str) -> None:
    if run("umount", mountpoint, check=False).returncode:
        run("umount", "-l", mountpoint, check=False)
