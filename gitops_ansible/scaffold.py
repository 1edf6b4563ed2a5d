"""`gitops-ansible init`: scaffold a new GitOps repository.

The layout is this project's own (ansible.cfg, playbooks/site.yml routing targets by
`platform`, one inventory per environment, a platform role with argument specs and a
molecule scenario, lint settings). The generated repository passes ansible-lint
(production profile), yamllint, inventory validation and its own `molecule test`, which
runs against localhost (connection local) and writes only under molecule's ephemeral
directory. Templates are plain strings: `$name` is substituted, `$$` is a literal `$`.
"""
from __future__ import annotations

import re
from pathlib import Path
from string import Template

NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
ENVIRONMENTS = ("dev", "staging", "prod")


class ScaffoldError(Exception):
    """Bad names, or a destination that is not empty (without force)."""


ANSIBLE_CFG = """\
# Ansible settings of this GitOps repository; they apply when ansible-playbook
# runs from its root:  ansible-playbook -i inventories/ENV playbooks/site.yml
[defaults]
roles_path = roles
retry_files_enabled = False
interpreter_python = auto_silent
host_key_checking = True
callback_result_format = yaml

[ssh_connection]
pipelining = True
"""

SITE = """\
---
# Every inventory target declares `platform`; this play checks it and puts the
# target in the group `platform_<platform>`, then each platform playbook below
# converges its own group. A new platform: its playbook, its name in
# gitops_platforms and an import_playbook line.
- name: Classify targets by platform
  hosts: all
  gather_facts: false
  any_errors_fatal: true
  vars:
    gitops_platforms:
      - $platform
      - local
  tasks:
    - name: Check that the target declares a platform this repository knows
      ansible.builtin.fail:
        msg: >-
          {{ inventory_hostname }}: platform {{ platform | default('(not set)') }}
          is not one of {{ gitops_platforms | join(', ') }}.
      when: platform is not defined or platform not in gitops_platforms

    - name: Group the target by platform
      ansible.builtin.group_by:
        key: "platform_{{ platform }}"
      changed_when: false

- name: Platform $platform
  ansible.builtin.import_playbook: $platform.yml

- name: The controller itself
  ansible.builtin.import_playbook: local.yml
"""

PLATFORM_PLAYBOOK = """\
---
- name: Converge $platform targets
  hosts: platform_$platform
  gather_facts: false
  roles:
    - role: $role
"""

LOCAL_PLAYBOOK = """\
---
# The machine that runs Ansible, as a target (platform: local).
- name: Converge the controller
  hosts: platform_local
  connection: local
  gather_facts: false
  vars:
    # Interpreter discovery can pick a pyenv shim for local targets.
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  roles:
    - role: $role
"""

HOSTS = """\
---
# Environment "$env":  ansible-playbook -i inventories/$env playbooks/site.yml
all:
  children:
    $platform:
      hosts:
        host-01.$env.example.com:
        host-02.$env.example.com:
"""

GROUP_ALL = """\
---
gitops_environment: $env
"""

GROUP_PLATFORM = """\
---
platform: $platform
ansible_user: root
ansible_python_interpreter: /usr/bin/python3
${role}_message: Managed by gitops-ansible ($env). Change the repository, not this host.
"""

ROLE_TASKS = """\
---
- name: Ensure the managed directory
  ansible.builtin.file:
    path: "{{ ${role}_directory }}"
    state: directory
    mode: "0755"

- name: Write the marker file
  ansible.builtin.copy:
    dest: "{{ ${role}_directory }}/managed-by-gitops"
    content: "{{ ${role}_message }}\\n"
    mode: "0644"
"""

ROLE_DEFAULTS = """\
---
# Directory the role manages.
${role}_directory: /etc/$role
# Content of the marker file in it.
${role}_message: Managed by gitops-ansible. Change the repository, not this host.
"""

ROLE_META = """\
---
galaxy_info:
  role_name: $role
  author: your-team
  description: Base configuration of $platform targets.
  license: MIT
  min_ansible_version: "2.15"
  platforms:
    - name: Debian
      versions:
        - bookworm
dependencies: []
"""

ROLE_SPECS = """\
---
argument_specs:
  main:
    short_description: Base configuration of $platform targets.
    options:
      ${role}_directory:
        type: str
        default: /etc/$role
        description: Directory the role manages.
      ${role}_message:
        type: str
        default: Managed by gitops-ansible. Change the repository, not this host.
        description: Content of the marker file in O(${role}_directory).
"""

ROLE_README = """\
# $role

Base configuration of `$platform` targets: a directory with a marker file.

## Variables

| variable | default | meaning |
|---|---|---|
| `${role}_directory` | `/etc/$role` | directory the role manages |
| `${role}_message` | `Managed by gitops-ansible. Change the repository, not this host.` | content of `managed-by-gitops` in it |

Test it with `molecule test` from the repository root (localhost, connection local).
"""

