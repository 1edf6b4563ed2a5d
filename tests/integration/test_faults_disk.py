"""Issue 19, deliverables 2, 3 and 7: a full disk under the state directory.

The state directory is a 3 MiB tmpfs mounted for each test (root), the targets are the
two local targets of ``local_estate``, and `gitops-ansible run` is a real process. After
a first converge, a new commit is made and a file fills the tmpfs to leave a chosen free
space (the issue's three cases: about 60 KiB, 336 KiB and 1 MiB). What a user checks
then: exit 1 with one line that names the path, the full disk and the free space, never a
traceback; the run ends in bounded time; and once the space is freed, the next cycle
records what the failed run left (error or interrupted, with the hosts it changed),
leaves nothing `running` and converges the new revision. Also: the work directory (Git's
mirror) alone on the full disk, on the first run; the default min_free_mb refusing a run
before anything is fetched; and SIGTERM of a run whose disk fills while Ansible runs.

The runs under test have --min-free-mb 0 (a 3 MiB disk is below the default of 100) and
an --idle-timeout, so that a hang would end; each is given less time than that (BOUND),
so that a hang fails the test as one.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab.fixtures import require
from tests.conftest import local_estate

pytestmark = [pytest.mark.git, pytest.mark.e2e]

IDLE_TIMEOUT = 60  # seconds without an Ansible event before a run is cancelled
BOUND = 40         # seconds a run on a full disk may take (about 3 s on a quiet machine)
SIGTERM_BOUND = 10  # seconds from SIGTERM to the end of the run
NEW_GREETING = "hello after a full disk\n"
# A last task with a large result (the estate wrote more per run than these two
# local targets): its output is not shown, but each of its events carries it twice
# (stdout, stdout_lines), so that the disk fills in ansible-runner's and Ansible's own
# writes of events while the run goes on.
NOISE_TASK = """
- name: Say a lot
  ansible.builtin.shell: "printf '%0{{ greet_noise }}d' 0"
  changed_when: false
  when: greet_noise | int > 0
"""


@contextmanager
def tmpfs(path: Path):
    """A 3 MiB tmpfs mounted on ``path`` (made) while in the block."""
    require(os.geteuid() == 0, "root is needed to mount a tmpfs")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """STATE_DIR (the ``cli`` fixture's) on a small tmpfs of its own."""
    with tmpfs(tmp_path / "state") as state:
        yield state


@pytest.fixture
def estate(git_servers, tmp_path, request):
    """The local estate; its role gets the large task (a commit of the test's makes it
    count)."""
    tree = local_estate(git_servers, tmp_path, request.node.name)
    tree.url = git_servers.url(tree.name, "file")
    tasks = tree.path / "roles/greet/tasks/main.yml"
    tree.write("roles/greet/tasks/main.yml", tasks.read_text() + NOISE_TASK)
    return tree


@pytest.fixture
def converged(estate, cli, small_disk):
    """The estate converged once on the small disk, with room to spare."""
    cli(*run_args(estate), check_code=2, timeout=120)
    return estate


def run_args(estate) -> list[str]:
    """`run` of the estate on the small disk: no free space check, the idle timeout."""
    return ["run", "--repo", estate.url, "--env", "dev", "--min-free-mb", "0",
            "--idle-timeout", str(IDLE_TIMEOUT)]


def commit_new_greeting(estate, **group_vars) -> str:
    """A new commit that changes the greeting: the targets show whether it was applied."""
    values = {"greet_name": "after a full disk", "greet_noise": 0, **group_vars}
    estate.write("inventories/dev/group_vars/all.yml",
                 "---\n" + "".join(f"{k}: {v}\n" for k, v in values.items()))
    return estate.commit("a new greeting, converged on a nearly full disk")


def fill(state: Path, free_kib: int | None) -> Path:
    """A file that leaves ``free_kib`` KiB free on the tmpfs (None: nothing at all)."""
    filler = state / "filler"
    stats = os.statvfs(state)
    size = stats.f_bavail * stats.f_frsize - (free_kib or 0) * 1024
    with open(filler, "wb") as out:
        try:
            out.write(b"\0" * size)
            while free_kib is None:  # a run is writing too: on until nothing is left
                out.write(b"\0" * 4096)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def free_kib(state: Path) -> int:
    stats = os.statvfs(state)
    return stats.f_bavail * stats.f_frsize // 1024


def finish(proc, bound: float, what: str) -> tuple[str, str]:
    """The output of ``proc`` once it ends within ``bound`` seconds; one still running
    then is a hang: SIGTERM, and the test fails."""
    try:
        return proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{what} still ran after {bound}s (a hang); after SIGTERM it exited "
                    f"{proc.returncode}\nstdout:\n{out}\nstderr:\n{err}")


def bounded_run(cli, args: list[str]) -> tuple[int, str]:
    """`run` as a process given BOUND seconds: exit code and stderr."""
    proc = cli.popen(*args)
    _, err = finish(proc, BOUND, "the run")
    return proc.returncode, err


def assert_one_clear_error(code: int, err: str, state: Path, full: Path | None = None):
    """Exit 1, no traceback anywhere, and a line naming a path on the ``full`` disk (the
    state directory's), the full disk and the free space."""
    assert code == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert not list(state.glob("logs/*.traceback")), err
    said = [line for line in err.splitlines() if str(full or state) in line
            and "MiB free" in line and ("No space left" in line or "disk is full" in line)]
    assert said, err


def history(cli) -> list[dict]:
    return json.loads(cli("history", "--env", "dev", "--json", check_code=0).stdout)


