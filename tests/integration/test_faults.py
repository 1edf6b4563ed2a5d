"""Faults lose nothing: a store locked by another process, and the controller killed at
chosen moments of a run (during Ansible, between Ansible's end and the record).

A store that cannot be written is an error (exit 1) naming its holder; a run that could
not be recorded, or whose process died, is recorded by the next cycle from its journal:
the hosts that changed as changed, the run interrupted when its last result came. The
targets are `local` ones writing into a temporary directory (tests/conftest.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import local_estate

pytestmark = pytest.mark.git

HOLD = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()")


LINGER = """
- name: Linger after the greeting (once)
  ansible.builtin.shell: "touch {{ inventory_hostname }}.lingered && sleep {{ greet_linger }}"
  args:
    chdir: "{{ greet_dir }}"
    creates: "{{ inventory_hostname }}.lingered"
  changed_when: false
  when: greet_linger | default(0) | int > 0
"""


@pytest.fixture
def estate(git_servers, tmp_path, request):
    """The local estate, whose greeting role can linger after it wrote the greeting (on
    the first converge only, so that the next cycle is quick)."""
    tree = local_estate(git_servers, tmp_path, request.node.name)
    tasks = tree.path / "roles/greet/tasks/main.yml"
    tree.write("roles/greet/tasks/main.yml", tasks.read_text() + LINGER)
    tree.revision = tree.commit("greet: may linger")
    return tree


@contextmanager
def held(store: Path):
    """Another process holding an exclusive transaction on the store until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(10)


