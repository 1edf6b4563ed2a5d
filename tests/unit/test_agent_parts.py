"""The agent's parts that need no process: its config file, maintenance windows, webhook
signatures and matching, the alert policy, the scheduler's choices, and the Prometheus text
and JSON it serves."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import math
import socket
import threading
from contextlib import closing
from datetime import datetime, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitops_ansible import config, schedule, server, webhooks
from gitops_ansible.agent import TICK, Agent, SourceState, sleep_for, take_job
from gitops_ansible.alerts import AlertState, ended_status, held_status, started_status
from gitops_ansible.reconcile import Result
from gitops_ansible.report import ExitCode
from gitops_ansible.records import suspend
from gitops_ansible.server import Gauges, Metrics, gauges, serve
from gitops_ansible.store import (EnvState, HostResult, Mode, RunRecord, RunStatus, Store,
                                  Transition, Verdict)
from gitops_ansible.webhooks import _matches, verify
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
    metrics = Metrics(Gauges(lambda: [("gitops_ansible_applied_revision_info",
                                       {"env": "prod", "revision": "abc"}, 1)]))
    metrics.inc("gitops_ansible_cycles_total", env="prod", result="changed")
    metrics.inc("gitops_ansible_cycles_total", env="prod", result="changed")
    metrics.observe("prod", 42.0)
    text = metrics.text().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    cycles = families["gitops_ansible_cycles"].samples
    assert [(s.labels, s.value) for s in cycles] == [({"env": "prod", "result": "changed"}, 2)]
    duration = families["gitops_ansible_run_duration_seconds"]
    assert duration.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in duration.samples if s.name.endswith("_bucket")}
    assert buckets["30"] == 0 and buckets["60"] == 1 and buckets["+Inf"] == 1
    assert families["gitops_ansible_applied_revision_info"].samples[0].labels["revision"] == "abc"


# -- the alert policy: on a change of state, not per cycle ------------------------------------
def result(status: RunStatus, revision="a" * 40, hosts=(), message="msg") -> Result:
    return Result(ExitCode.OK, status, message, "run-1", revision, list(hosts))


def test_failure_alerted_once_then_recovery_once():
    told, sent = AlertState(), []
    for status in (RunStatus.FAILED, RunStatus.ERROR, RunStatus.SUSPENDED, RunStatus.NOTHING,
                   RunStatus.NOTHING):
        told, news = told.after_cycle("prod", result(status), stopping=False)
        sent += [a.event for a in news]
    assert sent == ["failure", "recovery"]  # a suspended cycle is no recovery
    assert not told.failing


def test_cancel_by_the_operator_is_no_failure_but_a_cancel_of_a_run_is():
    state, news = AlertState().after_cycle("prod", result(RunStatus.CANCELLED), stopping=True)
    assert news == [] and not state.failing
    state, news = AlertState().after_cycle("prod", result(RunStatus.CANCELLED), stopping=False)
    assert [a.event for a in news] == ["failure"] and state.failing


def test_a_refused_revision_is_alerted_once_and_a_new_one_again():
    told, sent = AlertState(), []
    for revision in ("a" * 40, "a" * 40, "b" * 40):
        told, news = told.after_cycle("prod", result(RunStatus.REFUSED, revision),
                                      stopping=False)
        sent += [(a.event, revision[0]) for a in news]
    assert sent == [("refused", "a"), ("refused", "b")]
    assert not told.failing  # refused is a policy outcome, not a failure


def test_drift_alerted_when_the_set_of_drifted_hosts_changes():
    def drift(*hosts) -> Result:
        return result(RunStatus.DRIFTED, hosts=[HostResult(h, changed=1) for h in hosts])

    told, sent = AlertState(), []
    for checked in (drift("web-1"), drift("web-1"), result(RunStatus.FAILED), drift("web-1"),
                    drift("web-1", "web-2"), result(RunStatus.UNCHANGED), drift("web-1")):
        told, news = told.after_drift(checked)
        sent += [a.message for a in news]
    assert sent == ["drift on web-1", "drift on web-1, web-2", "drift on web-1"]


def test_a_restarted_agent_does_not_alert_a_known_failure_again():
    failing = EnvState("prod", applied_revision="a" * 40, good_revision="b" * 40)
    assert AlertState.of(failing).failing
    assert AlertState.of(EnvState("prod", fetch_error="unreachable")).failing
    assert not AlertState.of(EnvState("prod", applied_revision="a" * 40,
                                      good_revision="a" * 40)).failing


def test_commit_status_of_a_run():
    assert started_status("prod") == ("pending", "gitops-ansible: converging prod")
    assert ended_status("prod", result(RunStatus.CHANGED, message="2 hosts")) == \
        ("success", "prod: changed: 2 hosts")
    assert ended_status("prod", result(RunStatus.REFUSED))[0] == "failure"


def test_a_held_candidate_gets_one_pending_status_saying_why():
    waiting = Result(ExitCode.NOTHING, RunStatus.NOTHING, "-", candidate="c" * 40,
                     waiting="cccccccccccc soaks in staging until 14:30:00 (soak 1800s)")
    told, posted = held_status("prod", AlertState(), waiting, "staging")
    assert posted == ("pending", "prod: waiting for promotion from staging: cccccccccccc "
                                 "soaks in staging until 14:30:00 (soak 1800s)")
    assert held_status("prod", told, waiting, "staging") == (told, None)
    pinned = Result(ExitCode.NOTHING, RunStatus.NOTHING, "-", candidate="d" * 40,
                    waiting="pinned at aaaaaaaaaaaa since 2026-12-01 10:00:00: bad release")
    assert held_status("prod", told, pinned, "staging")[1] == (
        "pending", "prod: pinned at aaaaaaaaaaaa since 2026-12-01 10:00:00: bad release")
    nothing_held = Result(ExitCode.NOTHING, RunStatus.NOTHING, "-")
    assert held_status("prod", told, nothing_held, None) == (told, None)


# -- the scheduler's choices -------------------------------------------------------------------
def scheduled(name: str, next_cycle=math.inf, next_drift=math.inf, pending=None, **options):
    options = {"interval": 60, "jitter": 0, "retry_base": 5, "retry_max": 30,
               "drift_interval": 0, **options}
    src = config.Source(name, make_settings(repo="file:///r.git", env=name), options, [])
    return SourceState(src, next_cycle, next_drift, pending=pending)


def test_jobs_run_in_the_documented_order():
    dev, staging, prod = (scheduled("dev", next_drift=0), scheduled("staging", next_cycle=0),
                          scheduled("prod", pending="webhook:github"))
    states = [dev, staging, prod]
    order = []
    while job := take_job(states, now=10):
        state, kind, trigger = job
        order.append((state.env, kind, trigger))
        state.next_cycle = state.next_drift = math.inf
    assert order == [("prod", "cycle", "webhook:github"), ("staging", "cycle", "schedule"),
                     ("dev", "drift", "drift")]
    assert prod.pending is None
    heal = scheduled("dev", pending="heal")
    assert take_job([heal], now=0)[1:] == ("heal", "heal")
    assert sleep_for([scheduled("dev", next_cycle=12)], now=10) == 2
    assert sleep_for([scheduled("dev")], now=10) == TICK


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it():
    state = scheduled("dev")
    delays = []
    for _ in range(5):
        state.after(RunStatus.ERROR, now=100)
        delays.append(state.next_cycle - 100)
    assert delays == [5, 10, 20, 30, 30] and state.failures == 5
    state.after(RunStatus.NOTHING, now=100)
    assert (state.failures, state.backoff, state.next_cycle) == (0, 0.0, 160)
    assert state.last_success is not None
    state.after(RunStatus.BUSY, now=100)  # another cycle held the lock: soon, not a failure
    assert (state.failures, state.next_cycle) == (0, 130)
    state.after(None, now=100)  # a maintenance window: neither
    assert state.cycles == 8


# -- webhooks: a request as the forge sends it --------------------------------------------------
def signed(body: bytes, secret: str = "s3cret") -> dict:
    return {"X-GitHub-Event": "push", "X-Hub-Signature-256":
            "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def test_a_webhook_delivery_is_checked_then_matched(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    options, logged = {"github_secret_file": str(secret)}, []
    sources = [source("https://github.com/org/estate", "main")]

    def receive(body: bytes, headers, receiver="github", agent_options=options):
        return webhooks.receive(receiver, agent_options, headers, body, sources,
                                lambda message, level: logged.append(level))

    push = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "org/estate"}})
    hit = receive(push.encode(), signed(push.encode()))
    assert (hit.code, hit.result, hit.sources) == (202, "triggered", tuple(sources))
    assert receive(push.encode(), signed(push.encode(), "wrong")).code == 401
    assert receive(b"not json", signed(b"not json")).code == 400
    assert receive(b"{}", {}, receiver="gitlab").code == 404  # no gitlab secret configured
    missing = {"github_secret_file": str(tmp_path / "gone")}
    assert receive(push.encode(), signed(push.encode()), agent_options=missing).code == 503
    assert logged == ["warning", "error"]


@pytest.mark.parametrize("payload, result", [
    ([], "ignored"), ("text", "ignored"), (7, "ignored"), ({"ref": 7}, "ignored"),
    ({"ref": ["refs/heads/main"], "repository": {"full_name": "org/estate"}}, "ignored"),
    # A repository name of the wrong type is no name: the ref alone decides (a false
    # match costs one git ls-remote).
    ({"ref": "refs/heads/main", "repository": "org/estate"}, "triggered"),
    ({"ref": "refs/heads/main", "repository": {"full_name": 7, "default_branch": ["x"]}},
     "triggered"),
])
def test_a_signed_payload_of_the_wrong_shape_gets_an_answer(tmp_path, payload, result):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    body = json.dumps(payload).encode()
    delivery = webhooks.receive("github", {"github_secret_file": str(secret)}, signed(body),
                                body, [source("https://github.com/org/estate", "main")],
                                lambda *a: None)
    assert delivery.result == result


# -- what the HTTP view serves, from a real store and real agents -------------------------------
def converged(state_dir, env: str, revision: str, hosts) -> None:
    with closing(Store(state_dir / "runs.db")) as store:
        run = RunRecord(env, Mode.PULL, "schedule", "main", revision)
        store.start_run(run)
        failed = any(h.outcome in ("failed", "unreachable") for h in hosts)
        store.finish_run(run, Verdict(RunStatus.FAILED if failed else RunStatus.CHANGED,
                                      "converged", list(hosts),
                                      transition=Transition.applied(revision, run.id, 1.0,
                                                                    not failed, True)))


def test_gauges_come_from_the_store_at_scrape_time(tmp_path):
    converged(tmp_path, "prod", "c" * 40, [HostResult("web-1", failed=1),
                                           HostResult("web-2", unreachable=1),
                                           HostResult("web-3", changed=2)])
    suspend(tmp_path, "prod", "migration")
    prod, dev = scheduled("prod"), scheduled("dev")
    prod.failures, prod.backoff, dev.last_success = 2, 10.0, 90.0
    samples = {(name, tuple(sorted(labels.items()))): value
               for name, labels, value in gauges(tmp_path, [prod, dev], wall=100.0)}
    assert samples[("gitops_ansible_applied_revision_info",
                    (("env", "prod"), ("revision", "c" * 40)))] == 1
    assert samples[("gitops_ansible_hosts_failed", (("env", "prod"),))] == 2
    assert samples[("gitops_ansible_suspended", (("env", "prod"),))] == 1
    assert samples[("gitops_ansible_consecutive_failures", (("env", "prod"),))] == 2
    assert samples[("gitops_ansible_backoff_seconds", (("env", "prod"),))] == 10
    assert samples[("gitops_ansible_seconds_since_last_success", (("env", "dev"),))] == 10
    assert ("gitops_ansible_seconds_since_last_success", (("env", "prod"),)) not in samples
    assert samples[("gitops_ansible_hosts_failed", (("env", "dev"),))] == 0  # never ran


class Served:
    """A real Agent (not started: no cycle runs) with its HTTP view on a free port."""

    def __init__(self, tmp_path, name: str):
        root = tmp_path / name
        root.mkdir()
        (root / "secret").write_text("s3cret\n")
        (root / "agent.toml").write_text(
            f'state_dir = "{root / "state"}"\n[agent]\ngithub_secret_file = "{root / "secret"}"\n'
            '[[sources]]\nrepo = "https://github.com/org/estate"\nref = "main"\nenv = "dev"\n')
        self.agent = Agent(str(root / "agent.toml"), environ={}, out=io.StringIO(),
                           err=io.StringIO())
        self.server = serve(self.agent, "127.0.0.1:0")
        self.port = self.server.server_address[1]

    def request(self, method: str, path: str, body: bytes = b"", headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.putrequest(method, path)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        answer = response.status, response.read().decode()
        connection.close()
        return answer

    def metric(self, name: str, **labels) -> float:
        _, text = self.request("GET", "/metrics")
        return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == name and s.labels == labels), 0)

    def close(self) -> None:
        self.server.stop()
        self.agent.notifier.close()


def test_a_stopped_view_ends_its_thread_at_once_and_frees_its_port(tmp_path):
    """The idle server sleeps a minute between looks for a stop (2 wake-ups a second cost
    more CPU than the idle agent's polls); a stop must not wait for that."""
    before = set(threading.enumerate())
    served = Served(tmp_path, "one")
    thread = next(t for t in set(threading.enumerate()) - before if t.name == "http")
    assert served.request("GET", "/healthz")[0] == 200
    served.agent.out.seek(0)
    served.agent.out.truncate()
    done = threading.Thread(target=served.close)
    done.start()
    done.join(server.WAKE_INTERVAL / 4)
    thread.join(1)
    assert not done.is_alive() and not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5)
    assert served.agent.out.getvalue() == ""  # the wake-up connection is not a request


