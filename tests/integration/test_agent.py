"""The agent as a user runs it: a real process, real HTTP requests to it, real Git servers
and targets (local targets, and the SSH hosts of the lab where a host is changed by hand).
A local recording HTTP server stands in for Slack, a generic webhook and the GitHub
commit status API.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gitops_ansible.execute import stop_orphans
from lab.recorder import Recorder
from lab.system import free_port
from tests.conftest import local_estate, require
from tests.integration.test_baremetal import VAULT, host_file, lab_estate

pytestmark = [pytest.mark.agent, pytest.mark.git]
SECRET = "hook-secret-" + os.urandom(4).hex()


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, agent: dict, sources: list[dict], notify=(), top=None) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in (top or {}).items()]
    lines += ["[agent]"] + [f"{k} = {toml_value(v)}" for k, v in agent.items()]
    for source in sources:
        status = source.pop("commit_status", None)
        lines += ["[[sources]]"] + [f"{k} = {toml_value(v)}" for k, v in source.items()]
        if status:
            lines += ["[sources.commit_status]"] + [f"{k} = {toml_value(v)}"
                                                    for k, v in status.items()]
    for target in notify:
        lines += ["[[notify]]"] + [f"{k} = {toml_value(v)}" for k, v in target.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProcess:
    """`gitops-ansible agent` in the background, its log in a file, HTTP helpers."""

    def __init__(self, tmp_path: Path, state_dir: Path, sources: list[dict], agent=None,
                 notify=(), top=None):
        self.port = free_port()
        self.state_dir, self.log_path = state_dir, tmp_path / f"agent-{self.port}.log"
        secret = tmp_path / "hook-secret"
        secret.write_text(SECRET + "\n")
        agent = {"listen": f"127.0.0.1:{self.port}", "github_secret_file": str(secret),
                 "gitlab_token_file": str(secret), "grace": 5, **(agent or {})}
        self.agent, self.sources, self.notify, self.top = agent, sources, notify, top
        self.config = write_config(tmp_path / "agent.toml", agent, sources, notify, top)
        self.proc = None

    def reload(self, text: str | None = None, **source_options) -> None:
        """Rewrite the config (``text`` as is, or the sources with new options); SIGHUP."""
        if text is not None:
            self.config.write_text(text)
        else:
            sources = [{**s, **source_options} for s in self.sources]
            write_config(self.config, self.agent, sources, self.notify, self.top)
        self.proc.send_signal(signal.SIGHUP)

    def start(self) -> "AgentProcess":
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitops_ansible", "agent", "--config", str(self.config),
             "--state-dir", str(self.state_dir)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_for(lambda: self.get("/healthz")[0] == 200, 30, "the agent to listen")
        return self

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> float:
        started = time.monotonic()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return time.monotonic() - started

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                         method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return None, str(exc)

    def get(self, path: str):
        return self.request("GET", path)

    def status(self) -> dict:
        return json.loads(self.get("/api/v1/status")[1])["sources"][0]

    def metrics(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        values = {}
        for family in text_string_to_metric_families(self.get("/metrics")[1]):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return values

    def metric(self, name: str, **labels) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0)

    def github_push(self, ref="refs/heads/main", repo="org/estate", secret=SECRET,
                    signature=None):
        body = json.dumps({"ref": ref, "after": "0" * 40,
                           "repository": {"full_name": repo, "default_branch": "main"}}).encode()
        headers = {"X-GitHub-Event": "push", "Content-Type": "application/json"}
        if signature is not False:
            headers["X-Hub-Signature-256"] = signature or "sha256=" + hmac.new(
                secret.encode(), body, hashlib.sha256).hexdigest()
        return self.request("POST", "/hooks/github", body, headers)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"the agent exited ({self.proc.returncode}) while waiting "
                                     f"for {what}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n"
                             f"{self.log()[-3000:]}")


@pytest.fixture
def agents():
    started = []

    def start(*args, **kwargs) -> AgentProcess:
        agent = AgentProcess(*args, **kwargs).start()
        started.append(agent)
        return agent
    yield start
    for agent in started:  # as an operator would: SIGTERM, then SIGKILL and clean up
        try:
            agent.stop(signal.SIGTERM, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        leftovers = sqlite3.connect(agent.state_dir / "runs.db").execute(
            "SELECT id FROM runs WHERE status = 'running'").fetchall()
        for (run_id,) in leftovers:
            stop_orphans(run_id)


@pytest.fixture
def estate(git_servers, tmp_path, request):
    return local_estate(git_servers, tmp_path, request.node.name)


def source(estate, git_servers, **options) -> dict:
    return {"repo": git_servers.url(estate.name, "git"), "ref": "main", "env": "dev",
            "interval": "1h", "jitter": 0, "drift_interval": 0, **options}


def runs(cli, *extra) -> list[dict]:
    return json.loads(cli("history", "--json", "-n", "1000", *extra, check_code=0).stdout)


def greeting(estate, host="beta") -> str:
    path = estate.out / f"{host}.txt"
    return path.read_text() if path.exists() else ""


def lab_source(estate, git_servers, **options) -> dict:
    return {"repo": git_servers.url(estate.name, "git"), "ref": "main", "env": "lab",
            "vault_password_file": VAULT[1], "interval": "1h", "jitter": 0,
            "drift_interval": 0, **options}


@pytest.fixture
def lab(git_servers, host_lab, tmp_path, request):
    tree = lab_estate(git_servers, host_lab, tmp_path, request.node.name)
    tree.name = request.node.name
    return tree


@pytest.mark.baremetal
def test_signed_webhook_converges_hosts_and_posts_commit_status(agents, lab, git_servers,
                                                                host_lab, cli, tmp_path):
    token = tmp_path / "github-token"
    token.write_text("ghp-" + os.urandom(6).hex() + "\n")
    status = {"kind": "github", "repository": "org/estate", "token_file": str(token)}
    with Recorder() as api:
        status["api_url"] = api.url("/api")
        agent = agents(tmp_path, cli.state_dir,
                       [lab_source(lab, git_servers, commit_status=status)])
        agent.wait_for(lambda: agent.status()["applied_revision"] == lab.revision, 300,
                       "the first converge")
        template = lab.path / "roles/host_files/templates/app.conf.j2"
        template.write_text(template.read_text() + "# brought by a webhook\n")
        new = lab.commit("app.conf: a line brought by a webhook")
        assert agent.github_push(repo="org/another-repo")[0] == 200  # not ours: ignored
        pushed = time.monotonic()
        code, body = agent.github_push(repo=f"org/{lab.name}")
        assert code == 202 and json.loads(body)["triggered"] == ["lab"]
        agent.wait_for(lambda: agent.status()["applied_revision"] == new, 300,
                       "the converge of the pushed commit")
        took = time.monotonic() - pushed
        assert took < 300  # the interval is an hour: only the webhook can have done it
        for host in ("web-1", "web-2"):
            conf = host_file(host_lab, host, "/etc/demo-app/app.conf").read_text()
            assert "# brought by a webhook" in conf
        posted = api.wait_for(lambda reqs: len([r for r in reqs if new in r["path"]]) >= 2, 30)
        mine = [r for r in posted if r["path"] == f"/api/repos/org/estate/statuses/{new}"]
        assert [r["json"]["state"] for r in mine] == ["pending", "success"]
        assert all(r["json"]["context"] == "gitops-ansible/lab" for r in mine)
        assert mine[0]["headers"]["authorization"] == f"Bearer {token.read_text().strip()}"
        assert not any("http" in r["json"]["description"] for r in mine)
    run_id = agent.status()["last"]["run_id"]
    lines = [line for line in agent.log().splitlines() if f"run_id={run_id}" in line]
    assert any("TASK host_files : Render templates" in line for line in lines)
    assert all(f"env=lab revision={new[:12]}" in line for line in lines)
    events = cli("events", run_id, check_code=0).stdout
    assert "web-1" in events and "changed" in events and "Render templates" in events


@pytest.mark.baremetal
def test_drift_reported_then_healed_after_reload(agents, lab, git_servers, host_lab, cli,
                                                  tmp_path):
    agent = agents(tmp_path, cli.state_dir,
                   [lab_source(lab, git_servers, drift_interval=1, drift="report")])
    agent.wait_for(lambda: agent.status()["applied_revision"] == lab.revision, 300,
                   "the first converge")
    motd = host_file(host_lab, "web-1", "/etc/motd")
    converged = motd.read_text()
    motd.write_text("edited by hand on web-1\n")
    agent.wait_for(lambda: agent.status()["drifted_hosts"] == ["web-1"], 300, "drift on web-1")
    assert "drift on web-1" in cli("status", check_code=0).stdout
    assert agent.metric("gitops_ansible_hosts_drifted", env="lab") == 1
    drift_run = agent.status()["drift_run"]
    assert any(t["host"] == "web-1" and t["status"] == "changed"
               for t in json.loads(cli("history", drift_run, "--json", check_code=0).stdout)
               ["tasks"])
    assert motd.read_text() == "edited by hand on web-1\n"  # report only: nothing healed

    agent.reload(text=agent.config.read_text().replace('drift = "report"', 'drift = "sometimes"'))
    agent.wait_for(lambda: "config reload refused" in agent.log(), 180, "the refusal")
    assert "drift" in agent.log().split("config reload refused")[1].splitlines()[0]
    agent.reload(drift="heal")
    agent.wait_for(lambda: "config reloaded" in agent.log(), 180, "the reload")
    def healed():
        return [r for r in runs(cli) if r["trigger"] == "heal" and r["status"] != "running"]

    heal = agent.wait_for(healed, 300, "the heal run")
    assert heal[-1]["status"] == "changed" and motd.read_text() == converged


def test_bad_signature_gets_401_and_starts_nothing(agents, estate, git_servers, cli, tmp_path):
    agent = agents(tmp_path, cli.state_dir, [source(estate, git_servers)])
    assert agent.get("/readyz")[0] == 503  # the first converge is still running
    agent.wait_for(lambda: agent.get("/readyz")[0] == 200, 120, "the first cycle")
    before = len(runs(cli))
    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: signed\n")
    estate.commit("a change that only a valid webhook may bring")
    assert agent.github_push(signature="sha256=" + "0" * 64)[0] == 401
    assert agent.github_push(secret="not-the-secret")[0] == 401
    assert agent.github_push(signature=False)[0] == 401
    gitlab = agent.request("POST", "/hooks/gitlab", b'{"ref": "refs/heads/main"}',
                           {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"})
    assert gitlab[0] == 401
    # A valid signature for a ref nobody tracks: acknowledged, ignored.
    code, body = agent.github_push(ref="refs/heads/feature")
    assert code == 200 and "ignored" in body
    time.sleep(3)
    assert len(runs(cli)) == before and greeting(estate) == "hello world\n"
    assert agent.metric("gitops_ansible_webhooks_total", receiver="github",
                        result="unauthorized") == 3
    assert agent.metric("gitops_ansible_webhooks_total", receiver="gitlab",
                        result="unauthorized") == 1
    assert agent.metric("gitops_ansible_webhooks_total", receiver="github",
                        result="ignored") == 1
    assert "bad or missing signature" in agent.log()


def test_git_outage_backoff_one_failure_alert_then_recovery(agents, estate, git_servers, cli,
                                                            tmp_path):
    with Recorder(status=200) as hooks:
        agent = agents(tmp_path, cli.state_dir,
                       [source(estate, git_servers, interval=0.5, retry_base=0.5,
                               retry_max=2, git_timeout=10)],
                       agent={"alert_interval": 0},
                       notify=[{"kind": "webhook", "url": hooks.url("/generic")},
                               {"kind": "slack", "url": hooks.url("/slack"),
                                "events": ["failure", "recovery"]}])
        agent.wait_for(lambda: agent.metric("gitops_ansible_cycles_total", env="dev",
                                            result="nothing") >= 1, 120, "a quiet cycle")
        git_servers.stop_daemon()
        try:
            agent.wait_for(lambda: agent.metric("gitops_ansible_source_fetch_failures_total",
                                                env="dev") >= 4, 60, "fetch failures")
            assert agent.metric("gitops_ansible_consecutive_failures", env="dev") >= 4
            assert agent.metric("gitops_ansible_backoff_seconds", env="dev") == 2
        finally:
            git_servers.start_daemon()
        log = agent.log()
        assert "backing off 0.5s after 1 failed cycle" in log
        assert "backing off 2s after 3 failed cycle" in log
        agent.wait_for(lambda: hooks.on("/generic") and
                       hooks.on("/generic")[-1]["json"]["event"] == "recovery", 60, "recovery")
        events = [r["json"]["event"] for r in hooks.on("/generic")]
        assert events == ["failure", "recovery"], events
        failure = hooks.on("/generic")[0]["json"]
        assert failure["env"] == "dev" and "fetch failed" in failure["message"]
        slack = [r["json"]["text"] for r in hooks.on("/slack")]
        assert len(slack) == 2 and "failure" in slack[0] and "recovery" in slack[1]
        assert agent.metric("gitops_ansible_consecutive_failures", env="dev") == 0


def test_a_locked_store_is_an_error_alerted_and_retried_with_backoff(agents, estate,
                                                                      git_servers, cli,
                                                                      tmp_path):
    from tests.integration.test_faults import held

    with Recorder(status=200) as hooks:
        agent = agents(tmp_path, cli.state_dir,
                       [source(estate, git_servers, interval=0.5, retry_base=0.5,
                               retry_max=2)], agent={"alert_interval": 0},
                       notify=[{"kind": "webhook", "url": hooks.url("/generic")}])
        agent.wait_for(lambda: agent.metric("gitops_ansible_cycles_total", env="dev",
                                            result="nothing") >= 1, 120, "a quiet cycle")
        with held(cli.state_dir / "runs.db") as holder:
            agent.wait_for(lambda: hooks.on("/generic"), 90, "a failure alert")
            assert agent.status()["last"]["exit_code"] == 1
        failure = hooks.on("/generic")[0]["json"]
        assert failure["event"] == "failure" and "locked by another process" in \
            failure["message"] and f"held by pid {holder.pid}" in failure["message"]
        agent.wait_for(lambda: hooks.on("/generic")[-1]["json"]["event"] == "recovery", 90,
                       "recovery once the store is free")
        log = agent.log()
        assert "backing off 0.5s after 1 failed cycle" in log and "Traceback" not in log


def test_suspend_then_resume_and_sync(agents, estate, git_servers, cli, tmp_path):
    agent = agents(tmp_path, cli.state_dir, [source(estate, git_servers)])
    agent.wait_for(lambda: greeting(estate) == "hello world\n", 120, "the first converge")
    cli("suspend", "dev", "--reason", "database migration, ask Ana", check_code=0)
    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: resumed\n")
    new = estate.commit("waits for the resume")
    url = f"http://127.0.0.1:{agent.port}"
    assert "cycle requested: dev" in cli("sync", "dev", "--agent", url, check_code=0).stdout
    agent.wait_for(lambda: agent.metric("gitops_ansible_cycles_total", env="dev",
                                        result="suspended") >= 1, 60, "a suspended cycle")
    assert greeting(estate) == "hello world\n"
    assert agent.status()["suspended"] == "database migration, ask Ana"
    assert agent.metric("gitops_ansible_suspended", env="dev") == 1
    assert "database migration, ask Ana" in cli("status", check_code=0).stdout
    cli("resume", "dev", check_code=0)
    cli("sync", "nosuchenv", "--agent", url, check_code=5)
    cli("sync", "dev", "--agent", url, check_code=0)  # the interval is an hour
    agent.wait_for(lambda: greeting(estate) == "hello resumed\n", 120, "the converge after resume")
    agent.wait_for(lambda: agent.status()["applied_revision"] == new, 30, "the record")
    # the converge ran in a child process; its result reaches the scheduler just after
    agent.wait_for(lambda: agent.status()["last"].get("revision") == new, 30, "the result")
    run = json.loads(agent.get(f"/api/v1/runs/{agent.status()['last']['run_id']}")[1])
    # the commit touched beta's variables only: beta ran, alpha was left as it was
    assert run["trigger"] == "sync" and {h["host"] for h in run["hosts"]} == {"beta"}
    assert run["scope"]["hosts"] == {"beta": "inventories/dev/host_vars/beta.yml"}
    assert run["scope"]["unchanged"] == ["alpha"]


def test_maintenance_window_blocks_changes_but_not_drift_checks(agents, estate, git_servers, cli,
                                                                tmp_path):
    url = git_servers.url(estate.name, "git")
    cli("run", "--repo", url, "--env", "dev", check_code=2)
    (estate.out / "alpha.txt").write_text("edited by hand\n")
    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: later\n")
    estate.commit("must wait for the window to close")
    window = {"deny": "* * * * *", "duration": "1h", "timezone": "Europe/Berlin"}
    agent = agents(tmp_path, cli.state_dir,
                   [source(estate, git_servers, interval=0.5, drift_interval=1,
                           windows=[window])])
    agent.wait_for(lambda: agent.metric("gitops_ansible_drift_checks_total", env="dev",
                                        result="drifted") >= 1, 120, "a drift check")
    assert agent.status()["maintenance"].startswith("inside deny window")
    assert greeting(estate) == "hello world\n"
    assert (estate.out / "alpha.txt").read_text() == "edited by hand\n"
    modes = {r["mode"] for r in runs(cli)}
    assert "drift" in modes
    assert len([r for r in runs(cli) if r["mode"] == "pull"]) == 1  # the CLI's run only
    assert agent.status()["drifted_hosts"] == ["alpha"]
    assert "maintenance window: no changing run" in agent.log()


def test_sigterm_cancels_after_grace_and_next_start_finishes(agents, estate, git_servers, cli,
                                                             tmp_path):
    estate.write("inventories/dev/group_vars/all.yml", "---\ngreet_sleep: 8\n")
    revision = estate.commit("a converge that takes a while")
    agent = agents(tmp_path, cli.state_dir, [source(estate, git_servers)], agent={"grace": 2})
    journal = estate.out / "journal"
    agent.wait_for(lambda: journal.exists() and "start" in journal.read_text(), 120,
                   "the converge to start")
    took = agent.stop(signal.SIGTERM, timeout=40)
    assert agent.proc.returncode == 0
    assert took < 2 + 20, f"the agent took {took:.1f}s to stop"
    last = runs(cli)[0]
    assert last["status"] == "cancelled" and last["revision"] == revision
    assert not greeting(estate)
    assert "letting the running cycle finish" in agent.log()
    again = agents(tmp_path, cli.state_dir, [source(estate, git_servers)])
    again.wait_for(lambda: greeting(estate) == "hello world\n", 120, "the next start's converge")
    again.wait_for(lambda: again.status()["applied_revision"] == revision, 30, "the record")


def test_soak_300_cycles_memory_stays_flat(agents, estate, git_servers, cli, tmp_path):
    agent = agents(tmp_path, cli.state_dir,
                   [source(estate, git_servers, interval=0.01, retry_base=0.01)])

    def cycles() -> float:
        return sum(v for (name, _), v in agent.metrics().items()
                   if name == "gitops_ansible_cycles_total")

    def rss() -> int:
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:")))

    agent.wait_for(lambda: cycles() >= 20, 180, "20 cycles")
    after_20 = rss()
    agent.wait_for(lambda: cycles() >= 300, 600, "300 cycles")
    after_300 = rss()
    assert after_300 <= after_20 * 1.10, f"RSS {after_20} kB after 20, {after_300} kB after 300"
    assert agent.metric("gitops_ansible_cycles_total", env="dev", result="nothing") >= 280


def test_install_service_unit(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('[[sources]]\nrepo = "file:///srv/estate.git"\nenv = "prod"\n')
    done = subprocess.run([sys.executable, "-m", "gitops_ansible", "install-service", "--systemd",
                           "--config", str(config), "--user", "gitops",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "gitops-ansible-agent.service").read_text()
    assert "Restart=on-failure" in unit and "User=gitops" in unit
    assert f"agent --config {config}" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    require(bool(subprocess.run(["which", "systemd-analyze"], capture_output=True).stdout),
            "systemd-analyze is not installed")
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             str(tmp_path / "gitops-ansible-agent.service")],
                            capture_output=True, text=True)
    problems = [line for line in verify.stderr.splitlines()
                if "gitops-ansible-agent.service" in line and "Unknown user" not in line
                and "Failed to resolve user" not in line and "not executable" not in line]
    assert not problems, verify.stderr
