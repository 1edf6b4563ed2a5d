"""The validator (inventory.load), driven by data files in tests/cases/validation/ (one per
case, subdirectories included), and what the cases cannot say: the project's own roles.

A case file::

    description: what is wrong and what must happen
    env: dev                  # optional: the environment (default dev)
    files: {path: text}       # changes to the base repository (tests/cases/base); null removes
    links: {path: target}     # optional: symlinks in the repository
    settings: {key: value}    # optional: more settings (inventory_dir, vault_password_file)
    installed: {path: text}   # optional: files outside the repository, in {installed}
    paths: {collections: [dir], roles: [dir]}  # optional: the installed collections and
                              # roles (requirements.SearchPaths), relative to the repository
    seconds: 30               # optional: the most inventory.load may take (a hang guard)
    expect: [words]           # refused: each must be in one problem
    platforms: {name: hosts}  # accepted: the targets by platform

``{outside}`` in links, settings and expectations is a directory beside the repository (a
secret.yml, an inventory and a playbook), whose content no problem may show. In paths and
expectations, ``{installed}`` is the directory of ``installed`` and ``{case}`` the case
file's directory (which may hold a collection tree: ``ansible_collections/`` is no case).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from gitops_ansible import inventory
from gitops_ansible.requirements import SearchPaths
from tests.conftest import CASES, ROOT, copy_base, make_settings

VALIDATION = sorted(p for p in (CASES / "validation").rglob("*.yml")
                    if "ansible_collections" not in p.parts)
SECRET = "root:$6$only-outside$"


def outside_tree(path: Path) -> Path:
    copy_base(path)
    (path / "secret.yml").write_text(f"---\nplatform: local\nstolen: '{SECRET}'\n")
    (path / "playbooks" / "evil.yml").write_text(
        f"---\n- name: Evil\n  hosts: all\n  tasks:\n"
        f"    - ansible.builtin.debug: {{msg: '{SECRET}'}}\n")
    return path


def write(base: Path, files: dict | None) -> None:
    for relative, text in (files or {}).items():
        target = base / relative
        if text is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def build(case: dict, tmp_path: Path) -> tuple[Path, Path]:
    repo, outside = copy_base(tmp_path / "repo"), outside_tree(tmp_path / "outside")
    write(repo, case.get("files"))
    write(tmp_path / "installed", case.get("installed"))
    for relative, pointee in (case.get("links") or {}).items():
        link = repo / relative
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        link.unlink(missing_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(pointee.replace("{outside}", str(outside)))
    return repo, outside


def fill(value, outside: Path, **more: Path):
    if not isinstance(value, str):
        return value
    for name, path in {"outside": outside, **more}.items():
        value = value.replace("{" + name + "}", str(path))
    return value


def search_paths(case: dict, repo: Path, places: dict) -> SearchPaths | None:
    """The case's installed collections and roles (None: inventory.load's default)."""
    if "paths" not in case:
        return None
    return SearchPaths(**{key: tuple(repo / fill(d, **places)
                                     for d in case["paths"].get(key) or ())
                          for key in ("collections", "roles")})


@pytest.mark.parametrize("case_file", VALIDATION,
                         ids=[str(p.relative_to(CASES / "validation"))[:-4] for p in VALIDATION])
def test_validation_case(case_file: Path, tmp_path):
    case = yaml.safe_load(case_file.read_text())
    repo, outside = build(case, tmp_path)
    extra = {key: fill(value, outside) for key, value in (case.get("settings") or {}).items()}
    settings = make_settings(env=case.get("env", "dev"), state_dir=str(tmp_path / "state"),
                             **extra)
    places = {"outside": outside, "installed": tmp_path / "installed", "case": case_file.parent}
    paths = search_paths(case, repo, places)
    started = time.monotonic()
    if case.get("expect"):
        with pytest.raises(inventory.Refused) as refused:
            inventory.load(repo, settings, paths)
        problems = [str(p) for p in refused.value.problems]
        for expected in case["expect"]:
            assert any(fill(expected, **places) in problem for problem in problems), \
                (expected, problems)
        for problem in refused.value.problems:  # one line, naming a file, nothing read outside
            assert problem.file and "\n" not in str(problem) and "Traceback" not in str(problem)
            assert SECRET not in str(problem)
    else:
        loaded = inventory.load(repo, settings, paths)
        assert loaded.by_platform() == case["platforms"]
    assert time.monotonic() - started < case.get("seconds", 60)


def project_estate(tmp_path: Path, hosts: dict) -> Path:
    """The project's own playbooks and roles with an inventory ``dev`` of ``hosts``."""
    repo = tmp_path / "repo"
    for part in ("playbooks", "roles"):
        shutil.copytree(ROOT / part, repo / part)
    (repo / "inventories" / "dev").mkdir(parents=True)
    (repo / "inventories" / "dev" / "hosts.yml").write_text(
        "---\n" + yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False))
    return repo


def test_the_kubernetes_role_declares_its_manifest_checks(tmp_path):
    """roles/k8s_manifests/meta/gitops.yml, the project's own: a cluster's manifests are
    checked (its default directory, clusters/<target>/), bare hosts' are not, nor the
    files of a kustomization (built_when)."""
    cluster = {"platform": "kubernetes", "k8s_kubeconfig": "/nowhere"}
    repo = project_estate(tmp_path, {"c1": cluster, "c2": {**cluster, "k8s_manifests_dirs":
                                                          ["bases/shop"]},
                                     "web": {"platform": "baremetal"}})
    (repo / "clusters" / "c1").mkdir(parents=True)
    (repo / "clusters" / "c1" / "app.yaml").write_text("apiVersion: v1\nmetadata: {name: x}\n")
    # a kustomization's directory is the role's to build and check: a JSON 6902 patch is a
    # list, not an object
    overlay = repo / "clusters" / "c1" / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text("resources: [../app.yaml]\n")
    (overlay / "patch.yaml").write_text("- {op: replace, path: /x, value: 1}\n")
    with pytest.raises(inventory.Refused) as refused:
        inventory.load(repo, make_settings(env="dev", state_dir=str(tmp_path / "state")))
    assert sorted(str(p) for p in refused.value.problems) == [
        "bases/shop: host 'c2': manifest directory not found",
        "clusters/c1/app.yaml:1: document 1: no kind"]


def test_preflight_facts_come_from_the_platform_playbooks(tmp_path):
    """connection: local on the cluster play and gitops_created_by_run on the VM play, as
    the project's playbooks set them."""
    vm = {"platform": "vm", "vm_hypervisor": "localhost", "vm_image": "debian",
          "vm_ssh_port": 2222, "ansible_host": "127.0.0.1"}
    repo = project_estate(tmp_path, {"c1": {"platform": "kubernetes", "k8s_kubeconfig": "/k"},
                                     "vm1": vm, "web": {"platform": "baremetal"}})
    (repo / "clusters" / "c1").mkdir(parents=True)
    loaded = inventory.load(repo, make_settings(env="dev", state_dir=str(tmp_path / "state")))
    facts = {name: (t.is_ssh, t.created_by_run) for name, t in loaded.targets.items()}
    assert facts == {"c1": (False, False), "vm1": (True, True), "web": (True, False)}
