"""`gitops-ansible init`: where a new repository holds a file of the same path as this
project's repository, the skeleton's file is the project's own, byte for byte (for
`--platform kubernetes`, the project's playbook and its whole role k8s_manifests); a new
repository's inventories pass the validation plan and push run first, and a cluster's
kustomization builds; names and destinations that would write something else, or
elsewhere, are refused before any write.
"""
from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gitops_ansible import inventory, scaffold
from lab.kube import kubectl_path
from tests.conftest import ROOT, make_settings, require

DEFAULTS = scaffold.values()  # platform baremetal, role baremetal_base
KUBERNETES = scaffold.values("kubernetes")  # the project's playbook and role k8s_manifests
# the files of the project's role as the skeleton links them (Python's caches left out)
K8S_ROLE = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "roles/k8s_manifests").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
# (playbook, play name) imported by the project's own site.yml, in its order
PROJECT_PLATFORMS = [(Path(play["ansible.builtin.import_playbook"]).stem, play["name"])
                     for play in yaml.safe_load((ROOT / "playbooks/site.yml").read_text())
                     if "ansible.builtin.import_playbook" in play]
# path -> the names (over the defaults) under which the skeleton gives the project's file
SAME_AS_PROJECT = {
    "ansible.cfg": {}, ".ansible-lint": {}, ".yamllint": {},
    "playbooks/site.yml": {"platforms": PROJECT_PLATFORMS},
    "playbooks/local.yml": {"role": "host_files"},
    **{f"inventories/{env}/group_vars/all.yml": {} for env in scaffold.ENVIRONMENTS},
    **{rel: KUBERNETES for rel in ("playbooks/kubernetes.yml", *K8S_ROLE)},
}
# path -> why the project's file of that path is not the one a new repository starts with
DIFFERENT_ON_PURPOSE = {
    "playbooks/baremetal.yml": "the project converges its five host roles, a new repository one",
    **{f"inventories/{env}/hosts.yml": "the project's estate has web and db groups"
       for env in scaffold.ENVIRONMENTS},
    **{f"inventories/{env}/group_vars/baremetal.yml": "the project's sets its roles' variables"
       for env in scaffold.ENVIRONMENTS},
}


@pytest.mark.parametrize("rel", sorted(SAME_AS_PROJECT))
def test_a_file_init_shares_with_the_project_is_the_project_s_own(rel):
    written = scaffold.files({**DEFAULTS, **SAME_AS_PROJECT[rel]})[rel]
    own = (ROOT / rel).read_bytes()
    diff = "".join(difflib.unified_diff(own.decode().splitlines(True),
                                        written.decode().splitlines(True),
                                        f"project: {rel}", f"gitops_ansible/skeleton: {rel}"))
    assert written == own, f"the skeleton's {rel} has drifted from the project's:\n{diff}"


def test_every_path_init_shares_with_the_project_is_compared_or_explained():
    shared = {rel for names in (DEFAULTS, KUBERNETES) for rel in scaffold.files(names)
              if (ROOT / rel).exists()}
    assert shared == set(SAME_AS_PROJECT) | set(DIFFERENT_ON_PURPOSE)


def test_init_kubernetes_writes_the_project_s_whole_role_and_no_role_of_its_own():
    written = scaffold.files(KUBERNETES)
    assert sorted(rel for rel in written if rel.startswith("roles/")) == K8S_ROLE
    assert not [rel for rel in written if rel.startswith(("molecule/", "playbooks/local.yml"))]


def init_cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "gitops_ansible", "init", str(repo), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("args, platform, role", [
    ((), "baremetal", "baremetal_base"),
    (("--platform", "edge", "--role", "edge_node"), "edge", "edge_node"),
])
def test_init_writes_inventories_that_pass_validation(tmp_path, args, platform, role):
    repo = tmp_path / "repo"
    done = init_cli(repo, *args)
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s"], capture_output=True,
                         text=True, check=True).stdout
    assert log == "A new GitOps repository (gitops-ansible init)\n"
    assert subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True,
                          text=True, check=True).stdout == ""
    assert "gitops-ansible plan --path . --env dev" in done.stdout
    assert f"gitops-ansible run --repo file://{repo} --env dev" in done.stdout
    assert "ansible-lint && yamllint . && molecule test" in done.stdout
    # public roles read ansible_os_family & co: the platform's play gathers facts
    assert yaml.safe_load((repo / f"playbooks/{platform}.yml").read_text())[0]["gather_facts"]
    for env in scaffold.ENVIRONMENTS:  # what plan and push validate before any change
        inv = inventory.load(repo, make_settings(env=env, state_dir=str(tmp_path / "state")))
        assert inv.by_platform() == {platform: [f"host-01.{env}.example.com",
                                                f"host-02.{env}.example.com"]}
    site = yaml.safe_load((repo / "playbooks/site.yml").read_text())
    # The platforms site.yml knows are the playbooks it imports (it derives its list).
    assert [p.get("ansible.builtin.import_playbook") for p in site[1:]] == [f"{platform}.yml",
                                                                           "local.yml"]
    assert f"role_name: {role}\n" in (repo / f"roles/{role}/meta/main.yml").read_text()


