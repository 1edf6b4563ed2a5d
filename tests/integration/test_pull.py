"""Pull cycles against real Git servers (file://, git daemon, SSH, HTTPS with a token).

The targets here are `local` platform targets (the controller itself, writing files into
a temporary directory), so these tests need Git servers but no SSH hosts; the bare-host
platform is covered by test_baremetal.py.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from gitops_ansible.execute import orphans
from tests.conftest import local_estate

pytestmark = pytest.mark.git


@pytest.fixture
def estate(git_servers, tmp_path, request):
    """A served repository holding the base example with two local targets."""
    return local_estate(git_servers, tmp_path, request.node.name)


def runs(state_dir: Path) -> list[dict]:
    db = sqlite3.connect(state_dir / "runs.db")
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started_at")]


def test_run_converges_then_nothing_to_do_then_new_commit(cli, estate, git_servers):
    url = git_servers.url(estate.name, "file")
    first = cli("run", "--repo", url, "--env", "dev", check_code=2)
    assert "alpha" in first.stdout and "TASK greet : Write the greeting" in first.stdout
    assert (estate.out / "alpha.txt").read_text() == "hello world\n"
    cli("run", "--repo", url, "--env", "dev", check_code=3)
    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: beta\n")
    second = estate.commit("beta gets its own greeting")
    done = cli("run", "--repo", url, "--env", "dev", "--json", check_code=2)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(line.get("revision") == second for line in lines if "run_id" in line)
    hosts = {line["host"]: line["outcome"] for line in lines if line["event"] == "host_result"}
    # the commit touches beta's variables only: beta runs, alpha stays as it was
    assert hosts == {"beta": "changed"}
    [result] = [line for line in lines if line["event"] == "cycle_result"]
    assert result["scope"] == {"full": None, "unchanged": ["alpha"], "left": [],
                               "hosts": {"beta": "inventories/dev/host_vars/beta.yml"}}
    assert (estate.out / "beta.txt").read_text() == "hello beta\n"
    status = json.loads(cli("status", "--json", check_code=0).stdout)
    assert status[0]["applied_revision"] == second == status[0]["good_revision"]
    # both targets are at the new revision: beta converged, alpha unaffected by it
    assert {h: (r["revision"], r["failed"]) for h, r in status[0]["hosts"].items()} == {
        "alpha": (second, False), "beta": (second, False)}


@pytest.mark.parametrize("transport", ["git", "ssh", "https"])
def test_transports(cli, estate, git_servers, transport, tmp_path):
    args = ["run", "--repo", git_servers.url(estate.name, transport), "--env", "dev"]
    if transport == "ssh":
        args += ["--ssh-key", git_servers.client_key, "--known-hosts", git_servers.known_hosts]
    if transport == "https":
        cli.env.update(GIT_SSL_CAINFO=str(git_servers.ca_file),
                       GITOPS_ANSIBLE_GIT_TOKEN=git_servers.token)
    done = cli(*args, check_code=2)
    assert (estate.out / "beta.txt").exists()
    if transport == "https":
        assert any(r["authorized"] for r in git_servers.requests)
        leaked = [p for p in tmp_path.rglob("*") if p.is_file() and git_servers.token.encode()
                  in p.read_bytes()]
        assert not leaked and git_servers.token not in done.stdout + done.stderr


def test_https_with_wrong_token_fails_cleanly(cli, estate, git_servers, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n")
    cli.env["GIT_SSL_CAINFO"] = str(git_servers.ca_file)
    done = cli("run", "--repo", git_servers.url(estate.name, "https"), "--env", "dev",
               "--git-token-file", token_file, check_code=1)
    assert "fetch failed" in done.stderr and "wrong-token" not in done.stderr
    assert not (estate.out / "alpha.txt").exists()


def test_ssh_unknown_host_key_is_refused_unless_accepted(cli, estate, git_servers, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    url = git_servers.url(estate.name, "ssh")
    args = ["run", "--repo", url, "--env", "dev", "--ssh-key", git_servers.client_key,
            "--known-hosts", empty]
    done = cli(*args, check_code=1)
    assert "Host key verification failed" in done.stderr
    assert not (estate.out / "alpha.txt").exists()
    cli(*args, "--accept-host-key", check_code=2)
    server_key = git_servers.known_hosts.read_text().split()[2]
    assert server_key in empty.read_text()  # remembered (hashed host name)


def test_tag_and_commit_refs(cli, estate, git_servers):
    from lab.gitserver import git

    first = estate.revision
    git("tag", "v1", cwd=estate.path)
    git("push", "-q", "origin", "v1", cwd=estate.path)
    estate.write("inventories/dev/host_vars/alpha.yml", "---\ngreet_name: later\n")
    estate.commit("a later commit")
    url = git_servers.url(estate.name, "git")
    done = cli("run", "--repo", url, "--ref", "v1", "--env", "dev", "--json", check_code=2)
    assert f'"revision": "{first}"' in done.stdout
    assert (estate.out / "alpha.txt").read_text() == "hello world\n"
    cli("run", "--repo", url, "--ref", first, "--env", "dev", check_code=3)
    cli("run", "--repo", url, "--ref", "main", "--env", "dev", check_code=2)
    assert (estate.out / "alpha.txt").read_text() == "hello later\n"


def test_git_server_down_keeps_last_good_and_recovers(cli, estate, git_servers, tmp_path):
    url = git_servers.url(estate.name, "git")
    cli("run", "--repo", url, "--env", "dev", check_code=2)
    current = (tmp_path / "state/work/dev/current").resolve()
    assert current.name == estate.revision
    estate.write("inventories/dev/host_vars/alpha.yml", "---\ngreet_name: after outage\n")
    new = estate.commit("a commit made while the server is down")
    git_servers.stop_daemon()
    try:
        down = cli("run", "--repo", url, "--env", "dev", check_code=1)
        assert "fetch failed" in down.stderr and "last good revision" in down.stderr
        assert (tmp_path / "state/work/dev/current").resolve() == current
        status = json.loads(cli("status", "--json").stdout)[0]
        assert status["fetch_error"] and status["good_revision"] == estate.revision
        assert runs(tmp_path / "state")[-1]["status"] == "error"
        forced = cli("run", "--repo", url, "--env", "dev", "--force", check_code=0)
        assert "converging the last good revision" in forced.stderr
    finally:
        git_servers.start_daemon()
    cli("run", "--repo", url, "--env", "dev", check_code=2)
    assert (estate.out / "alpha.txt").read_text() == "hello after outage\n"
    status = json.loads(cli("status", "--json").stdout)[0]
    assert status["applied_revision"] == new and status["fetch_error"] is None


def test_refused_commits_leave_last_good_applied(cli, estate, git_servers, tmp_path):
    url = git_servers.url(estate.name, "file")
    cli("run", "--repo", url, "--env", "dev", check_code=2)
    good = estate.revision
    before = (estate.out / "alpha.txt").stat().st_mtime_ns
    estate.write("inventories/dev/group_vars/controllers.yml",
                 f"---\nplatform: local\ngreet_dir: [{estate.out}\ngreet_name: broken\n")
    bad_yaml = estate.commit("broken YAML")
    done = cli("run", "--repo", url, "--env", "dev", check_code=5)
    assert "inventories/dev/group_vars/controllers.yml:4: invalid YAML" in done.stderr
    again = cli("run", "--repo", url, "--env", "dev", check_code=5)
    assert f"revision {bad_yaml[:12]} was refused" in again.stderr
    estate.write("inventories/dev/group_vars/controllers.yml",
                 f"---\nplatform: mainframe\nansible_connection: local\ngreet_dir: {estate.out}\n")
    estate.commit("unknown platform")
    done = cli("run", "--repo", url, "--env", "dev", check_code=5)
    assert "unknown platform 'mainframe'" in done.stderr
    assert "inventories/dev/group_vars/controllers.yml:2" in done.stderr
    assert (estate.out / "alpha.txt").stat().st_mtime_ns == before
    state = json.loads(cli("status", "--json").stdout)[0]
    assert state["applied_revision"] == good == state["good_revision"]
    assert (tmp_path / "state/work/dev/current").resolve().name == good
    statuses = [r["status"] for r in runs(tmp_path / "state")]
    assert statuses == ["changed", "refused", "refused"]


def test_two_runs_never_overlap(cli, estate, git_servers, tmp_path):
    estate.write("inventories/dev/group_vars/all.yml", "---\ngreet_sleep: 3\n")
    estate.commit("slow converge")
    url = git_servers.url(estate.name, "file")
    first = cli.popen("run", "--repo", url, "--env", "dev", "--force")
    second = cli.popen("run", "--repo", url, "--env", "dev", "--force")
    codes = [first.wait(120), second.wait(120)]
    assert sorted(codes) == [0, 2], codes  # one converges with changes, then one without
    done = sorted(runs(tmp_path / "state"), key=lambda r: r["started_at"])
    assert len(done) == 2
    assert done[0]["finished_at"] <= done[1]["started_at"]
    journal = (estate.out / "journal").read_text().split()
    marks = [word for word in journal if word in ("start", "end")]
    assert marks == ["start", "start", "end", "end"] * 2  # two hosts per run, runs in turn
    busy = cli.popen("run", "--repo", url, "--env", "dev", "--force")
    said(busy, "converging ")  # it holds the lock
    refused = cli("run", "--repo", url, "--env", "dev", "--force", "--lock", "fail",
                  check_code=6)
    assert "another cycle of 'dev' is running" in refused.stderr
    assert busy.wait(120) == 0


def test_killed_run_is_recorded_and_the_next_run_completes(cli, estate, git_servers, tmp_path):
    estate.write("inventories/dev/group_vars/all.yml", "---\ngreet_sleep: 30\n")
    revision = estate.commit("slow converge")
    url = git_servers.url(estate.name, "file")
    proc = cli.popen("run", "--repo", url, "--env", "dev")
    deadline = time.monotonic() + 60
    while not (estate.out / "journal").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the controller dies; its Ansible keeps running
    proc.wait(10)
    killed = runs(tmp_path / "state")[-1]
    assert killed["status"] == "running" and orphans(killed["id"])
    estate.write("inventories/dev/group_vars/all.yml", "---\ngreet_sleep: 0\n")
    fixed = estate.commit("fast again")
    done = cli("run", "--repo", url, "--env", "dev", check_code=2)
    assert "was interrupted" in done.stderr
    assert not orphans(killed["id"])
    assert (estate.out / "journal").read_text().count("end") == 0  # never finished
    statuses = [r["status"] for r in runs(tmp_path / "state")]
    assert statuses == ["interrupted", "changed"]
    assert (estate.out / "alpha.txt").exists()
    state = json.loads(cli("status", "--json").stdout)[0]
    assert state["applied_revision"] == fixed != revision


def test_history_shows_runs_with_hosts_trigger_revision_duration(cli, estate, git_servers):
    url = git_servers.url(estate.name, "file")
    cli("run", "--repo", url, "--env", "dev", check_code=2)
    table = cli("history", "--env", "dev", check_code=0).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:6] == ["RUN", "ENV", "MODE", "TRIGGER", "REVISION", "STATUS"]
    assert estate.revision[:12] in row and "alpha:changed" in row and "beta:changed" in row
    assert " pull " in row and " schedule " in row
    run_id = row.split()[0]
    detail = cli("history", run_id, check_code=0).stdout
    assert "greet : Write the greeting" not in detail  # task names are stored without role
    assert "Write the greeting" in detail and "changed" in detail


@pytest.mark.parametrize("how", ["timeout", "sigterm"])
def test_timeout_and_sigterm_cancel_the_run_cleanly(cli, estate, git_servers, tmp_path, how):
    estate.write("inventories/dev/group_vars/all.yml", "---\ngreet_sleep: 60\n")
    estate.commit("a converge that takes a minute")
    url = git_servers.url(estate.name, "file")
    started = time.monotonic()
    if how == "timeout":
        done = cli("run", "--repo", url, "--env", "dev", "--timeout", "3", check_code=1)
        assert "cancelled after the 3s timeout" in done.stderr
    else:
        proc = cli.popen("run", "--repo", url, "--env", "dev")
        deadline = time.monotonic() + 60
        while not (estate.out / "journal").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1
        assert "SIGTERM" in proc.stderr.read()
    assert time.monotonic() - started < 45  # well before the 60 s task would have ended
    last = runs(tmp_path / "state")[-1]
    assert last["status"] == "cancelled" and last["exit_code"] == 1
    run_id = last["id"]
    assert not orphans(run_id)
    state = json.loads(cli("status", "--json").stdout)[0]
    assert state.get("applied_revision") is None  # a cancelled run applies nothing


def said(proc, *texts) -> str:
    """The first line of ``proc``'s output (progress goes to stdout) holding one of
    ``texts``: a process is known to be there, however loaded the machine is."""
    for line in proc.stdout:
        if any(text in line for text in texts):
            return line
    raise AssertionError(f"the process ended (exit {proc.wait()}) without saying {texts}")


def test_sigterm_stops_a_waiting_or_validating_cycle_before_ansible(cli, estate, git_servers,
                                                                     tmp_path):
    """SIGTERM while a cycle waits for the lock, or while it validates a large commit,
    ends it there: exit 1, recorded as cancelled (when a run had started), no target
    touched."""
    url = git_servers.url(estate.name, "file")
    holder = cli.popen("run", "--repo", url, "--env", "dev")  # converges, holds the lock
    while not (estate.out / "alpha.txt").exists() and holder.poll() is None:
        time.sleep(0.1)
    estate.write("inventories/dev/group_vars/all.yml", "---\ngreet_sleep: 5\n")
    estate.commit("slow converge")
    slow = cli.popen("run", "--repo", url, "--env", "dev", "--force")
    said(slow, "converging ")  # it holds the lock (said once it has it) for 5 s or more
    waiter = cli.popen("run", "--repo", url, "--env", "dev", "--force")
    said(waiter, "waiting for the running cycle")  # its handlers are set: it waits
    waiter.send_signal(signal.SIGTERM)
    assert waiter.wait(10) == 1
    assert "before the run started; nothing was changed" in waiter.stderr.read()
    assert holder.wait(120) in (0, 2) and slow.wait(120) in (0, 2)

    rows = "\n".join(f"  key_{n}: {'x' * 200}" for n in range(200_000))
    estate.write("inventories/dev/group_vars/all.yml", f"---\nbig:\n{rows}\n")
    estate.commit("a 40 MB vars file")
    (estate.out / "alpha.txt").unlink()
    proc = cli.popen("run", "--repo", url, "--env", "dev", "--json")
    said(proc, '"converging', "converging ")  # the fetch is done, validation starts
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 1
    last = runs(tmp_path / "state")[-1]
    assert last["status"] == "cancelled" and "before Ansible ran" in last["message"]
    assert not (estate.out / "alpha.txt").exists()
