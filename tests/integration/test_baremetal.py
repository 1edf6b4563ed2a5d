"""End to end on real bare hosts: sshd in network namespaces, each with its own root
filesystem (lab/), converged from a commit in a real Git repository.

The GitOps content is the project's own (playbooks/, roles/, ansible.cfg and the demo's
group_vars with its vault secret), with an inventory `lab` pointing at the lab hosts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lab.gitserver import WorkTree
from tests.conftest import ROOT, events

pytestmark = [pytest.mark.baremetal, pytest.mark.e2e]
VAULT = ["--vault-password-file", "inventories/lab/.vault-pass"]
WEB, DB = ("web-1", "web-2"), ("db-1",)
HARDENED = ("web-1",)  # a subset of the platform's hosts gets one more role
SSH_DROP_IN = "/etc/ssh/sshd_config.d/50-gitops-hardening.conf"


def lab_inventory(tree_path: Path, lab) -> None:
    """inventories/lab: the demo's variables, the lab's hosts and connection settings."""
    demo, inv = ROOT / "inventories/local", tree_path / "inventories/lab"
    shutil.copytree(demo / "group_vars", inv / "group_vars")
    shutil.copy(demo / ".vault-pass", inv / ".vault-pass")
    baremetal = yaml.safe_load((demo / "group_vars/baremetal.yml").read_text())
    baremetal.update(lab.inventory_vars())
    (inv / "group_vars/baremetal.yml").write_text(yaml.safe_dump(baremetal, sort_keys=False))
    (inv / "group_vars/all.yml").write_text("---\ngitops_environment: lab\n")
    address = {name: {"ansible_host": host.address} for name, host in lab.hosts.items()}
    hosts = {"all": {"children": {"baremetal": {"children": {
        "web": {"hosts": {n: address[n] for n in WEB}},
        "db": {"hosts": {n: address[n] for n in DB}}}},
        "hardened": {"hosts": {n: {} for n in HARDENED}}}}}
    (inv / "hosts.yml").write_text("---\n" + yaml.safe_dump(hosts, sort_keys=False))


def lab_estate(git_servers, host_lab, tmp_path: Path, name: str) -> WorkTree:
    """Pristine lab hosts and a served repository with the project's content."""
    for host in host_lab.hosts:
        host_lab.reset_host(host)
    bare = git_servers.create(name)
    tree = WorkTree(bare, tmp_path / "worktree")
    for part in ("playbooks", "roles"):
        tree.copy_tree(ROOT / part, part)
    shutil.copy(ROOT / "ansible.cfg", tree.path / "ansible.cfg")
    lab_inventory(tree.path, host_lab)
    tree.revision = tree.commit("the estate, with a lab inventory")
    tree.url = git_servers.url(name, "git")
    return tree


@pytest.fixture
def estate(git_servers, host_lab, tmp_path, request):
    return lab_estate(git_servers, host_lab, tmp_path, request.node.name)


def bare_metal_roles_only(roles: dict, host: str) -> bool:
    """A bare host got the platform's roles and no others: the host roles, and on the
    hardened subset ssh_hardening (``roles``: tests.conftest.roles_by_host)."""
    applied = roles[host] - {None}
    extra = {"ssh_hardening"} if host in HARDENED else set()
    return bool(applied) and all(r.startswith("host_") or r in extra for r in applied)


def run(cli, estate, *extra, code=None):
    return cli("run", "--repo", estate.url, "--env", "lab", *VAULT, *extra, check_code=code)


def host_file(lab, host: str, path: str) -> Path:
    return lab.hosts[host].root / path.lstrip("/")


def mtimes(lab, paths) -> dict:
    return {(h, p): host_file(lab, h, p).stat().st_mtime_ns for h in lab.hosts for p in paths
            if host_file(lab, h, p).exists()}


def snapshot(lab) -> dict:
    """What a user would look at on each host after a converge."""
    state = {}
    for name in lab.hosts:
        files = {}
        for path in ("/etc/motd", "/etc/demo-app/app.conf", "/etc/demo-app/db-password",
                     "/etc/sysctl.d/90-gitops-ansible.conf", "/home/deploy/.ssh/authorized_keys",
                     SSH_DROP_IN):
            target = host_file(lab, name, path)
            files[path] = (hashlib.sha256(target.read_bytes()).hexdigest(),
                           oct(target.stat().st_mode)) if target.exists() else None

        def out(*argv):
            return lab.exec(name, list(argv)).stdout.strip()

        state[name] = {
            "files": files,
            "user": out("getent", "passwd", "deploy"),
            "packages": out("dpkg-query", "-W", "-f", "${Package}=${Status}\\n", "cron", "tree"),
            "sysctl": out("sysctl", "-n", "net.ipv4.ip_forward", "net.core.somaxconn"),
            "cron_running": bool(out("pgrep", "-x", "cron")),
        }
    return state