def test_init_kubernetes_writes_a_cluster_target_that_passes_validation(tmp_path):
    repo = tmp_path / "repo"
    done = init_cli(repo, "--platform", "kubernetes")
    assert subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True,
                          text=True, check=True).stdout == ""
    assert "ansible-lint && yamllint .   # check the roles" in done.stdout  # no molecule
    site = yaml.safe_load((repo / "playbooks/site.yml").read_text())
    assert [p.get("ansible.builtin.import_playbook") for p in site[1:]] == ["kubernetes.yml"]
    namespace = yaml.safe_load((repo / "clusters/cluster/namespace.yaml").read_text())
    for env in scaffold.ENVIRONMENTS:
        inv = inventory.load(repo, make_settings(env=env, state_dir=str(tmp_path / "state")))
        assert inv.by_platform() == {"kubernetes": ["cluster"]}
        assert not inv.targets["cluster"].is_ssh  # the playbook's connection: local
        assert inv.file_dirs == {"cluster": ["clusters/cluster"]}  # the role's default
        hosts = (repo / f"inventories/{env}/hosts.yml").read_text()
        cluster = yaml.safe_load(hosts)["all"]["children"]["kubernetes"]["hosts"]["cluster"]
        assert cluster == {"k8s_namespace": namespace["metadata"]["name"]}
        assert f"# k8s_context: {env}\n" in hosts


def test_init_kubernetes_writes_a_kustomization_that_builds(tmp_path):
    """The cluster's kustomization lists files that exist and sets no namespace, so that
    the Deployment and the Service come out without one (the target's k8s_namespace)."""
    repo = tmp_path / "repo"
    scaffold.init(repo, "kubernetes")
    cluster = repo / "clusters/cluster"
    kustomization = yaml.safe_load((cluster / "kustomization.yaml").read_text())
    assert "namespace" not in kustomization
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in cluster.iterdir() if p.name != "kustomization.yaml")
    require(kubectl_path() is not None, "kubectl is not installed")
    built = subprocess.run([kubectl_path(), "kustomize", str(cluster)], capture_output=True,
                           text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
               for o in yaml.safe_load_all(built.stdout)}
    assert objects == {("Namespace", "hello", None), ("Deployment", "hello", None),
                       ("Service", "hello", None)}


@pytest.mark.parametrize("platform, role, message", [
    ("Edge", None, "platform name 'Edge': expected lowercase letters"),
    ("edge", "9lives", "role name '9lives': expected lowercase letters"),
    ("edge", "a" * 41, "at most 40 characters"),
    ("yes", None, "platform name 'yes': YAML reads it as True"),
    ("edge", "null", "role name 'null': YAML reads it as None"),
    ("local", None, "platform name 'local' is taken: the built-in platform"),
    ("site", None, "platform name 'site' is taken: playbooks/site.yml"),
    ("all", None, "platform name 'all' is taken: a group Ansible defines"),
    ("kubernetes", "k8s_base", "role name 'k8s_base': the platform kubernetes applies this "
                               "project's role k8s_manifests"),
])
def test_init_refuses_a_bad_name_before_writing(tmp_path, platform, role, message):
    with pytest.raises(scaffold.ScaffoldError, match=message):
        scaffold.init(tmp_path / "repo", platform, role)
    assert not (tmp_path / "repo").exists()


def test_init_does_not_write_through_a_link_out_of_the_directory(tmp_path):
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    (repo / "playbooks").symlink_to(elsewhere)
    with pytest.raises(scaffold.ScaffoldError, match="playbooks/.*leads outside"):
        scaffold.init(repo, force=True)
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in repo.iterdir()) == ["playbooks"]


def test_init_refuses_a_file_where_it_needs_a_directory(tmp_path):
    (tmp_path / "roles").write_text("mine\n")
    with pytest.raises(scaffold.ScaffoldError, match="roles is not a directory"):
        scaffold.init(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roles"]


def git_log(repo: Path) -> list[str]:
    return subprocess.run(["git", "-C", str(repo), "log", "--format=%an <%ae> %s"],
                          capture_output=True, text=True, check=True).stdout.splitlines()


def test_init_commits_with_its_own_identity_where_git_has_none(tmp_path, monkeypatch):
    for name in ("only-a-name", "none"):
        config = tmp_path / f"{name}.gitconfig"  # a user's global Git settings
        config.write_text("[user]\n\tname = Ada\n" if name == "only-a-name" else "")
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
        monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        repo = tmp_path / name
        revision = scaffold.commit(repo, scaffold.init(repo))
        author = "Ada <init@gitops-ansible>" if name == "only-a-name" else \
            "gitops-ansible init <init@gitops-ansible>"
        assert git_log(repo) == [f"{author} A new GitOps repository (gitops-ansible init)"]
        assert revision and len(revision) == 40


def test_init_inside_a_repository_writes_and_leaves_the_commit_to_its_owner(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    repo = tmp_path / "estate"
    assert scaffold.commit(repo, scaffold.init(repo)) is None
    assert (repo / "playbooks/site.yml").is_file()
    assert subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
                          capture_output=True).returncode != 0, "init made a commit"
