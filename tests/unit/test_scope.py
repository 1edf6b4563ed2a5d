"""Which targets a new revision affects (scope.py), on inventories built by hand as
``inventory.load`` gives them: no Ansible run, no Git. ``compute`` reads the repository
through two callbacks (the diff from a base, the hosts at a base); ``Repo`` answers them
from a table and counts what was asked."""
from pathlib import Path

import pytest

from gitops_ansible import scope
from gitops_ansible.config import Settings
from gitops_ansible.inventory import HostView, Inventory, Play, Target
from gitops_ansible.problems import Problem, Refused
from gitops_ansible.store import HostRevision

SETTINGS = Settings(env="prod")  # inventories/prod, entry playbooks/site.yml
NEW, OLD, OLDER = "c" * 40, "a" * 40, "b" * 40
BAREMETAL, VM, K8S = "playbooks/baremetal.yml", "playbooks/vm.yml", "playbooks/kubernetes.yml"


def view(*groups: str, digest: str = "v1", platform: str = "baremetal") -> HostView:
    return HostView(frozenset(groups), digest, platform)


VIEWS = {
    "web-1": view("web", "baremetal"),
    "web-2": view("web", "web_eu", "baremetal"),  # web_eu: a child group of web
    "db-1": view("db", "baremetal"),
    "vm-1": view("vms", platform="vm"),
    "k8s-a": view("clusters", platform="kubernetes"),
}
PLAYS = [  # roles: the closure, as inventory.load gives it (common: a dependency role)
    Play(BAREMETAL, f"{BAREMETAL} play 1", frozenset({"web-1", "web-2"}),
         ("roles/nginx", "roles/common")),
    Play(BAREMETAL, f"{BAREMETAL} play 2", frozenset({"db-1"}), ("roles/postgres", "roles/common")),
    Play(VM, f"{VM} play 1", frozenset({"vm-1"}), ("roles/vm",)),
    Play(K8S, f"{K8S} play 1", frozenset({"k8s-a"}), ("roles/k8s_manifests",)),
]
PLAYBOOKS = {"playbooks/site.yml": [BAREMETAL, VM, K8S],
             BAREMETAL: ["playbooks/baremetal-users.yml"]}
FILE_DIRS = {"k8s-a": ["bases/common", "clusters/k8s-a"]}


def inventory(views: dict[str, HostView] | None = None, plays: list[Play] | None = None,
              file_dirs: dict[str, list[str]] | None = None) -> Inventory:
    views = VIEWS if views is None else views
    return Inventory("prod", Path("inventories/prod"),
                     {h: Target(h, v.platform) for h, v in views.items()}, set(), views,
                     PLAYS if plays is None else plays,
                     FILE_DIRS if file_dirs is None else file_dirs, PLAYBOOKS,
                     file_roots=("clusters",))  # k8s_manifests' default: clusters/HOST


def of_base(*paths: str, base: dict[str, HostView] | None = None,
            inv: Inventory | None = None) -> tuple[str | None, dict[str, str]]:
    """(why full, host -> reason) for a diff touching ``paths``; the base: the same hosts."""
    return scope.of_base(inv or inventory(), VIEWS if base is None else base, list(paths),
                         SETTINGS)


def affected(*paths: str, **kwargs) -> dict[str, str]:
    """The hosts ``paths`` affect, for a diff that does not make the run full."""
    full, hosts = of_base(*paths, **kwargs)
    assert full is None
    return hosts


def changed(name: str, **fields) -> dict[str, HostView]:
    """VIEWS with host ``name`` as it was at a base (its groups or digest different)."""
    was = VIEWS[name]
    return {**VIEWS, name: HostView(fields.get("groups", was.groups),
                                    fields.get("digest", was.digest), was.platform)}


class Repo:
    """The repository as ``compute`` reads it: the paths each base's diff touches (absent:
    the base is not in the repository) and the hosts at each base (absent: VIEWS; a
    ``Refused``: raised)."""

    def __init__(self, diffs: dict[str, list[str]], bases: dict | None = None):
        self.diffs, self.bases = diffs, bases or {}
        self.diffed: list[str] = []
        self.read: list[str] = []

    def changes(self, base: str) -> list[str] | None:
        self.diffed.append(base)
        return self.diffs.get(base)

    def views_at(self, base: str) -> dict[str, HostView]:
        self.read.append(base)
        found = self.bases.get(base, VIEWS)
        if isinstance(found, Refused):
            raise found
        return found

    def compute(self, records: dict, selected: list[str] | None = None) -> scope.Scope:
        return scope.compute(inventory(), SETTINGS, NEW, records, self.changes, self.views_at,
                             selected)


