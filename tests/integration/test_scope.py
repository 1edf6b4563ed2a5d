"""Change-scoped runs leave the hosts as full runs do (issue 15, deliverable 5).

One repository, two environments identical but for their addresses (and the directory the
controller writes to): `auto` on one set of lab hosts, converged with the default scope,
and `full` on an identical set, converged with `--scope full`. The same series of commits
goes to both: a template of a role that one host applies, a group's variables, a host added
to a group, a host removed from the inventory, a template of a role that another role
depends on (meta/main.yml), and a platform playbook. After every commit the two sets must
be in the same state: managed files, installed packages (dpkg), users and groups
(/etc/passwd, /etc/group) and the services the roles manage (enabled, active). And the
auto run must have converged exactly the targets the commit concerns, from its
cycle_result's scope, so that the test fails when scoping leaves a host behind (the states
differ) and when it does not scope at all (every target in the scope).

Beside the lab hosts, a `local` target, the controller, writes its motd and a summary of
the estate (every host's groups and motd message): the summary reads other hosts'
variables, so the controller must be in the scope of every commit that changes a host's
groups or variables, and out of the others (a bare-metal playbook's included). In the
test's copy of the project's roles, host_files has no estate-summary.txt.j2 (the demo
controller's, which also reads every host): the controller's summary is a role of its own
here, so that the bare-metal plays do not read other hosts and an inventory change scopes.

The two environments converge each commit at the same time, in two processes with state
directories of their own: they share nothing but the repository. The test is longer than
most: seven commits, each converged in full on one set for the comparison (the first also
installs cron on six hosts). It took 7.7 min on 2 cores under a load average of 15 (a
parallel test suite and a Kubernetes build beside it): the full environment's converges
alone are seven full runs of its five targets.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gitops_ansible.report import ExitCode
from lab.gitserver import WorkTree
from lab.hosts import HostLab
from tests.conftest import ROOT, Cli, events

pytestmark = [pytest.mark.baremetal, pytest.mark.e2e]

ENVS = ("auto", "full")
SCOPE_FLAGS = {"auto": (), "full": ("--scope", "full")}
HOSTS = ("web-1", "web-2", "db-1", "web-3")  # web-3 joins at step 3, web-2 leaves at step 4
SSH_DROP_IN = "/etc/ssh/sshd_config.d/50-gitops-hardening.conf"
MANAGED = ("/etc/motd", "/etc/default/cron", "/etc/sysctl.d/90-gitops-ansible.conf",
           SSH_DROP_IN, "/etc/app-base", "/etc/app-base/base.conf", "/etc/web-app/web.conf",
           "/etc/gitops-platform", "/etc/passwd", "/etc/group", "/home/deploy/.ssh",
           "/home/deploy/.ssh/authorized_keys", "/home/dbadmin")
UNITS = ("cron", "ssh")

DEPLOY = {"name": "deploy", "groups": ["gitops"], "ssh_authorized_keys": [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHTaWGdfKt3iZIcL13xNNO/yg+hfgVeSR0fWGgmdwCsA deploy"]}
DB_TUNED = {"motd_message": "Database host, tuned.", "host_packages_present": ["cron", "tree"],
            "host_users": [DEPLOY, {"name": "dbadmin", "groups": ["gitops"]}],
            "host_services": [{"name": "cron", "state": "stopped", "enabled": False}]}

# A role applied by the web hosts only, whose settings come from the role it depends on.
TEST_ROLES = {
    "roles/web_app/meta/main.yml": "---\ndependencies:\n  - role: app_base\n",
    "roles/web_app/tasks/main.yml": """---
- name: Ensure the web application's directory
  ansible.builtin.file:
    path: /etc/web-app
    state: directory
    mode: "0755"

- name: Write the web application's settings
  ansible.builtin.template:
    src: web.conf.j2
    dest: /etc/web-app/web.conf
    mode: "0644"
