"""Faults of the source stage (issue 19): the git server killed mid-fetch of a large
repository, and the mirror's housekeeping (git gc), which must keep the mirror's size
within a bound of the repository's and never fail a cycle, even on a full disk.

The served estate holds two `local` targets (see tests/conftest.py: local_estate), so the
cycles need a git daemon on loopback but no SSH hosts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitops_ansible import source
from lab.gitserver import GitServers, WorkTree, git
from tests.conftest import local_estate, make_settings, require

pytestmark = pytest.mark.git

BLOBS, BLOB_MB = 3, 100  # the large commit: 300 MB of random bytes in three files
NOTES = 120  # and small files: over git's unpackLimit (100), a fetch keeps a pack (tmp_pack_*)
KILL_AT = 120 << 20  # the daemon is killed once this much of the pack has arrived (40%)
MiB = 1 << 20


@dataclass
class Served:
    servers: GitServers
    bare: Path
    estate: WorkTree  # its revision: the estate before the large commit
    large: str  # the commit of 300 MB of random blobs
    small: str  # a small commit on top of it: alpha greets someone else


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A git daemon of our own (the tests kill it) serving the estate, with a branch 'big'
    whose 300 MB commit and small commit on top are made once per session."""
    require(shutil.which("git") is not None, "git is not installed")
    root = tmp_path_factory.mktemp("git-faults")
    servers = GitServers(root)
    servers.start_daemon()
    estate = local_estate(servers, root, "estate")
    bare = servers.repos / "estate.git"
    large, small = large_commits(bare, estate.revision)
    yield Served(servers, bare, estate, large, small)
    servers.stop_daemon()


def large_commits(bare: Path, parent: str) -> tuple[str, str]:
    """Written straight into the served repository by git fast-import, in one pack. Random
    bytes neither compress nor delta: compression off and a low bigFileThreshold (no delta
    search) make it take seconds instead of half a minute."""
    stamp = f"{int(time.time())} +0000"
    feed = subprocess.Popen(["git", "-c", "core.compression=0", "-c", "core.bigFileThreshold=1m",
                             "fast-import", "--quiet"], cwd=bare, stdin=subprocess.PIPE)
    for number in range(1, BLOBS + 1):
        data = os.urandom(BLOB_MB * MiB)
        feed.stdin.write(b"blob\nmark :%d\ndata %d\n%s\n" % (number, len(data), data))

    def commit(message: str, files: list[bytes], start: bytes = b"") -> None:
        feed.stdin.write(b"commit refs/heads/big\ncommitter tests <tests@example.invalid> "
                         b"%s\ndata %d\n%s\n%s" % (stamp.encode(), len(message), message.encode(),
                                                   start) + b"".join(files) + b"\n")

    commit("media: 300 MB", [b"M 644 :%d media/part%d.bin\n" % (n, n)
                             for n in range(1, BLOBS + 1)]
           + [b"M 644 inline notes/%d.txt\ndata 9\nnote %04d\n" % (n, n) for n in range(NOTES)],
           start=b"from %s\n" % parent.encode())
    alpha = b"---\ngreet_name: after the outage\n"
    commit("alpha greets after the outage", [
        b"M 644 inline inventories/dev/host_vars/alpha.yml\ndata %d\n%s\n" % (len(alpha), alpha)])
    feed.stdin.close()
    assert feed.wait(120) == 0, "git fast-import failed"
    return git("rev-parse", "big~1", "big", cwd=bare).split()


def test_git_server_killed_mid_fetch_of_a_large_repository(cli, served, tmp_path):
    git("update-ref", "refs/heads/main", served.estate.revision, cwd=served.bare)
    url = served.servers.url("estate", "git")
    cli("run", "--repo", url, "--env", "dev", check_code=2)
    git("update-ref", "refs/heads/main", served.small, cwd=served.bare)
    mirror = tmp_path / "state/work/dev/mirror.git"
    left = []
    for _ in range(2):
        done, pack = cycle_killed_mid_fetch(cli, served.servers, url, mirror, left)
        assert done.returncode == 1, done.stdout + done.stderr
        failed = [line for line in done.stderr.splitlines() if "fetch failed" in line]
        assert failed and "early EOF" in failed[0] and "last good revision" in done.stderr
        status = json.loads(cli("status", "--json", check_code=0).stdout)[0]
        assert status["fetch_error"] and "early EOF" in status["fetch_error"]
        assert status["good_revision"] == served.estate.revision == status["applied_revision"]
        assert not [p for p in left if p.exists()], "the killed fetch before left its pack"
        left.append(pack)
    converged = cli("run", "--repo", url, "--env", "dev", check_code=2)
    assert "fetch failed" not in converged.stderr
    assert (served.estate.out / "alpha.txt").read_text() == "hello after the outage\n"
    status = json.loads(cli("status", "--json", check_code=0).stdout)[0]
    assert status["applied_revision"] == served.small and status["fetch_error"] is None
    history = json.loads(cli("history", "--env", "dev", "--json", check_code=0).stdout)
    assert [(r["revision"], r["status"]) for r in history] == [
        (served.small, "changed"), (served.small, "error"), (served.small, "error"),
        (served.estate.revision, "changed")]
    assert not list((mirror / "objects").rglob("tmp_*"))
    mirror_size, served_size = du(mirror), packed_size(served.bare)
    assert served_size > BLOBS * BLOB_MB * MiB
    assert mirror_size < 1.3 * served_size, (mirror_size, served_size)