def at(revision: str | None, *others: HostRevision) -> dict[str, HostRevision]:
    """Every target recorded at ``revision``, but for the ``others`` records."""
    records = {h: HostRevision(h, revision) for h in VIEWS}
    records.update({r.host: r for r in others})
    return records


# The inventory


@pytest.mark.parametrize("path", ["inventories/prod/host_vars/web-1.yml",
                                  "inventories/prod/host_vars/web-1/vault.yml"])
def test_host_vars_affect_that_host_only(path):
    assert affected(path) == {"web-1": path}


def test_host_vars_of_a_host_not_in_the_inventory_affect_nothing():
    assert affected("inventories/prod/host_vars/old-9.yml") == {}


@pytest.mark.parametrize("path", ["inventories/prod/group_vars/web.yml",
                                  "inventories/prod/group_vars/web/main.yml"])
def test_group_vars_affect_the_groups_hosts_now_and_at_the_base(path):
    base = changed("db-1", groups=frozenset({"db", "web", "baremetal"}))  # db-1 left web
    hosts = affected(path, base=base)
    assert set(hosts) == {"web-1", "web-2", "db-1"}
    assert all(path in why for why in hosts.values())


def test_group_vars_of_a_parent_group_affect_the_hosts_of_its_children():
    assert set(affected("inventories/prod/group_vars/web_eu.yml")) == {"web-2"}
    assert "web-2" in affected("inventories/prod/group_vars/web.yml")


def test_group_vars_all_affect_every_target():
    assert set(affected("inventories/prod/group_vars/all/vault.yml")) == set(VIEWS)


def test_group_vars_of_a_platform_group_affect_that_platforms_targets():
    """platform_NAME: the group the entry playbook puts each target of NAME in."""
    assert set(affected("inventories/prod/group_vars/platform_vm.yml")) == {"vm-1"}


def test_group_vars_of_a_group_no_host_is_in_make_the_run_full():
    """A group made at run time (group_by): which hosts it holds is not known."""
    full, hosts = of_base("inventories/prod/group_vars/runtime_made.yml")
    assert "inventories/prod/group_vars/runtime_made.yml" in full and hosts == {}


def test_a_file_in_a_subdirectory_of_the_inventory_makes_the_run_full():
    full, hosts = of_base("inventories/prod/files/motd.txt")
    assert "inventories/prod/files/motd.txt" in full and hosts == {}


def test_group_vars_ungrouped_affect_the_hosts_in_no_group():
    """Ansible applies group_vars/ungrouped.yml to a host of no other group; its view has
    no groups (inventory._view drops all and ungrouped)."""
    views = {**VIEWS, "lone-1": view()}
    hosts = affected("inventories/prod/group_vars/ungrouped.yml", inv=inventory(views), base=views)
    assert set(hosts) == {"lone-1"}


def test_an_inventory_file_affects_the_hosts_whose_groups_or_variables_changed():
    views = {**VIEWS, "web-3": view("web", "baremetal")}
    base = {**changed("web-2", groups=frozenset({"web", "baremetal"})),
            "db-1": view("db", "baremetal", digest="v0"), "gone-1": view("web", "baremetal")}
    hosts = affected("inventories/prod/hosts.yml", inv=inventory(views), base=base)
    assert hosts == {"web-2": "inventories/prod/hosts.yml: its groups changed",
                     "db-1": "inventories/prod/hosts.yml: its variables changed",
                     "web-3": "inventories/prod/hosts.yml: added to the inventory"}


def test_a_host_only_in_the_base_is_reported_as_left_and_not_run():
    base = {**VIEWS, "gone-1": view("web", "baremetal")}
    repo = Repo({OLD: ["inventories/prod/hosts.yml"]}, {OLD: base})
    records = {h: HostRevision(h, OLD) for h in base}
    found = repo.compute(records)
    assert found.left == ["gone-1"]
    assert found.hosts == {}
    assert sorted(found.unchanged) == sorted(VIEWS)


# Files no run of this environment reads