def vault_secret() -> str:
    from ansible.parsing.vault import VaultLib, VaultSecret

    text = (ROOT / "inventories/local/group_vars/web/vault.yml").read_text()
    cipher = text.split("!vault |", 1)[1]
    cipher = "\n".join(line.strip() for line in cipher.strip().splitlines())
    password = (ROOT / "inventories/local/.vault-pass").read_bytes().strip()
    return VaultLib([("default", VaultSecret(password))]).decrypt(cipher.encode()).decode()


def test_commit_to_converged_hosts_then_nothing_then_one_template(cli, estate, host_lab):
    first = run(cli, estate, code=2)
    assert "TASK host_files : Render templates" in first.stdout
    state = snapshot(host_lab)
    for name in host_lab.hosts:
        assert state[name]["user"].startswith("deploy:")
        assert "cron=install ok installed" in state[name]["packages"]
        assert state[name]["sysctl"].split() == ["1", "1024"]
        assert state[name]["cron_running"]
        assert name in host_file(host_lab, name, "/etc/motd").read_text()
    for name in WEB:
        assert "workers = " in host_file(host_lab, name, "/etc/demo-app/app.conf").read_text()
    assert not host_file(host_lab, "db-1", "/etc/demo-app/app.conf").exists()
    # ssh_hardening runs on the hardened subset of the platform only, and its reload of
    # sshd leaves the host reachable (the next runs below connect again)
    assert [h for h in host_lab.hosts if state[h]["files"][SSH_DROP_IN]] == list(HARDENED)
    assert "PasswordAuthentication no" in host_file(host_lab, "web-1", SSH_DROP_IN).read_text()
    assert "Reload the SSH server" in first.stdout

    watched = ["/etc/motd", "/etc/demo-app/app.conf", "/etc/passwd", SSH_DROP_IN,
               "/etc/sysctl.d/90-gitops-ansible.conf", "/home/deploy/.ssh/authorized_keys"]
    before = mtimes(host_lab, watched)
    nothing = run(cli, estate, code=3)
    assert "nothing to do" in nothing.stdout
    assert mtimes(host_lab, watched) == before

    template = estate.path / "roles/host_files/templates/app.conf.j2"
    template.write_text(template.read_text() + "# tuned in revision 2\n")
    second = estate.commit("app.conf: a new line")
    done = run(cli, estate, "--json", code=2)
    after = mtimes(host_lab, watched)
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed == {(h, "/etc/demo-app/app.conf") for h in WEB}
    events = [json.loads(line) for line in done.stdout.splitlines()]
    outcomes = {e["host"]: e["outcome"] for e in events if e["event"] == "host_result"}
    assert outcomes == {"web-1": "changed", "web-2": "changed", "db-1": "ok"}
    changed_tasks = {(e["host"], e["task"]) for e in events
                     if e["event"] == "task_result" and e["status"] == "changed"}
    assert changed_tasks == {(h, "Render templates") for h in WEB}

    status = json.loads(cli("status", "--json", check_code=0).stdout)[0]
    assert status["applied_revision"] == second == status["good_revision"]
    history = json.loads(cli("history", "--env", "lab", "--json", check_code=0).stdout)
    assert [(r["revision"], r["status"]) for r in history] == [
        (second, "changed"), (estate.revision, "changed")]
    assert history[0]["hosts"] == outcomes
    assert all(r["trigger"] == "schedule" and r["finished_at"] > r["started_at"]
               for r in history)
    table = cli("status", check_code=0).stdout
    assert second[:12] in table and "lab" in table


