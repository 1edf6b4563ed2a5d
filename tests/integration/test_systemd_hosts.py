"""The host roles on hosts that run systemd (the lab's hosts boot it): services started and
enabled, a power cycle that brings them back, a unit file changed in Git that systemd reloads
and restarts, and the SSH server restarted or reloaded by a role while the run goes on.

Each test converges the lab's hosts from a commit of the project's own content (see
test_baremetal.py), through `gitops-ansible run`, and looks at the hosts as their admin
would: systemctl and journalctl.
"""
from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import events
from tests.integration.test_baremetal import VAULT, lab_estate, run

pytestmark = [pytest.mark.baremetal, pytest.mark.e2e]
GROUP_FILES = ("baremetal.yml", "web/main.yml")  # the lists of web replace those of baremetal


@pytest.fixture
def estate(git_servers, host_lab, tmp_path, request):
    return lab_estate(git_servers, host_lab, tmp_path, request.node.name)


def systemctl(lab, host: str, *args: str) -> str:
    return lab.exec(host, ["systemctl", *args]).stdout.strip()


def show(lab, host: str, unit: str, prop: str) -> str:
    return systemctl(lab, host, "show", f"--property={prop}", "--value", unit)


def journal(lab, host: str, unit: str) -> str:
    """The messages of UNIT (its processes' and systemd's about it) in the host's journal."""
    return lab.exec(host, ["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout


def edit_group_vars(estate, files, change) -> None:
    """Apply CHANGE to the data of each group_vars file of FILES in the estate's lab inventory."""
    for name in files:
        path = estate.path / "inventories/lab/group_vars" / name
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def changed_tasks(done) -> set:
    return {(e["host"], e["task"]) for e in events(done)
            if e["event"] == "task_result" and e["status"] == "changed"}


def check_hosts(cli, estate) -> dict:
    done = cli("check-hosts", "--env", "lab", "--path", estate.path, *VAULT, "--json")
    return {c["host"]: c["status"] for c in json.loads(done.stdout)}


def test_services_are_started_enabled_logged_and_back_after_a_power_cycle(cli, estate, host_lab):
    run(cli, estate, code=2)
    for name in host_lab.hosts:
        assert systemctl(host_lab, name, "is-active", "cron") == "active"
        assert systemctl(host_lab, name, "is-enabled", "cron") == "enabled"
        assert "Started cron.service" in journal(host_lab, name, "cron")
        assert systemctl(host_lab, name, "--failed", "--no-legend", "--plain") == ""

    # A power cycle: systemd starts what the role enabled, and the host stays converged.
    host_lab.stop_host("db-1")
    host_lab.start_host("db-1")
    assert systemctl(host_lab, "db-1", "is-active", "cron") == "active"
    assert "nothing changed" in run(cli, estate, "--force", code=0).stdout

    # db keeps cron stopped and off at boot from the next commit on.
    edit_group_vars(estate, ["db.yml"], lambda data: data.update(
        host_services=[{"name": "cron", "state": "stopped", "enabled": False}]))
    estate.commit("db: no cron")
    done = run(cli, estate, "--json", code=2)
    assert changed_tasks(done) == {("db-1", "Manage services")}
    assert systemctl(host_lab, "db-1", "is-active", "cron") == "inactive"
    assert systemctl(host_lab, "db-1", "is-enabled", "cron") == "disabled"
    assert "Stopped cron.service" in journal(host_lab, "db-1", "cron")
    host_lab.stop_host("db-1")
    host_lab.start_host("db-1")
    assert systemctl(host_lab, "db-1", "is-active", "cron") == "inactive"
    for name in ("web-1", "web-2"):
        assert systemctl(host_lab, name, "is-active", "cron") == "active"


GREETER = """\
{{ ansible_managed | comment }}
[Unit]
Description=Greeter of the lab

[Service]
ExecStart=/bin/sh -c 'echo "greeting: {{ greeter_message }}"; exec sleep infinity'

[Install]
WantedBy=multi-user.target
"""


def test_a_unit_file_changed_in_git_is_reloaded_and_its_service_restarted(cli, estate,
                                                                          host_lab):
    estate.write("roles/host_files/templates/greeter.service.j2", GREETER)

    edit_group_vars(estate, GROUP_FILES, lambda data: data["host_files_templates"].append(
        {"src": "greeter.service.j2", "dest": "/etc/systemd/system/greeter.service",
         "restart": "greeter"}))

    def add_greeter(data):
        data["host_services"].append({"name": "greeter"})
        data["greeter_message"] = "hello"
    edit_group_vars(estate, ["baremetal.yml"], add_greeter)
    estate.commit("a greeter service from a unit file")
    run(cli, estate, code=2)
    before = {}
    for name in host_lab.hosts:
        assert systemctl(host_lab, name, "is-active", "greeter") == "active"
        assert systemctl(host_lab, name, "is-enabled", "greeter") == "enabled"
        assert "greeting: hello" in journal(host_lab, name, "greeter")
        before[name] = show(host_lab, name, "greeter", "MainPID")

    edit_group_vars(estate, ["baremetal.yml"], lambda data: data.update(greeter_message="v2"))
    estate.commit("the greeter says v2")
    done = run(cli, estate, "--json", code=2)
    for name in host_lab.hosts:
        assert show(host_lab, name, "greeter", "NeedDaemonReload") == "no"
        assert show(host_lab, name, "greeter", "MainPID") not in ("0", before[name])
        assert "greeting: v2" in journal(host_lab, name, "greeter").split("greeting: hello")[-1]
    tasks = {task for _, task in changed_tasks(done)}
    assert {"Render templates", "Reload the unit files of systemd",
            "Restart or reload the services whose files changed"} <= tasks

    # Nothing changed in Git: nothing is reloaded or restarted.
    after = {name: show(host_lab, name, "greeter", "MainPID") for name in host_lab.hosts}
    assert "nothing changed" in run(cli, estate, "--force", code=0).stdout
    assert {name: show(host_lab, name, "greeter", "MainPID") for name in host_lab.hosts} == after


SSHD_OPTIONS = """\
{{ ansible_managed | comment }}
ClientAliveInterval {{ sshd_client_alive_interval }}
"""


def test_roles_restart_and_reload_sshd_and_ssh_keeps_answering(cli, estate, host_lab):
    """host_files restarts ssh on every host when its drop-in changes; ssh_hardening reloads
    it on the hardened host (web-1)."""
    estate.write("roles/host_files/templates/sshd-lab.conf.j2", SSHD_OPTIONS)
    edit_group_vars(estate, GROUP_FILES, lambda data: data["host_files_templates"].append(
        {"src": "sshd-lab.conf.j2", "dest": "/etc/ssh/sshd_config.d/60-lab.conf",
         "restart": ["ssh"]}))
    edit_group_vars(estate, ["baremetal.yml"],
                    lambda data: data.update(sshd_client_alive_interval=30))
    hosts_file = estate.path / "inventories/lab/hosts.yml"
    hosts = yaml.safe_load(hosts_file.read_text())
    hosts["all"]["children"]["hardened"] = {"hosts": {"web-1": None}}
    hosts_file.write_text(yaml.safe_dump(hosts, sort_keys=False))
    estate.commit("sshd: a drop-in bound to ssh; web-1 hardened")
    started = {name: show(host_lab, name, "ssh", "MainPID") for name in host_lab.hosts}

    done = run(cli, estate, "--json", code=2)
    outcomes = {e["host"]: e["outcome"] for e in events(done) if e["event"] == "host_result"}
    assert outcomes == {name: "changed" for name in host_lab.hosts}
    restarted = {}
    for name in host_lab.hosts:
        assert systemctl(host_lab, name, "is-active", "ssh") == "active"
        restarted[name] = show(host_lab, name, "ssh", "MainPID")
        assert restarted[name] not in ("0", started[name])
        effective = host_lab.exec(name, ["sshd", "-T"]).stdout.splitlines()
        assert "clientaliveinterval 30" in effective
    assert ("maxauthtries 3" in host_lab.exec("web-1", ["sshd", "-T"]).stdout.splitlines())
    assert "Received SIGHUP" in journal(host_lab, "web-1", "ssh")
    assert check_hosts(cli, estate) == {name: "ok" for name in host_lab.hosts}

    # The reload and the restarts do not come back while Git does not change.
    assert "nothing changed" in run(cli, estate, "--force", code=0).stdout
    assert {name: show(host_lab, name, "ssh", "MainPID") for name in host_lab.hosts} == restarted
