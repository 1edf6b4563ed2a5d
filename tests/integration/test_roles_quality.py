"""Role quality with the real tools: molecule scenarios (on lab hosts and on localhost),
argument specs enforced by Ansible, ansible-lint and yamllint, and `gitops-ansible init`.

The molecule runs need molecule, ansible-lint and yamllint from the `test` extra; the
baremetal scenario needs root and network namespaces (the host lab): elsewhere those tests
skip, except under CI=true, where they fail.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab.hosts import unavailable_reason
from tests.conftest import ROOT, require

BIN = Path(sys.executable).parent
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())


def tool_env(**extra) -> dict:
    """The environment of a user who activated the venv: its bin first on PATH."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0")
    env.update(extra)
    return env


def tool(name: str, *args, cwd: Path, timeout: float = 900, **env) -> subprocess.CompletedProcess:
    exe = BIN / name
    require(exe.exists(), f"{name} is not installed (pip install -e '.[test]')")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, env=tool_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def output(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-20000:]}\nstderr:\n{done.stderr[-5000:]}"


def step(text: str, scenario: str, name: str) -> str | None:
    """How molecule reported a step ("Successful", "Failed", ...), from its plain output."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    match = re.search(rf"\[{scenario} > {name}\] Executed: (\w+)", plain)
    return match.group(1) if match else None


def require_lab() -> None:
    reason = unavailable_reason()
    require(reason is None, reason or "")


# ---- molecule on the lab's SSH hosts ---------------------------------------------------
@pytest.mark.baremetal
@pytest.mark.molecule
def test_molecule_baremetal_scenario_passes():
    require_lab()
    done = tool("molecule", "test", "-s", "baremetal", cwd=ROOT)
    assert done.returncode == 0, output(done)
    text = done.stdout + done.stderr
    assert step(text, "baremetal", "dependency") == "2"  # "2 disabled": no Galaxy
    for name in ("syntax", "create", "converge", "idempotence", "verify", "destroy"):
        assert step(text, "baremetal", name) == "Successful", f"{name}\n{output(done)}"
    assert "failed=0" in text and "unreachable=0" in text


@pytest.mark.baremetal
@pytest.mark.molecule
def test_molecule_catches_a_non_idempotent_task(tmp_path):
    """A copy of the repository whose host_sysctl role gained a command task without
    changed_when: molecule fails at the idempotence step, naming that task."""
    require_lab()
    repo = tmp_path / "repo"
    for part in ("playbooks", "roles", "molecule", "lab"):
        shutil.copytree(ROOT / part, repo / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "ansible.cfg", repo / "ansible.cfg")
    tasks = repo / "roles/host_sysctl/tasks/main.yml"
    tasks.write_text(tasks.read_text() + (
        "\n- name: Stamp the run (not idempotent on purpose)\n"
        "  ansible.builtin.command:\n"
        "    argv: [touch, /var/tmp/gitops-ansible-stamp]\n"))
    scenario = repo / "molecule/baremetal/molecule.yml"  # one host is enough here
    scenario.write_text(scenario.read_text().replace("  - name: bm-2\n", ""))
    lab_dir = tmp_path / "lab"
    try:
        done = tool("molecule", "test", "-s", "baremetal", cwd=repo,
                    GITOPS_MOLECULE_LAB_DIR=str(lab_dir), GITOPS_MOLECULE_LAB_PREFIX="gatmolx",
                    GITOPS_MOLECULE_LAB_SUBNET="198.18.10")
    finally:
        subprocess.run([sys.executable, "-m", "lab", "down", "--dir", str(lab_dir)],
                       cwd=ROOT, capture_output=True)
    text = done.stdout + done.stderr
    assert done.returncode != 0, output(done)
    assert "Idempotence test failed because of the following tasks" in text, output(done)
    assert "Stamp the run (not idempotent on purpose)" in text.split("Idempotence test failed")[1]
    assert step(text, "baremetal", "converge") == "Successful"
    assert step(text, "baremetal", "idempotence") == "Failed", output(done)
    assert step(text, "baremetal", "verify") is None
    assert step(text, "baremetal", "destroy") == "Successful"  # the lab is stopped


# ---- argument specs -------------------------------------------------------------------
@pytest.mark.parametrize("role, variable, value, kind", [
    ("host_sysctl", "host_sysctl", "not a dict", "dict"),
    ("host_packages", "host_packages_cache_valid_time", "soon", "int"),
    ("host_users", "host_users", [{"comment": "no name"}], "name"),
])
def test_argument_specs_refuse_a_wrong_variable_before_any_task(tmp_path, role, variable,
                                                                value, kind):
    play = [{"name": "Wrong variable", "hosts": "localhost", "connection": "local",
             "gather_facts": False,
             "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
             "roles": [{"role": role, "vars": {variable: value}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    done = tool("ansible-playbook", "-i", "localhost,", "play.yml", cwd=tmp_path,
                ANSIBLE_ROLES_PATH=str(ROOT / "roles"))
    text = done.stdout + done.stderr
    assert done.returncode == 2, output(done)
    assert f"TASK [{role} : Validating arguments against arg spec 'main'" in text
    assert variable in text and kind in text, output(done)
    tasks = [t for t in text.splitlines() if t.startswith(f"TASK [{role} : ")]
    assert len(tasks) == 1, f"tasks of the role ran after the failed validation: {tasks}"


def test_every_role_variable_is_documented_with_its_default():
    """defaults/main.yml, meta/argument_specs.yml (all entry points: main, and e.g. the vm
    role's orphans) and README.md list the same variables, with the same defaults."""
    for role in ROLES:
        base = ROOT / "roles" / role
        defaults = yaml.safe_load((base / "defaults/main.yml").read_text()) or {}
        specs = yaml.safe_load((base / "meta/argument_specs.yml").read_text())
        options = {}
        for entry, spec in specs["argument_specs"].items():
            for name, option in spec["options"].items():
                assert options.get(name, option).get("default") == option.get("default"), \
                    f"{role}: {name} has another default in entry point {entry}"
                options[name] = option
        readme = (base / "README.md").read_text()
        # a required option has no default (the orchestrator checks it is set per host), nor
        # has an optional one the role reads with default(omit) (k8s_context)
        bare = {n for n, o in options.items() if "default" not in o}
        assert set(options) - bare == set(defaults), role
        for name in bare:
            assert f"| `{name}` |" in readme and options[name].get("description"), role
        for name, value in defaults.items():
            assert options[name].get("default") == value, f"{role}: {name}"
            assert f"| `{name}` |" in readme, f"{role}: {name} not in README.md"
            assert options[name].get("description"), f"{role}: {name}"


# ---- lint -----------------------------------------------------------------------------
def test_ansible_lint_and_yamllint_pass_on_the_project():
    yl = tool("yamllint", "--strict", ".", cwd=ROOT)
    assert yl.returncode == 0, output(yl)
    al = tool("ansible-lint", cwd=ROOT)
    assert al.returncode == 0, output(al)
    assert "Profile 'production' was required, and it passed" in al.stdout + al.stderr


# ---- gitops-ansible init --------------------------------------------------------------
def init(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gitops_ansible", "init", *map(str, args)],
                          capture_output=True, text=True, env=tool_env(), timeout=60)


@pytest.mark.molecule
def test_init_scaffolds_a_repository_that_passes_its_own_checks(tmp_path):
    repo = tmp_path / "repo"
    done = init(repo)
    assert done.returncode == 0, output(done)
    for rel in ("ansible.cfg", ".ansible-lint", ".yamllint", "playbooks/site.yml",
                "playbooks/local.yml", "playbooks/baremetal.yml",
                "roles/baremetal_base/meta/argument_specs.yml", "roles/baremetal_base/README.md",
                "molecule/default/molecule.yml", "inventories/prod/hosts.yml"):
        assert (repo / rel).is_file(), rel
    # the inventories' validation: tests/unit/test_scaffold.py
    yl = tool("yamllint", "--strict", ".", cwd=repo)
    assert yl.returncode == 0, output(yl)
    al = tool("ansible-lint", cwd=repo)
    assert al.returncode == 0, output(al)
    mol = tool("molecule", "test", cwd=repo)
    assert mol.returncode == 0, output(mol)
    for name in ("converge", "idempotence", "verify"):
        assert step(mol.stdout + mol.stderr, "default", name) == "Successful", output(mol)


def test_init_repository_converges_a_controller_target_by_push(tmp_path, cli):
    """A new repository given a `local` environment (the controller as a target): plan shows
    the role's changes, a pull run of its commit makes them (facts on), a push has nothing
    to change."""
    repo, target = tmp_path / "repo", tmp_path / "target/etc/baremetal_base"
    made = init(repo)
    assert made.returncode == 0
    assert f"gitops-ansible run --repo file://{repo} --env dev" in made.stdout
    hosts = {"all": {"hosts": {"controller": {
        "platform": "local", "ansible_connection": "local",
        "baremetal_base_directory": str(target)}}}}
    (repo / "inventories/local").mkdir()
    (repo / "inventories/local/hosts.yml").write_text(yaml.safe_dump(hosts))
    cli("plan", "--env", "local", "--path", repo, check_code=2)
    assert not target.exists()
    # init made a repository; the new environment is one commit away from a pull run
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "a local environment"], check=True)
    cli("run", "--env", "local", "--repo", f"file://{repo}", check_code=2)
    marker = target / "managed-by-gitops"
    assert marker.read_text() == "Managed by gitops-ansible. Change the repository, not this host.\n"
    assert oct(marker.stat().st_mode & 0o777) == "0o644"
    cli("push", "--env", "local", "--path", repo, check_code=0)


def test_init_refuses_a_non_empty_directory_unless_forced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    done = init(tmp_path)
    assert done.returncode == 5, output(done)
    assert "is not empty" in done.stderr and "--force" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    forced = init(tmp_path, "--force", "--platform", "edge", "--role", "edge_node")
    assert forced.returncode == 0, output(forced)
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    untracked = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain"],
                               capture_output=True, text=True, check=True).stdout
    assert untracked == "?? notes.txt\n", "init committed a file it did not write"
    assert (tmp_path / "roles/edge_node/tasks/main.yml").is_file()
    assert (tmp_path / "playbooks/edge.yml").is_file()
    bad = init(tmp_path / "other", "--platform", "Bad-Name")
    assert bad.returncode == 5 and "platform name" in bad.stderr
