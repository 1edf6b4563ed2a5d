"""A cached Debian guest image for the VM lab: one qcow2 base, its kernel and initrd.

    image = ensure_guest_image(cache_dir=None)    # GuestImage: .base .kernel .initrd .cmdline
    make_seed(path, hostname, authorized_keys, host_key=None)
    python -m lab.guest build               # prebuild (make vm-assets); prints the paths

Built once per machine in CACHE/GUEST_KEY/ (CACHE = $GITOPS_LAB_CACHE or
/var/cache/gitops-ansible-lab; outside the repository): base.qcow2, vmlinuz, initrd.img,
build.json (recipe, build seconds, sizes). Change the recipe, bump GUEST_KEY. Built in a
temporary directory beside the final one and renamed into place, under an flock, like the
lab rootfs (rootfs.py). debootstrap reaches the mirror directly, as rootfs.py does (the apt
proxy, aptproxy.py, serves the lab hosts, not builds) and keeps the .debs it downloaded in
CACHE/debootstrap-debs for the next build. No loop device and no mount: the
tree becomes an ext4 file system with `mkfs.ext4 -d`, then a qcow2 with qemu-img.

The guest boots by direct kernel boot (kernel and initrd copied out of the guest's /boot;
GuestImage.cmdline), each VM on its own qcow2 overlay over base.qcow2 (read-only).
Network: systemd-networkd, eth0 = 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3 (qemu
user-mode networking; ifupdown is not installed: it costs ~35 s of boot under TCG). Through
that NAT the guest reaches whatever this machine reaches, and 10.0.2.2 is this machine's
127.0.0.1 (an apt proxy listening there serves the guests too). e2scrub_reap and the
periodic timers are masked; the initrd holds only the virtio disk and ext4 drivers, and
udev loads no drivers for emulated devices nobody uses (floppy, IDE, PC speaker...). dbus
is in the image so that systemd-logind handles the ACPI power button (graceful shutdown)
and hostnamectl works. Serial console on ttyS0.

Per-VM identity comes from a seed disk, the VM's second virtio disk (/dev/vdb): a plain tar
archive written straight to the raw disk (make_seed), no file system, so building one needs
nothing but Python. In it: hostname, authorized_keys (for root) and optionally
ssh_host_ed25519_key(.pub). The oneshot unit gatlab-seed.service applies it on every boot
before ssh.service. The SSH host key is made per VM on this machine and passed in the seed,
so the lab knows it before the VM boots (strict known_hosts from the first connection, no
trust-on-first-use) and no two VMs from one base share a key; without one in the seed the
guest makes its own at boot (ed25519 only: cheap under TCG). The image itself has no host
key, no machine-id (systemd makes one at first boot) and a locked root password.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import system
from .cache import build_once, cache_root, remove_tree
from .rootfs import SUITE, debootstrap_sources, fetch_apt_lists

# dbus beyond the DESIGN recipe: without it systemd-logind does not run, so the guest
# ignores the ACPI power button (`virsh shutdown`, community.libvirt state=shutdown) and
# hostnamectl (ansible.builtin.hostname) fails.
# cron and tree: what the host roles install on the VM platform test's guest (the demo's
# host_packages_present, inventories/local/group_vars/baremetal.yml). apt-get update and
# install under TCG took 52 s of that test's first converge on a quiet machine, 131 s with
# the suite around it; the bare hosts still install them through apt.
PACKAGES = ["openssh-server", "linux-image-amd64", "systemd-sysv", "udev", "iproute2",
            "python3", "netbase", "dbus", "cron", "tree"]
GUEST_KEY = f"guest-{SUITE}-v2"  # bump when the recipe below changes
DISK_SIZE = "4G"  # virtual size of the root file system; overlays may grow it
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
SEED_DEVICE = "/dev/vdb"
MASKED = ["e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer",
          "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "fstrim.timer",
          "systemd-networkd-wait-online.service", "getty@tty1.service",
          "getty-static.service"]  # gettys on tty2-6 when there is no logind/dbus
# Under TCG every driver costs seconds: the initrd gets only what mounts the root disk
# (36 MB -> a few MB), and udev does not load drivers for devices the lab never uses.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"]
BLACKLIST = ["floppy", "pcspkr", "kvm", "kvm_amd", "kvm_intel", "cfg80211", "i2c_piix4",
             "ata_piix", "pata_acpi", "ata_generic", "serio_raw", "joydev", "psmouse"]

NETWORK = """\
[Match]
Name=eth0

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
LinkLocalAddressing=no
IPv6AcceptRA=no
"""

SEED_SCRIPT = f"""\
#!/bin/sh
# gitops-ansible lab: apply this VM's seed disk (a tar archive on {SEED_DEVICE}).
set -eu
dir=/run/gatlab-seed
rm -rf "$dir" && mkdir -m 700 "$dir"
if [ -b {SEED_DEVICE} ]; then
  tar -x -f {SEED_DEVICE} -C "$dir" --no-same-owner --no-same-permissions
fi
if [ -s "$dir/hostname" ]; then
  name=$(head -n1 "$dir/hostname")
  echo "$name" > /etc/hostname
  echo "$name" > /proc/sys/kernel/hostname
  printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n' "$name" > /etc/hosts
fi
if [ -f "$dir/authorized_keys" ]; then
  install -d -m 700 /root/.ssh
  install -m 600 "$dir/authorized_keys" /root/.ssh/authorized_keys
fi
if [ -f "$dir/ssh_host_ed25519_key" ]; then
  install -m 600 "$dir/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
  install -m 644 "$dir/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
elif [ ! -f /etc/ssh/ssh_host_ed25519_key ]; then
  ssh-keygen -q -t ed25519 -N '' -C "$(cat /etc/hostname)" -f /etc/ssh/ssh_host_ed25519_key
