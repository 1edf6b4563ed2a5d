"""The run store: a killed run is marked interrupted; results land in one transaction."""
import subprocess
import sys

from gitops_ansible.report import ExitCode
from gitops_ansible.store import (HostResult, Mode, RunRecord, RunStatus, Store, TaskResult,
                                  Transition, Verdict)


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
    interrupted = store.mark_interrupted("dev")
    assert len(interrupted) == 1
    run = store.runs("dev")[0]
    assert run["status"] == "interrupted" and run["finished_at"]
    assert store.env_state("dev").applied_revision is None