def test_two_agents_in_one_process_serve_their_own_view(tmp_path):
    one, two = Served(tmp_path, "one"), Served(tmp_path, "two")
    try:
        body = b'{"ref": "refs/heads/main", "repository": {"full_name": "org/estate"}}'
        assert one.request("POST", "/hooks/github", body, signed(body, "wrong"))[0] == 401
        code, answer = one.request("POST", "/hooks/github", body, signed(body))
        assert (code, json.loads(answer)) == (202, {"triggered": ["dev"]})
        assert one.metric("gitops_ansible_webhooks_total", receiver="github",
                          result="unauthorized") == 1
        assert two.metric("gitops_ansible_webhooks_total", receiver="github",
                          result="unauthorized") == 0  # a registry each, no global state
        _, text = two.request("GET", "/metrics")
        for name in ("gitops_ansible_cycles_total", "gitops_ansible_alerts_total",
                     "gitops_ansible_run_duration_seconds", "gitops_ansible_hosts_failed"):
            assert f"# TYPE {name} " in text
        assert "_created" not in text
        view = json.loads(one.request("GET", "/api/v1/status")[1])["sources"][0]
        assert (view["name"], view["pending"], view["applied_revision"]) == \
            ("dev", "webhook:github", None)
        assert one.request("GET", "/readyz") == (503, "waiting for the first cycle of: dev\n")
        assert one.request("POST", "/api/v1/sync/nosuch")[0] == 404
        assert one.request("GET", "/api/v1/runs/nosuch")[0] == 404
        assert one.request("POST", "/api/v1/sync/dev", headers={"Content-Length": "-1"})[0] == 400
    finally:
        one.close()
        two.close()
