"""The run's journal: what a killed run is completed from."""
from __future__ import annotations

import os

from gitops_ansible import journal
from gitops_ansible.execute import host_results
from gitops_ansible.report import Redactor
from gitops_ansible.store import TaskResult


def test_results_and_lines_come_back_in_order_with_secrets_masked(tmp_path):
    path = journal.path_for(tmp_path, "run-1")
    written = journal.Journal(path, Redactor({"hunter22"}), {"web-1": "baremetal"},
                              {"revision": "a" * 40})
    written.line(10.0, "info", "converging with hunter22")
    written.task(TaskResult("web-1", "Write config", "nginx", "changed", 0.5, diff="+x"))
    written.task(TaskResult("web-1", "Restart", "nginx", "ok"))
    written.close()
    found = journal.replay(path)
    assert [t.task for t in found.tasks] == ["Write config", "Restart"]
    assert found.tasks[0].diff == "+x" and found.stats is None
    assert found.lines == [(10.0, "info", "converging with ********")]
    assert found.platforms == {"web-1": "baremetal"} and found.last_at
    assert found.run == {"revision": "a" * 40}
    hosts = host_results(found.tasks, found.stats, found.platforms)
    assert hosts["web-1"].outcome == "changed" and hosts["web-1"].ok == 2
    assert hosts["web-1"].platform == "baremetal"


def test_a_line_cut_short_by_a_kill_is_left_out(tmp_path):
    path = journal.path_for(tmp_path, "run-2")
    written = journal.Journal(path, Redactor(), {}, {})
    written.task(TaskResult("db-1", "Install", None, "failed", message="no space"))
    written.close()
    with open(path, "a") as handle:
        handle.write('{"at": 5, "task": {"host": "db-1", "ta')
    found = journal.replay(path)
    assert [(t.host, t.status) for t in found.tasks] == [("db-1", "failed")]
    assert host_results(found.tasks, None, {})["db-1"].outcome == "failed"


def test_ansible_stats_win_over_counting_and_no_journal_is_none(tmp_path):
    path = journal.path_for(tmp_path, "run-3")
    written = journal.Journal(path, Redactor(), {}, {})
    written.task(TaskResult("a", "t", None, "changed"))
    written.stats({"ok": {"a": 7}, "changed": {"a": 3}, "processed": {"a": 1, "b": 1}})
    found = journal.replay(path)
    hosts = host_results(found.tasks, found.stats, found.platforms)
    assert (hosts["a"].ok, hosts["a"].changed, hosts["b"].outcome) == (7, 3, "ok")
    written.remove()  # recorded: the journal goes
    assert journal.replay(path) is None


def test_a_write_that_fails_is_kept_as_the_error(tmp_path):
    path = journal.path_for(tmp_path, "run-4")
    written = journal.Journal(path, Redactor(), {}, {})
    os.close(written.fd)
    written.fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    written.task(TaskResult("a", "t", None, "ok"))
    assert written.error and written.error.strerror == "No space left on device"
    written.close()
    assert [t.task for t in journal.replay(path).tasks] == []  # nothing half written


def test_a_line_of_another_version_is_left_out(tmp_path):
    path = journal.path_for(tmp_path, "run-5")
    path.parent.mkdir(parents=True)
    path.write_text('{"at": 1, "task": {"host": "a", "task": "t", "role": null, "status": "ok",'
                    ' "colour": "blue"}}\n{"at": 2, "task": {"host": "b"}}\n'
                    '{"at": 3, "line": [1, "info"]}\n{"at": 4, "stats": null}\n')
    found = journal.replay(path)
    assert [(t.host, t.status) for t in found.tasks] == [("a", "ok")]
    assert found.lines == [] and found.stats is None and found.last_at == 1
