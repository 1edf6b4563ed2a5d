"""A platform added the way docs/platforms.md says: a playbook, its role and an import line
in site.yml, in a repository of the project's own playbooks and roles. No Python of the
orchestrator changes: `gitops-ansible push` (a real process) validates the new platform
with its role's declarations (argument_specs types, a file check of meta/gitops.yml) and
converges it, and plain `ansible-playbook` routes it too.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, require
from lab.gitserver import git

pytestmark = [pytest.mark.e2e]

PLAYBOOK = """---
- name: Converge edge devices
  hosts: platform_edge
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  roles:
    - role: edge_config
"""
TASKS = """---
- name: Write the device's configuration
  ansible.builtin.copy:
    dest: "{{ edge_config_out }}/{{ inventory_hostname }}.conf"
    content: "port {{ edge_config_port }}\\n"
    mode: "0644"
"""
DEFAULTS = """---
edge_config_port: 8080
edge_config_specs_dirs:
  - "edge/{{ inventory_hostname }}"
"""
SPECS = """---
argument_specs:
  main:
    short_description: Configure an edge device
    options:
      edge_config_out:
        type: path
        required: true
        description: Directory the configuration goes to.
      edge_config_port:
        type: int
        default: 8080
        description: Port the device listens on.
      edge_config_specs_dirs:
        type: list
        elements: str
        default: ["edge/{{ inventory_hostname }}"]
        description: Directories of the device's specs.
"""
GITOPS = """---
file_checks:
  - dirs_var: edge_config_specs_dirs
    what: spec
    documents_require: [name, version]
"""


def edge_repo(tmp_path: Path, out: Path) -> Path:
    repo = tmp_path / "repo"
    for part in ("playbooks", "roles"):
        shutil.copytree(ROOT / part, repo / part)
    shutil.copy(ROOT / "ansible.cfg", repo / "ansible.cfg")
    files = {"playbooks/edge.yml": PLAYBOOK, "roles/edge_config/tasks/main.yml": TASKS,
             "roles/edge_config/defaults/main.yml": DEFAULTS,
             "roles/edge_config/meta/argument_specs.yml": SPECS,
             "roles/edge_config/meta/gitops.yml": GITOPS,
             "edge/edge-1/app.yml": "---\nname: app\nversion: 1\n---\nname: db\n",
             "inventories/dev/hosts.yml": "---\n" + yaml.safe_dump({"all": {"hosts": {
                 "edge-1": {"platform": "edge", "edge_config_out": str(out)}}}}),
             "inventories/dev/host_vars/edge-1.yml": "---\nedge_config_port: eighty\n"}
    for relative, text in files.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(text)
    with (repo / "playbooks" / "site.yml").open("a") as site:
        site.write("\n- name: Edge devices\n  ansible.builtin.import_playbook: edge.yml\n")
    git("init", "-q", "-b", "main", cwd=repo)
    commit(repo, "an edge platform")
    return repo


def commit(repo: Path, message: str) -> None:
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", message,
        cwd=repo)


def test_a_platform_added_by_a_playbook_a_role_and_an_import_line(cli, tmp_path):
    require(shutil.which("git") is not None, "git is not installed")
    out = tmp_path / "out"
    out.mkdir()
    repo = edge_repo(tmp_path, out)

    refused = cli("push", "--env", "dev", "--path", repo, check_code=5)
    assert "edge/edge-1/app.yml:5: document 2: no version" in refused.stderr
    assert ("inventories/dev/host_vars/edge-1.yml:2: variable 'edge_config_port' must be int, "
            "not a string") in refused.stderr
    assert "Traceback" not in refused.stderr and not list(out.iterdir())

    (repo / "edge/edge-1/app.yml").write_text("---\nname: app\nversion: 1\n---\nname: db\n"
                                              "version: 2\n")
    (repo / "inventories/dev/host_vars/edge-1.yml").write_text("---\nedge_config_port: 9090\n")
    commit(repo, "fixed")
    cli("push", "--env", "dev", "--path", repo, check_code=2)
    assert (out / "edge-1.conf").read_text() == "port 9090\n"

    # plain ansible-playbook: site.yml knows the platform from its import line alone
    (out / "edge-1.conf").unlink()
    plain = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "inventories/dev",
             "playbooks/site.yml"]
    done = subprocess.run(plain, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "edge-1.conf").read_text() == "port 9090\n"
    (repo / "inventories/dev/host_vars/edge-2.yml").write_text("---\nplatform: nowhere\n")
    (repo / "inventories/dev/hosts.yml").write_text(
        (repo / "inventories/dev/hosts.yml").read_text() + "    edge-2: {}\n")
    done = subprocess.run(plain, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "one of: baremetal, kubernetes, vm, local, edge" in done.stdout