""",
    "roles/web_app/templates/web.conf.j2": "web application on {{ inventory_hostname }}\n",
    "roles/app_base/tasks/main.yml": """---
- name: Ensure the base directory
  ansible.builtin.file:
    path: /etc/app-base
    state: directory
    mode: "0755"

- name: Write the base settings
  ansible.builtin.template:
    src: base.conf.j2
    dest: /etc/app-base/base.conf
    mode: "0644"
""",
    "roles/app_base/templates/base.conf.j2": "# base of {{ inventory_hostname }}\nlevel = 1\n",
    "roles/estate_summary/tasks/main.yml": """---
- name: Write the summary of the estate
  ansible.builtin.template:
    src: estate.txt.j2
    dest: "{{ estate_summary_dest }}"
    mode: "0644"
""",
    # The platform_* groups are left out: a run adds them to the hosts it runs on only.
    "roles/estate_summary/templates/estate.txt.j2": """\
{% for host in groups['all'] | sort %}
{{ host }}: {{ hostvars[host].group_names | reject('match', '^platform_') | sort | join(', ') }}; \
{{ hostvars[host].motd_message | default('') }}
{% endfor %}
""",
}
WEB_APP_PLAY = """
- name: The web application of the web hosts
  hosts: platform_baremetal:&web
  gather_facts: false
  roles:
    - role: web_app
"""
SUMMARY_PLAY = """
- name: The summary of the estate on the controller
  hosts: platform_local
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  roles:
    - role: estate_summary
"""
MARK_PLAY = """
- name: Mark the platform's hosts
  hosts: platform_baremetal
  gather_facts: false
  tasks:
    - name: Write the platform mark
      ansible.builtin.copy:
        dest: /etc/gitops-platform
        content: "converged as a bare-metal host\\n"
        mode: "0644"
"""


def lab_name(env: str, target: str) -> str:
    """The lab host behind inventory target TARGET of ENV: a-web-1, f-web-1, ..."""
    return f"{env[0]}-{target}"


@pytest.fixture(scope="module")
def twin_lab(lab_rootfs, tmp_path_factory):
    """Two identical sets of pristine hosts, a-NAME for `auto` and f-NAME for `full`."""
    names = [lab_name(env, host) for env in ENVS for host in HOSTS]
    with HostLab(tmp_path_factory.mktemp("scope-lab"), names, prefix="gatscope",
                 subnet="198.18.12", rootfs=lab_rootfs) as lab:
        yield lab


class TwinEstate:
    """The served repository; each change goes to both environments' inventories alike."""

    def __init__(self, tree: WorkTree, lab: HostLab, tmp_path: Path):
        self.tree, self.lab, self.tmp_path = tree, lab, tmp_path
        self.web = ["web-1", "web-2"]

    def targets(self) -> set[str]:
        return {*self.web, "db-1", "controller"}

    def controller_dir(self, env: str) -> Path:
        return self.tmp_path / f"controller-{env}"

    def write_vars(self, relative: str, data: dict) -> None:
        """inventories/ENV/RELATIVE of both environments: the same DATA."""
        self.write_each(relative, lambda env: data)

    def write_each(self, relative: str, build: Callable[[str], dict]) -> None:
        """inventories/ENV/RELATIVE of both environments: each its own BUILD(ENV)."""
        for env in ENVS:
            self.tree.write(f"inventories/{env}/{relative}", "---\n" + yaml.safe_dump(
                build(env), sort_keys=False))

    def controller_vars(self, env: str) -> dict:
        """The controller writes its motd and the estate's summary into a directory of its
        own per environment."""
        out = str(self.controller_dir(env))
        return {"platform": "local", "ansible_connection": "local",
                "estate_summary_dest": f"{out}/estate.txt",
                "host_files_directories": [{"path": out, "mode": "0755"}],
                "host_files_templates": [{"src": "motd.j2", "dest": f"{out}/motd"}]}

    def hosts_file(self, web: list[str]) -> None:
        """hosts.yml: the web hosts WEB, db-1, web-1 hardened, and the controller."""
        self.web = web

        def members(env: str, names) -> dict:
            return {n: {"ansible_host": self.lab.hosts[lab_name(env, n)].address}
                    for n in names}
        self.write_each("hosts.yml", lambda env: {"all": {"children": {
            "baremetal": {"children": {"web": {"hosts": members(env, web)},
                                       "db": {"hosts": members(env, ["db-1"])}}},
            "hardened": {"hosts": {"web-1": {}}}},
            "hosts": {"controller": {}}}})

    def append(self, relative: str, text: str) -> None:
        path = self.tree.path / relative
        path.write_text(path.read_text() + text)

    def commit(self, message: str) -> str:
        return self.tree.commit(message)