def greetings(estate) -> dict[str, str]:
    return {host: (estate.out / f"{host}.txt").read_text()
            for host in ("alpha", "beta") if (estate.out / f"{host}.txt").exists()}


def assert_recovered(cli, estate, state: Path, filler: Path, revision: str,
                     before: dict[str, str], runs_before: int = 1, args=()) -> None:
    """With the space freed, the next cycle records what the failed run left (the hosts
    that had the new greeting ``before`` it as changed) and converges ``revision``;
    ``runs_before``: the runs in the history before the failed one."""
    filler.unlink()
    again = cli(*run_args(estate), *args, timeout=120)
    assert again.returncode in (0, 2), again.stderr  # 0: the failed run had changed them
    assert "Traceback" not in again.stderr and not list(state.glob("logs/*.traceback"))
    runs = history(cli)
    assert [r["id"] for r in runs if r["status"] == "running"] == []
    assert len(runs) == runs_before + 2, runs  # those before, the failed run, this one
    failed = runs[1]
    assert failed["status"] in ("error", "interrupted", "cancelled"), failed
    changed_then = {host for host, text in before.items() if text == NEW_GREETING}
    assert {h for h, o in failed["hosts"].items() if o == "changed"} >= changed_then, failed
    assert set(greetings(estate).values()) == {NEW_GREETING}
    now = json.loads(cli("status", "--json", check_code=0).stdout)[0]
    assert now["applied_revision"] == revision == now["good_revision"]


@pytest.mark.parametrize("free, noise", [
    pytest.param(60, 0, id="60KiB"),    # Git cannot write the fetched objects
    pytest.param(336, 0, id="336KiB"),  # Ansible runs (here: to its end), the record fails
    pytest.param(1024, 200_000, id="1MiB"),  # ansible-runner's own writes fail mid-run
])
def test_full_disk_is_one_error_and_the_next_cycle_records_and_converges(
        cli, converged, small_disk, free, noise):
    revision = commit_new_greeting(converged, greet_noise=noise)
    filler = fill(small_disk, free)
    assert abs(free_kib(small_disk) - free) <= 4
    code, err = bounded_run(cli, run_args(converged))
    assert_one_clear_error(code, err, small_disk)
    before = greetings(converged)
    if free == 60:  # the fetch failed: nothing ran
        assert "fetch failed" in err and NEW_GREETING not in before.values()
    assert_recovered(cli, converged, small_disk, filler, revision, before)


def test_full_work_dir_on_the_first_run_is_one_error(cli, estate, tmp_path):
    """--workdir (the Git mirror and checkouts) on the small disk, 60 KiB free, no
    mirror yet; the state directory has room: the run is recorded as it ends."""
    with tmpfs(tmp_path / "work") as work:
        revision = commit_new_greeting(estate)
        filler = fill(work, 60)
        code, err = bounded_run(cli, [*run_args(estate), "--workdir", work])
        assert_one_clear_error(code, err, cli.state_dir, full=work)
        assert "fetch failed" in err and not greetings(estate)
        status = json.loads(cli("status", "--json", check_code=0).stdout)[0]
        assert "No space left" in status["fetch_error"]
        assert_recovered(cli, estate, cli.state_dir, filler, revision, {}, runs_before=0,
                         args=["--workdir", work])


def test_min_free_mb_refuses_a_run_before_anything_is_fetched(cli, converged, small_disk):
    """The default min_free_mb (100) on the 3 MiB disk: the new commit is not fetched,
    the targets are not touched, the run is recorded as an error saying why."""
    revision = commit_new_greeting(converged)
    before = {p.name: p.stat().st_mtime_ns for p in converged.out.iterdir()}
    code, err = bounded_run(cli, ["run", "--repo", converged.url, "--env", "dev"])
    assert code == 1 and "Traceback" not in err, err
    said = re.search(rf"{re.escape(str(small_disk))} has (\d+\.\d) MiB free, less than "
                     r"min_free_mb = 100", err)
    assert said and 0 < float(said[1]) <= 3, err
    mirror = small_disk / "work/dev/mirror.git"
    assert subprocess.run(["git", "--git-dir", mirror, "cat-file", "-e", revision],
                          capture_output=True).returncode != 0  # not fetched
    assert not (small_disk / "work/dev/checkouts" / revision).exists()
    assert {p.name: p.stat().st_mtime_ns for p in converged.out.iterdir()} == before
    last = history(cli)[0]
    assert last["status"] == "error" and "min_free_mb = 100" in last["message"]
    assert json.loads(cli("status", "--json").stdout)[0]["applied_revision"] != revision


def test_sigterm_of_a_run_whose_disk_fills_ends_it_within_seconds(cli, converged,
                                                                 small_disk):
    commit_new_greeting(converged, greet_sleep=8)
    proc = cli.popen(*run_args(converged))
    for line in proc.stdout:  # Ansible sleeps on both targets from here on
        if "Take our time" in line:
            break
    time.sleep(0.5)
    filler = fill(small_disk, None)
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, SIGTERM_BOUND, "the run after SIGTERM")
    assert "SIGTERM: cancelling the run" in err
    assert_one_clear_error(proc.returncode, err, small_disk)
    # cancelled, or an error that says the run could not be recorded
    assert re.search(r"cancelled|the run ended \(\w+\) but run store", err), err
    fixed = commit_new_greeting(converged)  # the same greeting, no sleep
    assert_recovered(cli, converged, small_disk, filler, fixed, greetings(converged))
