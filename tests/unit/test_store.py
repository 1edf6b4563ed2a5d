"""The run store: a killed run is marked interrupted; results land in one transaction."""
import os
import sqlite3
import subprocess
import sys
from contextlib import closing

from gitops_ansible.report import ExitCode
from gitops_ansible.store import (SCHEMA_VERSION, HostResult, Mode, RunRecord, RunStatus, Store,
                                  TaskResult, Transition, Verdict)
from tests.conftest import CASES


def test_run_lifecycle_and_env_state(tmp_path):
    store = Store(tmp_path / "runs.db")
    run = RunRecord(env="dev", mode=Mode.PULL, trigger="schedule", revision="abc")
    store.start_run(run)
    assert store.runs("dev")[0]["status"] == "running"
    store.finish_run(run, Verdict(
        RunStatus.CHANGED, "1 of 1 hosts changed",
        [HostResult("web-1", "baremetal", ok=3, changed=1)],
        [TaskResult("web-1", "Write motd", "motd", "changed", 0.2)],
        Transition.applied("abc", run.id, run.started_at, good=True, fetched=True)))
    assert store.env_state("dev").applied_revision == "abc"
    assert store.runs("dev")[0]["exit_code"] == ExitCode.CHANGED
    assert store.host_results(run.id)[0]["outcome"] == "changed"
    assert store.task_results(run.id)[0]["changed"] == 1
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_killed_process_leaves_running_row_marked_interrupted(tmp_path):
    db = tmp_path / "runs.db"
    code = ("import os,sys; from gitops_ansible.store import *; s=Store(__import__('pathlib')"
            f".Path({str(db)!r})); s.start_run(RunRecord(env='dev', mode='pull', "
            "trigger='schedule', revision='abc')); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code])
    store = Store(db)
    [left] = store.running("dev")
    store.interrupted(left["id"], "the process ended before the run completed", 1000.0)
    run = store.runs("dev")[0]
    assert run["status"] == "interrupted" and run["finished_at"]
    assert store.env_state("dev").applied_revision is None


def test_a_version_1_store_is_upgraded_in_place_and_keeps_its_records(tmp_path):
    path = tmp_path / "runs.db"
    old = sqlite3.connect(path)
    old.executescript((CASES / "store_v1.sql").read_text())
    old.close()
    with closing(Store(path)) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        state = store.env_state("prod")
        assert state.applied_revision == state.good_revision == "a" * 40
        assert state.pinned_revision is None and state.applied_signer is None
        [run] = store.runs("prod")
        assert run["status"] == "changed" and run["signer"] is None and run["verify"] is None
        # the last good revision starts the history of applied ones (rollback, promotion)
        [row] = store.applied_history("prod")
        assert (row["revision"], row["run_id"], row["good"]) == ("a" * 40, run["id"], 1)
        store.apply("prod", Transition.pinned("a" * 40, "hold", 2000.0))
    with closing(Store(path)) as again:  # opening once more changes nothing
        assert len(again.applied_history("prod")) == 1
        assert again.env_state("prod").pinned_reason == "hold"


def test_status_shows_a_run_whose_process_is_gone(tmp_path):
    from gitops_ansible import records

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with closing(Store(tmp_path / "runs.db")) as store:
        run = RunRecord(env="dev", mode=Mode.PULL, trigger="schedule", revision="a" * 40)
        store.start_run(run)
        store.db.execute("UPDATE runs SET pid = ? WHERE id = ?", (gone.pid, run.id))
    [env] = records.status(tmp_path)
    assert env.dead_run and env.as_dict()["dead_run"] is True
    assert env.attention()[0] == (f"run {run.id} died: its process {gone.pid} is gone; the "
                                  "next cycle records it interrupted and converges again")
    with closing(Store(tmp_path / "runs.db")) as store:  # a live process: not dead
        store.db.execute("UPDATE runs SET pid = ? WHERE id = ?", (os.getpid(), run.id))
    assert not records.status(tmp_path)[0].dead_run