def twin_estate(git_servers, lab: HostLab, tmp_path: Path) -> TwinEstate:
    """The project's playbooks and roles, the test roles and the two inventories."""
    tree = WorkTree(git_servers.create("scope"), tmp_path / "worktree")
    for part in ("playbooks", "roles"):
        tree.copy_tree(ROOT / part, part)
    tree.write("ansible.cfg", (ROOT / "ansible.cfg").read_text())
    (tree.path / "roles/host_files/templates/estate-summary.txt.j2").unlink()
    for relative, text in TEST_ROLES.items():
        tree.write(relative, text)
    estate = TwinEstate(tree, lab, tmp_path)
    estate.append("playbooks/baremetal.yml", WEB_APP_PLAY)
    estate.append("playbooks/local.yml", SUMMARY_PLAY)
    estate.write_vars("group_vars/all.yml", {"gitops_environment": "lab"})
    estate.write_vars("group_vars/baremetal.yml", {
        "platform": "baremetal", **lab.inventory_vars(), "host_packages_present": ["cron"],
        "host_users": [DEPLOY],
        "host_files_templates": [{"src": "motd.j2", "dest": "/etc/motd"},
                                 {"src": "cron-default.j2", "dest": "/etc/default/cron",
                                  "restart": ["cron"]}],
        "host_services": [{"name": "cron", "state": "started", "enabled": True}],
        "host_sysctl": {"net.ipv4.ip_forward": 1}})
    estate.write_vars("group_vars/web.yml", {"motd_message": "Web front end."})
    estate.write_vars("group_vars/db.yml", {"motd_message": "Database host."})
    estate.write_each("host_vars/controller.yml", estate.controller_vars)
    estate.hosts_file(["web-1", "web-2"])
    tree.url = git_servers.url("scope", "git")
    return estate


def path_state(root: Path, path: str):
    """(mode, owner, group, content) of a file or directory of a host; None if missing."""
    target = root / path.lstrip("/")
    if not target.exists():
        return None
    st = target.stat()
    content = "<dir>" if target.is_dir() else target.read_text(errors="replace")
    return oct(st.st_mode), st.st_uid, st.st_gid, content


def host_state(lab: HostLab, name: str) -> dict:
    """What a user would look at on a host: managed files, users (passwd and group, in
    MANAGED), every package's status, the managed services and the live sysctl."""
    def out(*command: str) -> str:
        return lab.exec(name, ["sh", "-c", "; ".join(command)]).stdout

    units = " ".join(UNITS)
    return {"files": {p: path_state(lab.hosts[name].root, p) for p in MANAGED},
            "packages": out("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'"),
            "services": out(f"systemctl is-enabled {units}", f"systemctl is-active {units}"),
            "sysctl": out("sysctl -n net.ipv4.ip_forward")}


def estate_state(estate: TwinEstate, env: str) -> dict:
    """{target: state} of ENV's set, every lab host included (in the inventory or not)."""
    state = {host: host_state(estate.lab, lab_name(env, host)) for host in HOSTS}
    state["controller"] = {f: path_state(estate.controller_dir(env), f)
                           for f in ("motd", "estate.txt")}
    return state