@pytest.mark.parametrize("path", [
    "inventories/staging/host_vars/web-1.yml", "inventories/staging/hosts.yml",
    "inventories/prod/README.md",
    "README.md", "docs/scope.md", "roles/nginx/molecule/default/converge.yml",
    "roles/nginx/README.md", "roles/nginx/tests/test.yml", "tests/unit/test_x.py",
])
def test_files_no_run_reads_affect_nothing(path):
    assert of_base(path) == (None, {})


# Roles


def test_a_role_file_affects_the_hosts_of_the_plays_applying_it():
    path = "roles/nginx/templates/nginx.conf.j2"
    assert affected(path) == {h: f"{path}: {BAREMETAL} play 1 applies role nginx"
                              for h in ("web-1", "web-2")}


def test_a_dependency_role_affects_every_play_it_is_applied_by():
    hosts = affected("roles/common/templates/motd.j2")
    assert set(hosts) == {"web-1", "web-2", "db-1"}
    assert f"{BAREMETAL} play 2 applies role common" in hosts["db-1"]


def test_a_role_no_play_applies_affects_nothing():
    assert affected("roles/unused/tasks/main.yml") == {}


def test_a_play_naming_a_role_by_a_template_runs_on_any_role_change():
    plays = PLAYS[:2] + [Play(VM, f"{VM} play 1", frozenset({"vm-1"}), ("roles/vm",),
                              templated_role=True)]
    hosts = affected("roles/unused/tasks/main.yml", inv=inventory(plays=plays))
    assert hosts == {"vm-1": f"roles/unused/tasks/main.yml: {VM} play 1 names a role by a "
                             "template"}
    assert affected("inventories/prod/host_vars/db-1.yml", inv=inventory(plays=plays)) == {
        "db-1": "inventories/prod/host_vars/db-1.yml"}


# Playbooks and file-check directories


def test_a_platform_playbook_affects_that_platforms_hosts():
    hosts = affected(VM)
    assert hosts == {"vm-1": f"{VM}: the playbook of its platform"}


def test_the_playbook_of_a_platform_with_no_target_here_affects_nothing():
    baremetal = {h: v for h, v in VIEWS.items() if v.platform == "baremetal"}
    vm_play = Play(VM, f"{VM} play 1", frozenset(), ("roles/vm",))
    inv = inventory(baremetal, PLAYS[:2] + [vm_play], file_dirs={})
    assert of_base(VM, inv=inv, base=baremetal) == (None, {})


def test_a_playbook_a_platform_imports_affects_that_platforms_hosts():
    assert set(affected("playbooks/baremetal-users.yml")) == {"web-1", "web-2", "db-1"}


def test_a_platform_playbook_leaves_the_entry_playbooks_own_play_out():
    """The entry playbook's own play (a role it applies to every target) imports no file
    of a platform: a change to vm.yml is the VM platform's only."""
    own = Play("playbooks/site.yml", "playbooks/site.yml", frozenset(VIEWS), ("roles/base",))
    assert set(affected(VM, inv=inventory(plays=PLAYS + [own]))) == {"vm-1"}


def test_a_file_of_a_targets_directory_affects_that_target():
    path = "clusters/k8s-a/apps/web.yaml"
    hosts = affected(path)
    assert set(hosts) == {"k8s-a"}
    assert path in hosts["k8s-a"]
    assert set(affected("bases/common/namespace.yaml")) == {"k8s-a"}


def test_a_clusters_directory_of_no_target_affects_nothing():
    assert affected("clusters/k8s-staging/apps/web.yaml") == {}


def test_a_clusters_directory_affects_nothing_in_an_environment_without_clusters():
    """docs/scope.md: a file under a directory such as clusters/ that no target of the
    environment lists belongs to another environment's target."""
    baremetal = {h: v for h, v in VIEWS.items() if v.platform == "baremetal"}
    inv = inventory(baremetal, PLAYS[:2], file_dirs={})
    assert of_base("clusters/k8s-staging/apps/web.yaml", inv=inv, base=baremetal) == (None, {})


# Everything else: every target


@pytest.mark.parametrize("path", [
    "ansible.cfg", "playbooks/site.yml", "roles/requirements.yml",
    "collections/requirements.yml", "library/x.py", "roles/nginx/library/x.py",
    "filter_plugins/x.py", "roles/k8s_manifests/filter_plugins/k8s.py", "Makefile",
])
def test_a_file_any_play_may_use_makes_the_run_full(path):
    full, hosts = of_base("inventories/prod/host_vars/web-1.yml", path)
    assert full and path in full
    assert hosts == {}


# Plays that read other hosts' variables


