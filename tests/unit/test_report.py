"""Redaction of secrets in text, events and artifact files; exit codes; diff rendering."""
from gitops_ansible.report import MASK, ExitCode, Redactor, render_diff


def test_redactor_scrubs_nested_events_and_files(tmp_path):
    redactor = Redactor({"s3cr3t-value", "xy"})  # too short values are ignored
    event = {"stdout": "password is s3cr3t-value", "event_data": {"res": {
        "diff": [{"after": "key=s3cr3t-value\n"}], "list": ["s3cr3t-value"]}}}
    redactor.scrub_event(event)
    assert "s3cr3t-value" not in str(event) and MASK in event["stdout"]
    artifact = tmp_path / "job_events" / "1.json"
    artifact.parent.mkdir()
    artifact.write_text('{"x": "s3cr3t-value"}')
    redactor.scrub_tree(tmp_path)
    assert "s3cr3t-value" not in artifact.read_text()
    assert redactor.scrub("xy stays") == "xy stays"
    # events are scrubbed before ansible-runner writes them: their directory can be skipped
    written = tmp_path / "job_events" / "2.json"
    stdout = tmp_path / "stdout"
    written.write_text("s3cr3t-value")
    stdout.write_text("s3cr3t-value")
    redactor.scrub_tree(tmp_path, skip=("job_events",))
    assert written.read_text() == "s3cr3t-value" and stdout.read_text() == MASK


def test_exit_codes_are_distinct_and_stable():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6]


def test_render_diff_shows_changed_lines():
    text = render_diff([{"before": "a\nb\n", "after": "a\nc\n", "before_header": "/etc/x",
                         "after_header": "/etc/x"}])
    assert "-b" in text and "+c" in text and "/etc/x" in text


def test_a_task_report_of_many_objects_is_kept_whole_then_counted():
    from types import SimpleNamespace

    from gitops_ansible.execute import REPORT_MAX, REPORT_VAR, Execution

    execution = Execution(SimpleNamespace(platforms={"kubernetes": ["big"]}, slices=[]),
                          Redactor())
    items = [f"ConfigMap ns/cm-{n:04d}: created" for n in range(1000)]
    execution.handle({"event": "runner_on_ok", "event_data": {
        "host": "big", "task": "Report", "res": {"changed": True, REPORT_VAR: items}}})
    [result] = execution.tasks
    assert result.status == "changed" and result.message.startswith(items[0])
    shown = result.message.split("; ")
    assert len(result.message) <= REPORT_MAX + 20 and len(shown) > 500  # not 57
    assert shown[-1] == f"(+{1000 - len(shown) + 1} more)" and shown[-2] in items