def wait_for(what, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not seen within {timeout}s: {what.__doc__}")


def journal_entries(state: Path) -> list[dict]:
    """what the running run's journal holds"""
    entries = []
    for path in (state / "journal").glob("*.jsonl"):
        entries += [json.loads(line) for line in path.read_text().splitlines() if line]
    return entries


def greeted(state: Path) -> set[str]:
    """the hosts whose greeting was written, as the journal says"""
    return {e["task"]["host"] for e in journal_entries(state) if "task" in e
            and e["task"]["task"] == "Write the greeting" and e["task"]["status"] == "changed"}


def history(cli) -> list[dict]:
    return json.loads(cli("history", "--env", "dev", "--json", check_code=0).stdout)


def detail(cli, run_id: str) -> dict:
    return json.loads(cli("history", run_id, "--json", check_code=0).stdout)


def test_a_store_locked_at_the_start_is_an_error_naming_its_holder(cli, estate, git_servers,
                                                                    tmp_path):
    url = git_servers.url(estate.name, "file")
    first = estate.revision
    cli("run", "--repo", url, "--env", "dev", check_code=2)
    estate.write("inventories/dev/group_vars/all.yml", "---\ngreet_name: faults\n")
    new = estate.commit("a new greeting")
    with held(tmp_path / "state/runs.db") as holder:
        done = cli("run", "--repo", url, "--env", "dev", check_code=1)
    assert "locked by another process for more than 30s" in done.stderr
    assert f"held by pid {holder.pid}" in done.stderr and "Traceback" not in done.stderr
    assert (estate.out / "alpha.txt").read_text() == "hello world\n"  # nothing touched
    assert not list((tmp_path / "state").glob("logs/*.traceback"))
    [state] = json.loads(cli("status", "--json", check_code=0).stdout)
    assert state["applied_revision"] == first
    cli("run", "--repo", url, "--env", "dev", check_code=2)  # the lock is gone: converges
    assert (estate.out / "alpha.txt").read_text() == "hello faults\n"
    [state] = json.loads(cli("status", "--json", check_code=0).stdout)
    assert state["applied_revision"] == new


@pytest.mark.parametrize("moment", ["recording", "killed-recording", "killed-ansible"])
def test_a_run_that_could_not_be_recorded_is_recorded_from_its_journal(
        cli, estate, git_servers, tmp_path, moment):
    """recording: the store is locked when the run ends (it gives up, exit 1);
    killed-recording: the controller is killed while it waits for that lock, after
    Ansible ended; killed-ansible: it is killed while Ansible runs."""
    url = git_servers.url(estate.name, "file")
    slow = "greet_linger: 60" if moment == "killed-ansible" else "greet_sleep: 2"
    estate.write("inventories/dev/group_vars/all.yml", f"---\ngreet_name: journal\n{slow}\n")
    revision = estate.commit("a slow converge")
    state = tmp_path / "state"
    proc = cli.popen("run", "--repo", url, "--env", "dev")
    if moment == "killed-ansible":
        wait_for(lambda: greeted(state) == {"alpha", "beta"})
        proc.kill()  # the controller dies mid-run; its Ansible is stopped by the next cycle
        proc.wait(10)
        ended = time.time()
    else:
        wait_for(lambda: journal_entries(state))  # converging: the run's row is written
        with held(state / "runs.db"):
            wait_for(lambda: any("stats" in e for e in journal_entries(state)))
            if moment == "killed-recording":
                time.sleep(1)  # Ansible has ended; the controller waits to record
                proc.kill()
                proc.wait(10)
            else:
                assert proc.wait(120) == 1
                stderr = proc.stderr.read()
                assert "the run ended (changed) but run store" in stderr
                assert "its results stay in" in stderr and "Traceback" not in stderr
            ended = time.time()
    [left] = [r for r in history(cli) if r["status"] == "running"]
    done = cli("run", "--repo", url, "--env", "dev", check_code=0)  # all was done: no change
    assert f"run {left['id']} was interrupted; recorded as such" in done.stderr
    said = {"killed-ansible": "task results recorded from its journal)",
            "killed-recording": "(Ansible had finished)",
            "recording": "the run ended (changed) but could not be recorded: 2 of 2 hosts "
                         "changed"}[moment]
    assert f"{said}; changed: alpha, beta" in done.stderr
    run = detail(cli, left["id"])
    assert run["status"] == "interrupted" and run["exit_code"] == 1
    assert run["finished_at"] <= ended  # when its last result came, not when noticed
    assert {h["host"]: h["outcome"] for h in run["hosts"]} == {"alpha": "changed",
                                                                "beta": "changed"}
    changed = {(t["host"], t["task"]) for t in run["tasks"] if t["status"] == "changed"}
    assert changed == {("alpha", "Write the greeting"), ("beta", "Write the greeting")}
    if moment != "killed-ansible":
        assert (Path(left["artifacts"]) / ".redacted").exists()  # redacted: kept
    assert any("converging" in line["message"] for line in run["logs"])
    assert not (state / "journal" / f"{left['id']}.jsonl").exists()
    statuses = [r["status"] for r in history(cli)]
    assert "running" not in statuses and statuses[:2] == ["unchanged", "interrupted"]
    [env] = json.loads(cli("status", "--json", check_code=0).stdout)
    assert env["applied_revision"] == revision
    assert (estate.out / "beta.txt").read_text() == "hello journal\n"


def test_sigterm_records_cancelled_with_the_results_so_far(cli, estate, git_servers, tmp_path):
    url = git_servers.url(estate.name, "file")
    estate.write("inventories/dev/group_vars/all.yml", "---\ngreet_linger: 60\n")
    estate.commit("a converge that lingers a minute")
    proc = cli.popen("run", "--repo", url, "--env", "dev")
    wait_for(lambda: greeted(tmp_path / "state") == {"alpha", "beta"})
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 1
    [run] = history(cli)
    assert run["status"] == "cancelled"
    # no final stats from Ansible: what changed comes from the results that had arrived
    hosts = {h["host"]: h["outcome"] for h in detail(cli, run["id"])["hosts"]}
    assert hosts == {"alpha": "changed", "beta": "changed"}
    assert not list((tmp_path / "state/journal").glob("*.jsonl"))  # recorded: journal gone