def test_plan_then_push_then_plain_ansible_playbook_give_the_same_hosts(cli, estate, host_lab,
                                                                        tmp_path):
    plan = cli("plan", "--env", "lab", "--path", estate.path, *VAULT, check_code=2)
    assert "would change" in plan.stdout
    assert not host_file(host_lab, "web-1", "/etc/demo-app").exists()
    assert not host_file(host_lab, "web-1", "/home/deploy").exists()

    cli("push", "--env", "lab", "--path", estate.path, *VAULT, check_code=2)
    pushed = snapshot(host_lab)
    history = json.loads(cli("history", "--json").stdout)
    assert [(r["mode"], r["status"]) for r in history] == [("push", "changed"),
                                                           ("plan", "changed")]
    assert history[0]["revision"] == estate.revision and history[1]["check_mode"] == 1

    for name in host_lab.hosts:
        host_lab.reset_host(name)
    ansible_playbook = str(Path(sys.executable).parent / "ansible-playbook")
    plain = subprocess.run([ansible_playbook, "-i", "inventories/lab", "playbooks/site.yml",
                            *VAULT], cwd=estate.path, capture_output=True, text=True,
                           env=cli.env)
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert snapshot(host_lab) == pushed
    again = cli("push", "--env", "lab", "--path", estate.path, *VAULT, check_code=0)
    assert "nothing changed" in again.stdout