def cycle_killed_mid_fetch(cli, servers: GitServers, url: str, mirror: Path, left: list):
    """A pull cycle whose git daemon is killed once the pack it sends is arriving (not one
    of the packs ``left`` by the killed fetches before); the daemon is started again after.
    Returns the cycle's outcome and the partial pack."""
    proc = cli.popen("run", "--repo", url, "--env", "dev")
    try:
        pack = growing_pack(mirror, proc, left)
        servers.kill_daemon()
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            servers.start_daemon()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert pack.exists(), "git removed its partial pack itself: the check after proves nothing"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), pack


def growing_pack(mirror: Path, proc: subprocess.Popen, left: list, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("the cycle ended before its fetch was under way:\n"
                                 + "".join(proc.communicate()))
        for pack in set((mirror / "objects/pack").glob("tmp_pack_*")) - set(left):
            try:
                if pack.stat().st_size >= KILL_AT:
                    return pack
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    raise AssertionError(f"no pack arrived in {mirror} within {timeout}s")


def du(path: Path) -> int:
    """Bytes on disk under ``path``, as ``du`` counts them."""
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def objects(repo: Path) -> dict[str, int]:
    """What git count-objects says of ``repo`` (packs, size-pack and size in KiB...)."""
    lines = git("count-objects", "-v", cwd=repo).splitlines()
    return {name: int(value) for name, value in (line.split(": ") for line in lines)}


def packed_size(repo: Path) -> int:
    """Bytes of the repository's objects, packed and loose."""
    counts = objects(repo)
    return (counts["size-pack"] + counts["size"]) * 1024


# ---- housekeeping ------------------------------------------------------------------------
@pytest.fixture
def origin(tmp_path):
    """A bare repository to fetch from, and a function that adds a commit of N new small
    files (over git's unpackLimit of 100, each fetch of one keeps a pack) or of one big
    random file; it returns the commit."""
    require(shutil.which("git") is not None, "git is not installed")
    bare = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    made = []

    def commit(files: int = 110, big: int = 0) -> str:
        number = len(made)
        payload = [os.urandom(big)] if big else [b"%d.%d\n" % (number, n) for n in range(files)]
        message = b"step %d\n" % number
        stream = b"commit refs/heads/main\ncommitter tests <tests@example.invalid> %d +0000\n" \
                 b"data %d\n%s" % (int(time.time()), len(message), message)
        stream += b"from %s\n" % made[-1].encode() if made else b""
        stream += b"".join(b"M 644 inline c%d/f%d\ndata %d\n%s\n" % (number, n, len(data), data)
                           for n, data in enumerate(payload))
        subprocess.run(["git", "fast-import", "--quiet"], cwd=bare, input=stream, check=True)
        made.append(git("rev-parse", "main", cwd=bare))
        return made[-1]

    commit.url = f"file://{bare}"
    return commit


def packs(mirror: Path) -> int:
    return objects(mirror)["packs"]


def fetch_settings(origin, state_dir: Path):
    return make_settings(repo=origin.url, ref="main", env="dev", state_dir=str(state_dir))


def test_packs_do_not_pile_up_and_gc_is_done_when_the_fetch_returns(origin, tmp_path):
    settings = fetch_settings(origin, tmp_path / "state")
    mirror = source.mirror_path(settings)
    counts = []
    for _ in range(51):  # git's gc.autoPackLimit is 50: the 51st pack is one too many
        revision = origin()
        assert source.fetch(settings, revision, warn=pytest.fail) == revision
        counts.append(packs(mirror))
    assert counts[:50] == list(range(1, 51)), "each fetch kept a pack: the check proves nothing"
    assert counts[50] == 1 and not (mirror / "gc.pid").exists()  # in the foreground
    assert git("rev-list", "--count", "refs/gitops/target", cwd=mirror) == "51"


def test_a_full_gc_once_a_day(origin, tmp_path):
    settings = fetch_settings(origin, tmp_path / "state")
    mirror = source.mirror_path(settings)
    for _ in range(3):
        source.fetch(settings, origin(), warn=pytest.fail)
    assert packs(mirror) == 3  # a new mirror's day starts with its first fetch
    stamp = mirror / source.GC_STAMP
    yesterday = time.time() - source.FULL_GC_EVERY - 60
    os.utime(stamp, (yesterday, yesterday))
    source.fetch(settings, origin(), warn=pytest.fail)
    assert packs(mirror) == 1 and stamp.stat().st_mtime > time.time() - 60
    source.fetch(settings, origin(), warn=pytest.fail)
    assert packs(mirror) == 2  # not twice a day


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (root can mount one)."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_gc_on_a_full_disk_fails_nothing_and_leaves_nothing(origin, small_disk):
    settings = fetch_settings(origin, small_disk / "state")
    mirror = source.mirror_path(settings)
    source.fetch(settings, origin(big=4 * MiB), warn=pytest.fail)
    source.fetch(settings, origin(), warn=pytest.fail)
    stamp = mirror / source.GC_STAMP
    yesterday = time.time() - source.FULL_GC_EVERY - 60
    os.utime(stamp, (yesterday, yesterday))
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 512 * 1024))
    warnings = []
    revision = origin(files=3)  # a full gc repacks 4 MB: it cannot with 512 KB free
    assert source.fetch(settings, revision, warn=warnings.append) == revision
    assert len(warnings) == 1 and str(mirror) in warnings[0], warnings
    assert "No space left on device" in warnings[0] or "diskspace" in warnings[0], warnings
    filler.unlink()
    revision = origin(files=3)
    assert source.fetch(settings, revision, warn=pytest.fail) == revision  # not again today
    assert not [p for p in (mirror / "objects").rglob("*") if p.name.startswith(("tmp_", ".tmp"))]
    git("fsck", "--connectivity-only", "--no-dangling", cwd=mirror)