fi
"""

SEED_UNIT = """\
[Unit]
Description=gitops-ansible lab: hostname, root key and SSH host key from the seed disk
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=sysinit.target ssh.service systemd-networkd.service
Wants=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/gatlab-seed

[Install]
WantedBy=sysinit.target
"""

SSHD_CONFIG = """\
# gitops-ansible lab guest
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    base: Path     # qcow2, read-only: the backing file of every VM's overlay
    kernel: Path
    initrd: Path
    cmdline: str = CMDLINE

    @classmethod
    def at(cls, directory: Path) -> "GuestImage":
        return cls(directory, directory / "base.qcow2", directory / "vmlinuz",
                   directory / "initrd.img")

    def overlay(self, path: str | os.PathLike) -> Path:
        """A new qcow2 overlay at PATH backed by the base image (the VM's root disk)."""
        path = Path(path)
        system.run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                   str(self.base), str(path))
        return path


def ensure_guest_image(cache_dir: str | os.PathLike | None = None) -> GuestImage:
    """The cached guest image, building it first if this machine has none yet (5-7 min)."""
    final = build_once(cache_root(cache_dir), GUEST_KEY,
                       lambda path: (path / "build.json").is_file(), _build)
    return GuestImage.at(final)


def make_seed(path: str | os.PathLike, hostname: str, authorized_keys: str,
              host_key: str | os.PathLike | None = None) -> Path:
    """Write a seed disk (raw, a tar archive) for one VM; HOST_KEY: a private key file."""
    files = {"hostname": hostname + "\n", "authorized_keys": authorized_keys}
    if host_key:
        files["ssh_host_ed25519_key"] = Path(host_key).read_text()
        files["ssh_host_ed25519_key.pub"] = Path(f"{host_key}.pub").read_text()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    data += b"\0" * (-len(data) % 1048576)  # whole MiB: any disk size qemu accepts
    Path(path).write_bytes(data)
    return Path(path)


def _build(work: Path, run) -> None:
    mirror, sources = debootstrap_sources()
    start = time.monotonic()
    work.mkdir()
    tree, raw, out = work / "tree", work / "root.img", work
    debs = work.parent / "debootstrap-debs"  # kept: a rebuild (key bump) downloads less
    debs.mkdir(exist_ok=True)
    run("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
        "--components=main", f"--cache-dir={debs}", SUITE, str(tree), mirror)
    t_debootstrap = time.monotonic() - start
    _configure(tree, sources, run)
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    initrds = sorted((tree / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise RuntimeError(f"expected one kernel and one initrd in /boot: {kernels} {initrds}")
    shutil.copyfile(kernels[0], out / "vmlinuz")
    shutil.copyfile(initrds[0], out / "initrd.img")
    run("mkfs.ext4", "-q", "-F", "-L", "gatlab-root", "-d", str(tree), str(raw), DISK_SIZE)
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out / "base.qcow2"))
    raw.unlink()
    remove_tree(tree)
    for f in ("vmlinuz", "initrd.img", "base.qcow2"):
        (out / f).chmod(0o444)
    info = {"key": GUEST_KEY, "suite": SUITE, "mirror": mirror, "packages": PACKAGES,
            "kernel": kernels[0].name, "cmdline": CMDLINE,
            "build_seconds": round(time.monotonic() - start, 1),
            "debootstrap_seconds": round(t_debootstrap, 1),
            "base_qcow2_bytes": (out / "base.qcow2").stat().st_size}
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")


def _configure(tree: Path, sources: str, run) -> None:
    fetch_apt_lists(tree, sources, run)
    etc = tree / "etc"
    (etc / "resolv.conf").write_text("nameserver 10.0.2.3\n")  # qemu user-mode DNS
    (etc / "hostname").write_text("localhost\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
    (etc / "fstab").write_text("/dev/vda\t/\text4\trw,relatime\t0\t0\n")
    (etc / "machine-id").write_text("")  # each VM makes its own at first boot
    Path(tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    (etc / "ssh/sshd_config.d/gatlab.conf").write_text(SSHD_CONFIG)
    (etc / "systemd/network/10-eth0.network").write_text(NETWORK)
    script = tree / "usr/local/sbin/gatlab-seed"
    script.write_text(SEED_SCRIPT)
    script.chmod(0o755)
    (etc / "systemd/system/gatlab-seed.service").write_text(SEED_UNIT)
    run("chroot", str(tree), "systemctl", "enable", "systemd-networkd.service",
        "gatlab-seed.service")
    run("chroot", str(tree), "systemctl", "mask", *MASKED)
    run("chroot", str(tree), "passwd", "-l", "root")
    (etc / "initramfs-tools/conf.d/gatlab.conf").write_text("MODULES=list\n")
    (etc / "initramfs-tools/modules").write_text("\n".join(INITRD_MODULES) + "\n")
    (etc / "modprobe.d/gatlab-lab.conf").write_text(
        "".join(f"blacklist {m}\n" for m in BLACKLIST))
    run("chroot", str(tree), "update-initramfs", "-u", "-k", "all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.guest",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the cached guest image unless it exists")
    build.add_argument("--cache",
                       help="default: $GITOPS_LAB_CACHE or /var/cache/gitops-ansible-lab")
    args = parser.parse_args(argv)
    started = time.monotonic()
    image = ensure_guest_image(args.cache)
    info = json.loads((image.directory / "build.json").read_text())
    print(json.dumps({"base": str(image.base), "kernel": str(image.kernel),
                      "initrd": str(image.initrd), "cmdline": image.cmdline,
                      "build_seconds": info["build_seconds"],
                      "seconds": round(time.monotonic() - started, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