def test_unreachable_host_and_host_key_mismatch(cli, estate, host_lab):
    host_lab.stop_host("db-1")
    try:
        started = time.monotonic()
        checks = cli("check-hosts", "--env", "lab", "--path", estate.path, *VAULT, "--json",
                     check_code=4)
        assert time.monotonic() - started < 20
        status = {c["host"]: c["status"] for c in json.loads(checks.stdout)}
        assert status == {"web-1": "ok", "web-2": "ok", "db-1": "unreachable"}

        done = run(cli, estate, code=4)
        assert "pre-flight: db-1" in done.stderr
        assert "1 of 3 hosts failed or unreachable: db-1" in done.stderr
        for name in WEB:
            assert host_file(host_lab, name, "/etc/demo-app/app.conf").exists()
        db = sqlite3.connect(cli.state_dir / "runs.db")
        outcomes = dict(db.execute("SELECT host, outcome FROM host_results"))
        assert outcomes == {"web-1": "changed", "web-2": "changed", "db-1": "unreachable"}
        state = json.loads(cli("status", "--json").stdout)[0]
        assert state["applied_revision"] == estate.revision and state["good_revision"] is None
    finally:
        host_lab.start_host("db-1")

    host_lab.rekey_host("web-2")
    try:
        checks = cli("check-hosts", "--env", "lab", "--path", estate.path, *VAULT, "--json",
                     check_code=4)
        status = {c["host"]: c["status"] for c in json.loads(checks.stdout)}
        assert status == {"web-1": "ok", "web-2": "host-key-mismatch", "db-1": "ok"}
        # the same revision is retried because its last converge had failures: on the
        # host that failed only (the others are clean at it), so web-2 is not looked at
        retry = run(cli, estate, "--json", code=2)
        [result] = [e for e in events(retry) if e["event"] == "cycle_result"]
        assert result["hosts"] == {"db-1": "changed"} and result["scope"]["unchanged"] == list(WEB)
        assert result["scope"]["hosts"]["db-1"].startswith("not clean since run ")
        # a forced run converges every host: the pre-flight finds web-2's new key
        forced = run(cli, estate, "--force", code=4)
        assert "web-2" in forced.stderr and "host-key-mismatch" in forced.stderr
        db = sqlite3.connect(cli.state_dir / "runs.db")
        last = db.execute("SELECT id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
        outcomes = dict(db.execute("SELECT host, outcome FROM host_results WHERE run_id = ?",
                                   (last,)))
        assert outcomes == {"web-1": "ok", "web-2": "unreachable", "db-1": "ok"}
        # without the pre-flight, Ansible itself refuses the changed key: ansible-runner's
        # default (host key checking off) must not beat ansible.cfg and the inventory
        # (the retry is on web-2, the host that failed)
        blind = run(cli, estate, "--preflight", "off", "--json", code=4)
        [result] = [e for e in events(blind) if e["event"] == "cycle_result"]
        assert result["hosts"] == {"web-2": "unreachable"}
    finally:
        host_lab.rekey_host("web-2", update_known_hosts=True)
    # all three now, nothing to change: web-2 converged before its new key, and its power
    # cycle kept its files and started cron again at boot (systemd)
    run(cli, estate, code=0)
    state = json.loads(cli("status", "--json").stdout)[0]
    assert state["good_revision"] == estate.revision


def test_secrets_never_reach_store_logs_or_artifacts(cli, estate, host_lab, tmp_path):
    secret = vault_secret()
    assert len(secret) >= 8
    # A careless template that puts the secret in a file: with --diff, Ansible itself would
    # print it; the orchestrator must mask it everywhere it writes.
    estate.write("roles/host_files/templates/leaky.conf.j2",
                 "password = {{ vault_demo_app_db_password }}\n")
    web_vars = estate.path / "inventories/lab/group_vars/web/main.yml"
    data = yaml.safe_load(web_vars.read_text())
    data["host_files_templates"].append({"src": "leaky.conf.j2", "dest": "/etc/demo-app/leaky.conf"})
    web_vars.write_text(yaml.safe_dump(data, sort_keys=False))
    estate.commit("a template that contains the secret")

    outputs = [run(cli, estate, "--diff", code=2)]
    outputs.append(run(cli, estate, "--json", "--force", code=0))
    host_file(host_lab, "web-1", "/etc/demo-app/leaky.conf").write_text("drifted\n")
    outputs.append(cli("plan", "--repo", estate.url, "--env", "lab", *VAULT, check_code=2))
    outputs.append(cli("history", "--json", check_code=0))

    # the secret really is deployed (so this test can fail) ...
    assert host_file(host_lab, "web-1", "/etc/demo-app/db-password").read_text() == secret
    assert secret in host_file(host_lab, "web-2", "/etc/demo-app/leaky.conf").read_text()
    # ... and appears nowhere the orchestrator writes or prints
    for done in outputs:
        assert secret not in done.stdout + done.stderr
    assert "********" in outputs[0].stdout  # masked in the diff that was shown
    leaked = [str(p) for p in cli.state_dir.rglob("*") if p.is_file()
              and secret.encode() in p.read_bytes()]
    assert leaked == []
    artifacts = list((cli.state_dir / "artifacts").rglob("job_events/*.json"))
    assert artifacts, "artifacts are kept, and were searched"


def crons(lab) -> dict:
    """{host: "PID command line"} of the host's cron daemon."""
    return {name: lab.exec(name, ["pgrep", "-a", "-x", "cron"]).stdout.strip()
            for name in lab.hosts}


def item_results(cli, done, task: str) -> dict:
    """{host: [items]} of a loop task in the run of `run --json`, from the run's artifacts."""
    run_id = next(e["run_id"] for e in events(done) if e["event"] == "cycle_result")
    path = Path(json.loads(cli("history", run_id, "--json", check_code=0).stdout)["artifacts"])
    items: dict = {}
    for event in (json.loads(p.read_text()) for p in path.rglob("job_events/*.json")):
        data = event.get("event_data") or {}
        if event.get("event") == "runner_item_on_ok" and data.get("task") == task:
            items.setdefault(data["host"], []).append(data["res"]["item"])
    return items


def test_a_changed_file_restarts_the_service_that_reads_it_once(cli, estate, host_lab):
    """The demo binds /etc/default/cron (read only when cron starts) to cron."""
    run(cli, estate, code=2)
    started = crons(host_lab)
    assert all(line.endswith(" /usr/sbin/cron -f -L 5") for line in started.values()), started

    motd = estate.path / "roles/host_files/templates/motd.j2"
    motd.write_text(motd.read_text() + "# revision 2\n")
    estate.commit("motd: a file that no service reads")
    done = run(cli, estate, "--json", code=2)
    changed = {(e["host"], e["task"]) for e in events(done)
               if e["event"] == "task_result" and e["status"] == "changed"}
    assert changed == {(h, "Render templates") for h in host_lab.hosts}
    assert crons(host_lab) == started

    # One commit changes cron's options and, on the web hosts, a second file bound to cron.
    group_vars = estate.path / "inventories/lab/group_vars"
    baremetal, web = (yaml.safe_load((group_vars / name).read_text())
                      for name in ("baremetal.yml", "web/main.yml"))
    baremetal["cron_extra_opts"] = "-L 15"
    web["app_workers"] = 3
    next(t for t in web["host_files_templates"] if t["src"] == "app.conf.j2")["restart"] = "cron"
    (group_vars / "baremetal.yml").write_text(yaml.safe_dump(baremetal, sort_keys=False))
    (group_vars / "web/main.yml").write_text(yaml.safe_dump(web, sort_keys=False))
    estate.commit("cron logs more; app.conf is read by cron too")

    plan = cli("plan", "--repo", estate.url, "--env", "lab", *VAULT, "--json", check_code=2)
    reports = {e["host"]: e["message"] for e in events(plan) if e["event"] == "task_result"
               and e["task"].startswith("Report the services that would be restarted")}
    assert reports == {h: "cron would be restarted" for h in host_lab.hosts}
    assert crons(host_lab) == started

    done = run(cli, estate, "--json", code=2)
    restarted = crons(host_lab)
    for name in host_lab.hosts:
        assert restarted[name].endswith(" /usr/sbin/cron -f -L 15"), restarted
        assert restarted[name].split()[0] != started[name].split()[0]
    assert item_results(cli, done, "Restart or reload the services whose files changed") == {
        h: [["cron", "restarted"]] for h in host_lab.hosts}
    assert "workers = 3" in host_file(host_lab, "web-1", "/etc/demo-app/app.conf").read_text()


def test_preflight_connections_are_the_ones_ansible_then_uses(host_lab, settings_for, tmp_path):
    """Before a run, each host's pre-flight connection stays open as the master connection
    that Ansible's ssh then uses: Ansible opens none of its own, and the end of the run
    closes them. The check goes where Ansible's ssh goes (a host behind a bastion, through
    its ProxyCommand). The failures OpenSSH reports are told apart; a paramiko target is
    checked with paramiko, the client Ansible uses for it."""
    from gitops_ansible.execute import ANSIBLE_SSH_ARGS, control_dir, orphans, stop_leftovers
    from gitops_ansible.inventory import CONNECTION_VARS, Inventory, Target
    from gitops_ansible.preflight import Masters, check_hosts

    run_id = f"test-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"
    conn = {k: v for k, v in host_lab.inventory_vars().items() if k in CONNECTION_VARS}
    direct = {name: {**conn, "ansible_host": host.address}
              for name, host in host_lab.hosts.items()}
    # db-1 by a name only the bastion (web-1) could resolve: reached through it alone
    bastion, behind = host_lab.hosts["web-1"].address, host_lab.hosts["db-1"].address
    jump = (f"ssh -o BatchMode=yes -o IdentitiesOnly=yes -i {conn['ansible_ssh_private_key_file']}"
            f" -o UserKnownHostsFile={host_lab.known_hosts} -W {behind}:22 root@{bastion}")
    proxied = {**direct, "db-1": {**direct["db-1"], "ansible_host": "db-1.behind.bastion",
                                  "ansible_ssh_common_args": (
                                      f"{conn['ansible_ssh_common_args']} -o HostKeyAlias="
                                      f"{behind} -o 'ProxyCommand={jump}'")}}

    def inventory(hosts: dict, **more) -> Inventory:
        return Inventory("lab", tmp_path, {n: Target(n, "baremetal", {**v, **more})
                                           for n, v in hosts.items()}, set())

    def sockets() -> set[str]:
        return {p.name for p in directory.iterdir() if p.is_socket()}

    settings, directory = settings_for(), control_dir(run_id)
    args = f"{ANSIBLE_SSH_ARGS} -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
    masters = Masters(args, directory)
    try:
        checks = check_hosts(inventory(proxied), settings, masters)
        assert {c.host: c.status for c in checks} == dict.fromkeys(proxied, "ok"), checks
        opened = sockets()
        assert opened == {Path(masters.path(v["ansible_host"], None, "root")).name
                          for v in proxied.values()}
        assert len(orphans(run_id)) == len(proxied)

        python = {"ansible_python_interpreter": "/usr/bin/python3"}
        (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {
            n: {**v, **python} for n, v in proxied.items()}}}))
        env = {**os.environ, "ANSIBLE_SSH_ARGS": args, "ANSIBLE_SSH_CONTROL_PATH_DIR":
               str(directory), "ANSIBLE_HOST_KEY_CHECKING": "True"}
        ping = subprocess.run([str(Path(sys.executable).parent / "ansible"), "all", "-i",
                               str(tmp_path / "hosts.yml"), "-m", "ping"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert sockets() == opened  # Ansible's ssh went through the pre-flight's masters
    finally:
        stopped = stop_leftovers(run_id, grace=5.0)
    assert len(stopped) == len(proxied) and not orphans(run_id) and not directory.exists()

    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    empty = tmp_path / "known_hosts"
    empty.touch()
    unknown = conn["ansible_ssh_common_args"].replace(str(host_lab.known_hosts), str(empty))
    for connection in ("ssh", "paramiko"):
        cases = {"ok": {}, "auth-failed": {"ansible_ssh_private_key_file": str(stranger)},
                 "host-key-unknown": {"ansible_ssh_common_args": unknown}}
        for status, more in cases.items():
            checks = check_hosts(inventory(direct, ansible_connection=connection, **more),
                                 settings)
            assert {c.status for c in checks} == {status}, (connection, checks)
            if status == "host-key-unknown":
                assert all(str(empty) in c.detail for c in checks), checks