def reading_play() -> Inventory:
    """PLAYS with play 1 reading other hosts' variables (a load balancer's upstreams)."""
    first = Play(BAREMETAL, f"{BAREMETAL} play 1", frozenset({"web-1", "web-2"}),
                 ("roles/nginx", "roles/common"),
                 reads_others="roles/nginx/templates/upstreams.j2")
    return inventory(plays=[first] + PLAYS[1:])


def test_a_play_reading_other_hosts_runs_when_a_hosts_variables_changed():
    path = "inventories/prod/host_vars/db-1.yml"
    hosts = affected(path, inv=reading_play(), base=changed("db-1", digest="v0"))
    assert set(hosts) == {"db-1", "web-1", "web-2"}
    assert "roles/nginx/templates/upstreams.j2" in hosts["web-1"]
    assert "db-1 changed" in hosts["web-1"]


def test_a_play_reading_other_hosts_does_not_run_when_no_host_changed():
    path = "inventories/prod/host_vars/db-1.yml"  # a comment: the same variables
    assert set(affected(path, inv=reading_play())) == {"db-1"}


# compute: each target against its own base


@pytest.mark.parametrize("records", [{}, at(NEW, HostRevision("db-1", None))],
                         ids=["no record", "no revision"])
def test_a_target_with_no_clean_revision_is_in_scope(records):
    found = Repo({}).compute(records)
    assert "no clean revision recorded" in found.hosts["db-1"]


def test_a_target_whose_last_run_failed_is_in_scope():
    records = at(NEW, HostRevision("db-1", NEW, failed_run="20261201T101010"))
    found = Repo({}).compute(records)
    assert found.hosts == {"db-1": "not clean since run 20261201T101010"}


def test_a_target_at_the_new_revision_is_unchanged_without_a_diff():
    repo = Repo({})
    found = repo.compute(at(NEW, HostRevision("web-1", OLD)))
    assert list(found.hosts) == ["web-1"] and "web-1" not in found.unchanged
    assert sorted(found.unchanged) == sorted(set(VIEWS) - {"web-1"})
    assert repo.diffed == [OLD]  # one diff, from web-1's base only


def test_every_target_at_the_revision_runs_again_in_full():
    """A push or plan of the revision in place: what ansible-playbook would do."""
    repo = Repo({})
    found = repo.compute(at(NEW))
    assert "clean at" in found.full and "already" in found.full and repo.diffed == []


def test_a_target_whose_revision_is_not_in_the_repository_is_in_scope():
    found = Repo({}).compute(at(NEW, HostRevision("web-1", OLD)))
    assert list(found.hosts) == ["web-1"]
    assert "not in the repository" in found.hosts["web-1"]


def test_a_target_whose_base_inventory_cannot_be_read_is_in_scope():
    refused = Refused([Problem("inventories/prod/hosts.yml", 3, "not YAML")])
    repo = Repo({OLD: ["inventories/prod/host_vars/web-1.yml"]}, {OLD: refused})
    found = repo.compute(at(NEW, HostRevision("web-2", OLD), HostRevision("db-1", OLD)))
    assert set(found.hosts) == {"web-2", "db-1"}
    assert "inventories/prod/hosts.yml:3: not YAML" in found.hosts["db-1"]


def test_every_target_in_scope_makes_the_run_full():
    found = Repo({OLD: ["ansible.cfg"]}).compute(at(OLD))
    assert found.full == "ansible.cfg changed"
    assert set(found.hosts) == set(VIEWS) and found.unchanged == []


def test_the_limit_narrows_the_scope_to_the_selected_hosts():
    repo = Repo({OLD: ["roles/nginx/tasks/main.yml"]})
    found = repo.compute(at(OLD), selected=["web-1", "db-1"])
    assert (found.full, list(found.hosts), found.unchanged) == (None, ["web-1"], ["db-1"])


def test_targets_at_different_bases_each_get_their_own_diff():
    repo = Repo({OLD: ["inventories/prod/host_vars/web-1.yml"],
                 OLDER: ["inventories/prod/host_vars/web-2.yml"]})
    found = repo.compute(at(OLD, HostRevision("web-2", OLDER), HostRevision("vm-1", OLDER)))
    assert set(found.hosts) == {"web-1", "web-2"}
    assert sorted(found.unchanged) == ["db-1", "k8s-a", "vm-1"]
    assert sorted(repo.diffed) == [OLD, OLDER] and sorted(repo.read) == [OLD, OLDER]
