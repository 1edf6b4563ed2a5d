"""A cached Debian root filesystem: the shared lower layer of every lab host.

    ensure_rootfs(cache_dir=None) -> Path

Builds once per machine with `debootstrap --variant=minbase` from the Debian mirror that
this machine's apt uses, then reuses it. The directory name carries ROOTFS_KEY: change the
recipe, bump the key, and the next call builds anew. The build goes to a temporary directory
beside the final one and is renamed into place, under an flock (cache.build_once), so
concurrent builders neither clash nor see half a tree.

Inside: systemd as init (systemd-sysv, dbus: each host boots it under systemd-nspawn, see
hosts.py) with ssh.service enabled; no SSH host keys (each lab host gets its own at start;
sshd is told to load only the ed25519 one), no machine ID (each host gets its own), apt
package lists fetched at build time, Release validity dates not checked (the mirror may be
a frozen snapshot). Package scripts start and restart daemons as on any Debian server. Each
host's apt proxy setting is written at host start (see hosts.py), because the proxy address
depends on the lab's subnet.

Also here: apt_sources() / mirror_hosts(), the parsed apt sources of this machine, which the
apt proxy uses as its allow-list.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from .cache import build_once, cache_root

SUITE = "bookworm"
PACKAGES = ["systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "procps",
            "iproute2"]
ROOTFS_KEY = f"rootfs-{SUITE}-v2"  # bump when the recipe below changes
DEFAULT_MIRROR = "http://deb.debian.org/debian"

APT_CONF = """\
// gitops-ansible lab: the mirror may be a dated snapshot
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
APT::Install-Recommends "false";
"""


def apt_sources(etc: str = "/etc/apt") -> list[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of every deb source of this machine, in file order."""
    entries = []
    files = [Path(etc, "sources.list")] + sorted(Path(etc, "sources.list.d").glob("*"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ", "\t")):
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.split()
                if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                    suites, components = fields.get("suites", []), fields.get("components", [])
                    entries += [(uri, suites, components) for uri in fields.get("uris", [])]
        elif f.suffix == ".list":
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] != ["deb"]:
                    continue
                words = words[1:]
                if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
                    while words and not words[0].endswith("]"):
                        words.pop(0)
                    words = words[1:]
                if len(words) >= 2:
                    entries.append((words[0], [words[1]], words[2:]))
    return entries


def mirror_hosts() -> list[str]:
    """Host names of this machine's plain-HTTP Debian mirrors (the apt proxy's allow-list)."""
    hosts = {urlsplit(uri).hostname for uri, _, _ in apt_sources() if uri.startswith("http://")}
    return sorted(h for h in hosts if h) or [urlsplit(DEFAULT_MIRROR).hostname]


def debootstrap_sources() -> tuple[str, str]:
    """(mirror for debootstrap, sources.list inside the tree it builds), both from this
    machine's apt sources; the guest image (guest.py) is built from them too."""
    lines, mirror = [], None
    for uri, suites, components in apt_sources():
        if not uri.startswith("http://"):
            continue  # the lab's proxy forwards plain HTTP only
        for suite in suites:
            if suite == SUITE or suite.startswith(SUITE + "-"):
                lines.append(f"deb {uri} {suite} {' '.join(components) or 'main'}")
                if suite == SUITE and mirror is None:
                    mirror = uri
    mirror = mirror or DEFAULT_MIRROR
    if not any(line.split()[1:3] == [mirror, SUITE] for line in lines):
        lines.insert(0, f"deb {mirror} {SUITE} main")
    return mirror, "\n".join(lines) + "\n"


def fetch_apt_lists(tree: Path, sources: str, run) -> None:
    """Give a debootstrap TREE the apt SOURCES and APT_CONF and fetch its package lists,
    resolving names through this machine's resolv.conf (the caller writes the tree's own)."""
    etc = tree / "etc"
    (etc / "apt/sources.list").write_text(sources)
    (etc / "apt/apt.conf.d/90gitops-lab").write_text(APT_CONF)
    shutil.copyfile("/etc/resolv.conf", etc / "resolv.conf")
    run("chroot", str(tree), "apt-get", "update")
    run("chroot", str(tree), "apt-get", "clean")


def ensure_rootfs(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached rootfs, building it first if this machine has none yet."""
    return build_once(cache_root(cache_dir), ROOTFS_KEY, Path.is_dir, _build)


def _build(target: Path, run) -> None:
    mirror, sources = debootstrap_sources()
    run("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
        "--components=main", SUITE, str(target), mirror)
    fetch_apt_lists(target, sources, run)
    etc = target / "etc"
    # Lab hosts reach nothing but the apt proxy: no resolver. Identity is set per host.
    (etc / "resolv.conf").write_text("# gitops-ansible lab host: no DNS\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
    (etc / "hostname").write_text("localhost\n")
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    (etc / "ssh/sshd_config.d/gitops-lab.conf").write_text(
        "# gitops-ansible lab: each host has one host key, written at its start\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    # Written per host (hosts.py): journald and D-Bus tell the hosts apart by it.
    (etc / "machine-id").write_text("")
    dbus_id = target / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")