@dataclass
class Converged:
    """One environment's `run --json` of one revision."""
    code: int
    result: dict  # the cycle_result event
    output: str

    @property
    def scope(self) -> dict:
        return self.result["scope"]


def converge(clis: dict[str, Cli], url: str) -> dict[str, Converged]:
    """`run` of both environments at once, auto with the default scope, full with
    --scope full; each must end with a cycle_result."""
    procs = {env: clis[env].popen("run", "--repo", url, "--env", env, "--json",
                                  *SCOPE_FLAGS[env]) for env in ENVS}
    done = {}
    for env, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        finished = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        results = [e for e in events(finished) if e["event"] == "cycle_result"]
        assert results, f"{env}: exit {proc.returncode}, no cycle_result\n{out}\n{err}"
        done[env] = Converged(proc.returncode, results[0], f"{out}\n{err}")
    return done


def assert_recorded(clis: dict[str, Cli], estate: TwinEstate, revision: str) -> None:
    """Every target of both environments is recorded clean at REVISION, and so is the
    environment."""
    for env in ENVS:
        [state] = json.loads(clis[env]("status", "--env", env, "--json",
                                       check_code=0).stdout)
        assert state["applied_revision"] == revision == state["good_revision"], (env, state)
        hosts = state["hosts"]
        assert {t: (hosts.get(t, {}).get("revision"), hosts.get(t, {}).get("failed"))
                for t in estate.targets()} == {t: (revision, False) for t in estate.targets()}


@dataclass
class Step:
    """One commit of the series and what an auto run of it must converge."""
    subject: str
    change: Callable[[TwinEstate], None]
    scope: dict[str, str | None]  # the targets it concerns -> in their reason (None: any)
    effect: Callable[[dict], bool]  # true of one set's state once converged
    left: tuple[str, ...] = ()


def hardening_template(estate: TwinEstate) -> None:
    estate.append("roles/ssh_hardening/templates/hardening.conf.j2", "LoginGraceTime 30\n")


def db_group_vars(estate: TwinEstate) -> None:
    estate.write_vars("group_vars/db.yml", DB_TUNED)


def base_template(estate: TwinEstate) -> None:
    estate.tree.write("roles/app_base/templates/base.conf.j2",
                      "# base of {{ inventory_hostname }}\nlevel = 2\n")


def text(state: dict, target: str, path: str) -> str:
    """The content of PATH on TARGET ("" when missing), in an estate_state."""
    files = state[target] if target == "controller" else state[target]["files"]
    return (files[path] or (None, None, None, ""))[3]


SUMMARY = "roles/estate_summary/templates/estate.txt.j2"  # it reads every host
STEPS = [
    Step("ssh_hardening: a shorter login grace time (a role of the hardened host only)",
         hardening_template, {"web-1": "roles/ssh_hardening/templates/hardening.conf.j2"},
         lambda s: "LoginGraceTime 30" in text(s, "web-1", SSH_DROP_IN)),
    Step("db: tree installed, a dbadmin user, cron stopped and disabled",
         db_group_vars, {"db-1": "group_vars/db.yml", "controller": SUMMARY},
         lambda s: "tree " in s["db-1"]["packages"] and "dbadmin:" in text(
             s, "db-1", "/etc/passwd") and s["db-1"]["services"].split()[0] == "disabled"
         and "tuned" in text(s, "controller", "estate.txt")),
    Step("web-3 joins the web group", lambda e: e.hosts_file(["web-1", "web-2", "web-3"]),
         {"web-3": None, "controller": SUMMARY},  # web-3: new, or "hosts.yml" changed
         lambda s: "Web front end." in text(s, "web-3", "/etc/motd")
         and "web-3" in text(s, "web-3", "/etc/web-app/web.conf")
         and "web-3: baremetal, web" in text(s, "controller", "estate.txt")),
    Step("web-2 leaves the inventory", lambda e: e.hosts_file(["web-1", "web-3"]),
         {"controller": SUMMARY},
         lambda s: "web-2" not in text(s, "controller", "estate.txt"), left=("web-2",)),
    Step("app_base: level 2 (a dependency of web_app)", base_template,
         dict.fromkeys(("web-1", "web-3"), "roles/app_base/templates/base.conf.j2"),
         lambda s: all("level = 2" in text(s, h, "/etc/app-base/base.conf")
                       for h in ("web-1", "web-3"))
         and "level = 1" in text(s, "web-2", "/etc/app-base/base.conf")),
    Step("baremetal.yml: a platform mark on every bare-metal host",
         lambda e: e.append("playbooks/baremetal.yml", MARK_PLAY),
         dict.fromkeys(("web-1", "web-3", "db-1"), "playbooks/baremetal.yml"),
         lambda s: all(text(s, h, "/etc/gitops-platform") for h in ("web-1", "web-3", "db-1"))
         and not text(s, "web-2", "/etc/gitops-platform")),
]


