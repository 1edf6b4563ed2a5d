"""The per-machine cache of the lab: the host rootfs, the guest image, the Kubernetes
binaries and the apt packages, outside the repository, shared by every checkout and run.

    cache_root(cache_dir=None) -> Path       # CACHE_DIR, $GITOPS_LAB_CACHE or DEFAULT_CACHE
    build_once(root, key, done, build) -> ROOT/KEY, built at most once per machine
    remove_tree(path)                        # rm -rf that unmounts what is mounted inside
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import TextIO

DEFAULT_CACHE = "/var/cache/gitops-ansible-lab"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get("GITOPS_LAB_CACHE") or DEFAULT_CACHE)


def build_once(root: Path, key: str, done, build) -> Path:
    """ROOT/KEY, built by ``build(tmp, run)`` unless ``done(ROOT/KEY)`` says it exists:
    under a lock (a concurrent builder finishes first; we then reuse its result), into a
    temporary directory renamed into place, so a killed build never looks finished.
    ``run(*argv)`` runs one command of the build with its output in ROOT/KEY.log and raises
    with the log's tail when it fails."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    if done(final):
        return final
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done(final):
            return final
        for stale in root.glob(f"{key}.tmp-*"):  # from a crashed build; we hold the lock
            remove_tree(stale)
        tmp = root / f"{key}.tmp-{os.getpid()}"
        try:
            with open(root / f"{key}.log", "w") as log:
                started = time.monotonic()
                build(tmp, partial(_logged_run, log, f"{key} build"))
                log.write(f"built in {time.monotonic() - started:.1f} s\n")
            tmp.rename(final)
        finally:
            if tmp.exists():
                remove_tree(tmp)
    return final


def _logged_run(log: TextIO, what: str, *argv: str) -> None:
    log.write(f"+ {' '.join(argv)}\n")
    log.flush()
    if subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode:
        log.flush()
        tail = "".join(Path(log.name).read_text(errors="replace").splitlines(True)[-20:])
        raise RuntimeError(f"{what} failed: {' '.join(argv)}\n{tail}")


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever a killed build (debootstrap) left mounted inside."""
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
    shutil.rmtree(path, ignore_errors=True)