MOLECULE = """\
---
# The role against localhost (connection local); it writes only under
# molecule's ephemeral directory. Run from the repository root: molecule test
dependency:
  name: galaxy
  enabled: false
driver:
  name: default
  options:
    managed: false
    ansible_connection_options:
      ansible_connection: local
platforms:
  - name: instance
prerun: false
ansible:
  cfg:
    defaults:
      roles_path: $${MOLECULE_PROJECT_DIRECTORY}/roles
scenario:
  name: default
  test_sequence:
    - dependency
    - syntax
    - converge
    - idempotence
    - verify
    - destroy
verifier:
  name: ansible
"""

MOLECULE_CONVERGE = """\
---
- name: Converge
  hosts: all
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
    ${role}_directory: "{{ molecule_ephemeral_directory }}/target/etc/$role"
    ${role}_message: Written by molecule.
  roles:
    - role: $role
"""

MOLECULE_VERIFY = """\
---
- name: Verify
  hosts: all
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
    target: "{{ molecule_ephemeral_directory }}/target/etc/$role/managed-by-gitops"
  tasks:
    - name: Stat the marker file
      ansible.builtin.stat:
        path: "{{ target }}"
      register: verify_stat

    - name: Read the marker file
      ansible.builtin.slurp:
        src: "{{ target }}"
      register: verify_content

    - name: Check the marker file
      ansible.builtin.assert:
        that:
          - verify_stat.stat.mode == '0644'
          - (verify_content.content | b64decode) == 'Written by molecule.\\n'
"""

MOLECULE_DESTROY = """\
---
- name: Destroy
  hosts: all
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Remove what converge wrote
      ansible.builtin.file:
        path: "{{ molecule_ephemeral_directory }}/target"
        state: absent
"""

ANSIBLE_LINT = """\
---
profile: production
offline: true
exclude_paths:
  - .venv/
  - .cache/
  - .git/
"""

YAMLLINT = """\
---
extends: default
ignore: |
  .venv/
  .cache/
  .git/
rules:
  line-length:
    max: 120
  comments:
    min-spaces-from-content: 1
  comments-indentation: false
  truthy:
    allowed-values: ["true", "false"]
    check-keys: true
  braces:
    max-spaces-inside: 1
  octal-values:
    forbid-implicit-octal: true
    forbid-explicit-octal: true
"""


def files(platform: str, role: str) -> dict[str, str]:
    """Relative path -> content of every file of a new repository."""
    role_dir, scenario = f"roles/{role}", "molecule/default"
    out = {
        "ansible.cfg": ANSIBLE_CFG, ".ansible-lint": ANSIBLE_LINT, ".yamllint": YAMLLINT,
        "playbooks/site.yml": SITE, f"playbooks/{platform}.yml": PLATFORM_PLAYBOOK,
        "playbooks/local.yml": LOCAL_PLAYBOOK,
        f"{role_dir}/tasks/main.yml": ROLE_TASKS, f"{role_dir}/defaults/main.yml": ROLE_DEFAULTS,
        f"{role_dir}/meta/main.yml": ROLE_META,
        f"{role_dir}/meta/argument_specs.yml": ROLE_SPECS, f"{role_dir}/README.md": ROLE_README,
        f"{scenario}/molecule.yml": MOLECULE, f"{scenario}/converge.yml": MOLECULE_CONVERGE,
        f"{scenario}/verify.yml": MOLECULE_VERIFY, f"{scenario}/destroy.yml": MOLECULE_DESTROY,
    }
    for env in ENVIRONMENTS:
        out[f"inventories/{env}/hosts.yml"] = Template(HOSTS).safe_substitute(env=env)
        out[f"inventories/{env}/group_vars/all.yml"] = Template(GROUP_ALL).safe_substitute(env=env)
        out[f"inventories/{env}/group_vars/{platform}.yml"] = \
            Template(GROUP_PLATFORM).safe_substitute(env=env)
    return {path: Template(text).substitute(platform=platform, role=role)
            for path, text in out.items()}


def init(dest: Path, platform: str = "baremetal", role: str | None = None,
         force: bool = False) -> list[Path]:
    """Write a new repository into DEST; return the files written."""
    role = role or f"{platform}_base"
    for what, name in (("platform", platform), ("role", role)):
        if not NAME.fullmatch(name) or (what, name) == ("platform", "local"):
            raise ScaffoldError(f"{what} name {name!r}: lowercase letters, digits and '_', "
                                "starting with a letter (platform: not 'local', built in)")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ScaffoldError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise ScaffoldError(f"{dest} is not empty: use --force to write into it "
                            "(files of the same name are overwritten)")
    written = []
    for rel, text in files(platform, role).items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