def first_converge_is_full_everywhere(done: dict[str, Converged], targets: set[str],
                                      state: dict) -> None:
    for env in ENVS:
        assert done[env].code == ExitCode.CHANGED, done[env].output
        assert done[env].scope["full"], (env, done[env].scope)  # a reason: no base yet
        assert set(done[env].result["hosts"]) == targets, done[env].result
    for host in ("web-1", "web-2", "db-1"):
        assert "deploy:" in text(state, host, "/etc/passwd")
        assert "cron " in state[host]["packages"]
        assert state[host]["services"].split() == ["enabled", "enabled", "active", "active"]
    assert [h for h in HOSTS if text(state, h, SSH_DROP_IN)] == ["web-1"]
    assert [h for h in HOSTS if text(state, h, "/etc/app-base/base.conf")] == ["web-1", "web-2"]
    assert "Ansible managed" not in text(state, "web-3", "/etc/motd")  # not in the inventory
    assert "controller" in text(state, "controller", "motd")
    assert "web-2: baremetal, web; Web front end." in text(state, "controller", "estate.txt")


def scoped_as_the_step_says(step: Step, done: dict[str, Converged], targets: set[str]) -> None:
    """auto converged exactly the step's scope, each target for the reason the step names,
    and recorded the rest unchanged; full converged every target."""
    auto, full = done["auto"], done["full"]
    for converged in (auto, full):
        assert converged.code == ExitCode.CHANGED, converged.output
    assert full.scope["full"] and set(full.result["hosts"]) == targets, full.result
    assert auto.scope["full"] is None, auto.scope
    assert set(auto.scope["hosts"]) == set(step.scope), auto.scope
    assert set(auto.result["hosts"]) == set(step.scope), auto.result
    assert set(auto.scope["unchanged"]) == targets - set(step.scope), auto.scope
    assert auto.scope["left"] == list(step.left), auto.scope
    for target, reason in step.scope.items():
        assert reason is None or reason in auto.scope["hosts"][target], (target, auto.scope)


def test_scoped_runs_leave_the_hosts_as_full_runs(git_servers, twin_lab, tmp_path):
    estate = twin_estate(git_servers, twin_lab, tmp_path)
    clis = {env: Cli(tmp_path / f"state-{env}") for env in ENVS}
    revision = estate.commit("the estate: two environments, one of each set of hosts")
    done = converge(clis, estate.tree.url)
    state = estate_state(estate, "auto")
    assert state == estate_state(estate, "full")
    first_converge_is_full_everywhere(done, estate.targets(), state)
    assert_recorded(clis, estate, revision)

    for step in STEPS:
        step.change(estate)
        revision = estate.commit(step.subject)
        done = converge(clis, estate.tree.url)
        state = estate_state(estate, "auto")
        assert state == estate_state(estate, "full"), step.subject
        assert step.effect(state), (step.subject, state)
        scoped_as_the_step_says(step, done, estate.targets())
        assert_recorded(clis, estate, revision)
