"""The agent's parts that need no process: its config file, maintenance windows, webhook
signatures and matching, and the Prometheus text it serves."""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitops_ansible import config, schedule
from gitops_ansible.agent import _matches
from gitops_ansible.server import Metrics, render, verify
from tests.conftest import CASES, make_settings

CONFIG_CASES = sorted((CASES / "agent_config").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIG_CASES, ids=[p.stem for p in CONFIG_CASES])
def test_agent_config_cases(path):
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    if expect == "ok":
        loaded = config.load_agent(str(path), environ={})
        assert [s.name for s in loaded.sources] == ["dev", "prod"]
        prod = loaded.sources[1]
        assert prod.settings.vault_password_file == "inventories/prod/.vault-pass"
        assert prod.options["drift"] == "heal" and prod.options["interval"] == 120
        assert loaded.sources[0].options["interval"] == 120 == 2 * 60
        assert loaded.agent["grace"] == 300
        assert prod.commit_status["api_url"] == "https://gitlab.com"
        assert prod.windows[0].describe() == "deny '0 8 * * 1-5' for 600 min (Europe/Berlin)"
        return
    with pytest.raises(config.ConfigError) as error:
        config.load_agent(str(path), environ={})
    assert str(path) in str(error.value)
    assert expect in str(error.value)


def test_environment_overrides_shared_settings_but_not_a_source_table(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('timeout = 60\n[[sources]]\nrepo = "file:///r.git"\nenv = "dev"\n'
                    '[[sources]]\nrepo = "file:///r.git"\nenv = "prod"\ntimeout = 900\n')
    loaded = config.load_agent(str(path), environ={"GITOPS_ANSIBLE_TIMEOUT": "120"})
    assert [s.settings.timeout for s in loaded.sources] == [120, 900]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("when, active", [
    ("2026-01-14T20:59", False),   # 21:59 in Berlin (UTC+1 in winter)
    ("2026-01-14T21:00", True),    # 22:00 in Berlin: the window opens
    ("2026-01-14T22:59", True),    # 23:59 in Berlin
    ("2026-01-14T23:00", False),   # two hours later: closed
    ("2026-07-14T20:30", True),    # 22:30 in Berlin in summer (UTC+2)
    ("2026-01-17T21:30", False),   # a Saturday
])
def test_deny_window_in_its_time_zone(when, active):
    window = schedule.parse_window({"deny": "0 22 * * 1-5", "duration": "2h",
                                    "timezone": "Europe/Berlin"})
    assert window.active(at(when)) is active
    assert (schedule.blocking_window([window], at(when)) is not None) is active


def test_allow_windows_block_outside_them():
    allow = schedule.parse_window({"allow": "0 2 * * *", "duration": "1h30m", "timezone": "UTC"})
    assert schedule.blocking_window([allow], at("2026-03-02T03:29")) is None
    reason = schedule.blocking_window([allow], at("2026-03-02T03:30"))
    assert reason.startswith("outside every allow window")


@pytest.mark.parametrize("text, seconds", [(90, 90), ("90", 90), ("1.5s", 1.5), ("15m", 900),
                                           ("1h30m", 5400), ("2d", 172800)])
def test_durations(text, seconds):
    assert schedule.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 minutes", "-3", "1h junk"])
def test_bad_durations(text):
    with pytest.raises(schedule.ScheduleError):
        schedule.parse_duration(text)


def test_cron_fields():
    cron = schedule.Cron.parse("*/15 9-17 * * 1-5,7")
    assert cron.fields[0] == frozenset({0, 15, 30, 45}) and 0 in cron.fields[4]
    with pytest.raises(schedule.ScheduleError, match="five fields"):
        schedule.Cron.parse("* * *")


def test_signatures_are_checked():
    body, secret = b'{"ref": "refs/heads/main"}', "s3cret"
    good = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert verify("github", secret, {"X-Hub-Signature-256": good}, body)
    assert not verify("github", secret, {"X-Hub-Signature-256": good}, body + b" ")
    assert not verify("github", secret, {}, body)
    assert verify("generic", secret, {"X-Signature": good}, body)
    assert verify("gitlab", secret, {"X-Gitlab-Token": secret}, body)
    assert not verify("gitlab", secret, {"X-Gitlab-Token": secret + "x"}, body)


def source(repo: str, ref: str):
    return config.Source("s", make_settings(repo=repo, ref=ref, env="dev"), {}, [])


@pytest.mark.parametrize("repo, ref, pushed, names, default, hit", [
    ("git@github.com:org/estate.git", "main", "refs/heads/main", {"org/estate"}, None, True),
    ("https://github.com/org/estate", "main", "refs/heads/dev", {"org/estate"}, None, False),
    ("https://github.com/org/estate", "main", "refs/heads/main", {"org/other"}, None, False),
    ("https://gitlab.example.com/group/sub/estate.git", "v2", "refs/tags/v2",
     {"group/sub/estate"}, None, True),
    ("https://github.com/org/estate", "HEAD", "refs/heads/trunk", {"org/estate"}, "trunk", True),
    ("https://github.com/org/estate", "HEAD", "refs/heads/topic", {"org/estate"}, "trunk", False),
    ("https://github.com/org/estate", "a" * 40, "refs/heads/main", {"org/estate"}, None, False),
    ("file:///srv/git/estate.git", "main", "refs/heads/main", set(), None, True),
])
def test_which_sources_a_push_concerns(repo, ref, pushed, names, default, hit):
    assert _matches(source(repo, ref), pushed, names, default) is hit


def test_metrics_parse_as_prometheus_text():
    metrics = Metrics()
    metrics.inc("gitops_ansible_cycles_total", env="prod", result="changed")
    metrics.inc("gitops_ansible_cycles_total", env="prod", result="changed")
    metrics.observe("prod", 42.0)
    text = render(metrics, [("gitops_ansible_applied_revision_info", "applied",
                             {"env": "prod", "revision": "abc"}, 1)])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    cycles = families["gitops_ansible_cycles"].samples
    assert [(s.labels, s.value) for s in cycles] == [({"env": "prod", "result": "changed"}, 2)]
    duration = families["gitops_ansible_run_duration_seconds"]
    assert duration.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in duration.samples if s.name.endswith("_bucket")}
    assert buckets["30"] == 0 and buckets["60"] == 1 and buckets["+Inf"] == 1
    assert families["gitops_ansible_applied_revision_info"].samples[0].labels["revision"] == "abc"
