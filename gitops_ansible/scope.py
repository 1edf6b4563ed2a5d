"""Which targets a new revision affects: a change-scoped run converges only those.

Each target's last clean revision is in the store (``Store.host_revisions``). The scope
of a new revision is, per target, what the Git diff between that target's revision and
the new one touches, read against the inventory at both revisions:

- ``host_vars/H`` -> H; ``group_vars/G`` -> the hosts of G and its child groups, at either
  revision; another file of the inventory -> the hosts whose groups or variables changed
  (hosts that left are reported, not run);
- a file of a role -> the targets of every play that applies it (``roles:``, static
  ``include_role``/``import_role``, ``meta/main.yml`` dependencies, transitively);
- a platform's playbook (or one it imports) -> the targets of that platform;
- a file under a directory a role's file checks list for a target (``clusters/T/``, the
  bases T lists in ``k8s_manifests_dirs``) -> that target;
- files a run never reads (``*.md`` at the top, ``docs/``, ``tests/``, ``molecule/``, a
  role's ``molecule/`` and ``tests/``, another environment's inventory) -> nothing;
- anything else -> every target, with the reason: ``ansible.cfg``, plugins, ``library/``,
  ``module_utils/``, requirements, the entry playbook, a file no rule above knows.

A target with no clean revision recorded (its first converge, a failed last run, a base
that is not in the repository: a force-push that was collected, a shallow clone) is in
the scope whatever the diff. A play that reads other hosts' variables (``hostvars``,
``groups``, ``ansible_play_hosts``) converges all its targets when any host's groups or
variables changed; a play that names a role by a template, all its targets on any change
to a role.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .inventory import HostView, Inventory

# Directories and files of a repository that no run reads.
IGNORED_DIRS = ("docs", "tests", "molecule", ".github", ".gitlab")
IGNORED_FILES = (".gitignore", ".gitattributes", ".gitlab-ci.yml", ".ansible-lint",
                 ".yamllint", ".pre-commit-config.yaml")
ROLE_IGNORED = ("molecule", "tests")
# A role's subdirectories whose content Ansible may use beyond the role's own plays.
ROLE_PLUGINS = ("library", "module_utils")


@dataclass
class Scope:
    """The targets a run converges: ``full`` (why every target runs) or ``hosts`` (target
    -> why it runs); ``unchanged``: the others, recorded at the new revision without a run;
    ``left``: hosts of a base revision that are no longer in the inventory."""
    full: str | None = None
    hosts: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"full": self.full, "hosts": dict(sorted(self.hosts.items())),
                "unchanged": sorted(self.unchanged), "left": sorted(self.left)}

    def summary(self, total: int) -> str:
        if self.full:
            return f"scope: every target ({self.full})"
        if not self.hosts:
            return f"scope: no target of {total} is affected"
        return (f"scope: {len(self.hosts)} of {total} targets; "
                + "; ".join(f"{h}: {why}" for h, why in sorted(self.hosts.items())))


@dataclass
class _Rules:
    """The rules, for one environment at the new revision and one base revision."""
    inventory: Inventory
    base: dict[str, HostView]
    inventory_dir: str
    env: str
    entry: str  # the entry playbook, relative to the checkout

    def full(self, path: str) -> str | None:
        """Why ``path`` makes the run full (None: the other rules know it)."""
        parts = path.split("/")
        if path == "ansible.cfg":
            return "ansible.cfg changed"
        if path == self.entry:
            return f"the entry playbook {path} changed"
        if parts[-1] in ("requirements.yml", "requirements.yaml") and len(parts) <= 2:
            return f"requirements changed ({path})"
        if any(p in ROLE_PLUGINS or p.endswith("_plugins") or p == "plugins" for p in parts[:-1]):
            return f"{path}: a module or plugin, usable by any play"
        return None

    def affected(self, path: str) -> dict[str, str] | None:
        """The targets ``path`` affects (host -> reason), or None: a rule does not know it."""
        parts = path.split("/")
        if _ignored(parts):
            return {}
        for rule in (self._inventory, self._file_dirs, self._role, self._playbook):
            found = rule(path, parts)
            if found is not None:
                return found
        return None

    def _inventory(self, path: str, parts: list[str]) -> dict[str, str] | None:
        base = self.inventory_dir.strip("/").split("/")
        if parts[:len(base)] != base or len(parts) <= len(base) + 1:
            return None
        if parts[len(base)] != self.env:
            return {}  # another environment's inventory
        rest = parts[len(base) + 1:]
        new, old = self.inventory.views, self.base
        if rest[0] == "host_vars" and len(rest) > 1:
            host = _stem(rest[1])
            return {host: path} if host in new else {}
        if rest[0] == "group_vars" and len(rest) > 1:
            group = _stem(rest[1])
            found = {h: path for h, view in new.items() if _member(group, view)
                     or (h in old and _member(group, old[h]))}
            # no host is in it: a group made at run time (group_by), or one that is gone
            return found if found or any(group in v.groups for v in old.values()) else None
        if len(rest) > 1:  # a subdirectory: data a play may read as well as inventory
            return None
        if rest[0].endswith(".md"):
            return {}
        return {h: f"{path}: {why}" for h, why in self.changed_hosts.items()}

    @functools.cached_property
    def changed_hosts(self) -> dict[str, str]:
        """Targets whose groups or variables differ at the base revision (new ones too)."""
        out = {}
        for host, view in self.inventory.views.items():
            was = self.base.get(host)
            if was is None:
                out[host] = "added to the inventory"
            elif was.groups != view.groups:
                out[host] = "its groups changed"
            elif was.digest != view.digest:
                out[host] = "its variables changed"
        return out

    @functools.cached_property
    def _tops(self) -> set[str]:
        """The top directories of the file checks: the defaults' and every target's."""
        return set(self.inventory.file_roots) | {
            directory.split("/")[0] for dirs in self.inventory.file_dirs.values()
            for directory in dirs}

    def _file_dirs(self, path: str, parts: list[str]) -> dict[str, str] | None:
        found = {}
        for host, dirs in self.inventory.file_dirs.items():
            for directory in dirs:
                if path == directory or path.startswith(directory + "/"):
                    found[host] = f"{path}: a directory of its files ({directory}/)"
        if found or parts[0] in self._tops:
            return found  # another target's directory, of another environment
        return None

    def _role(self, path: str, parts: list[str]) -> dict[str, str] | None:
        found = {}
        for play in self.inventory.plays:
            role = next((r for r in play.roles if path.startswith(r + "/")), None)
            if role:
                for host in play.hosts:
                    found.setdefault(host, f"{path}: {play.name} applies {_name(role)}")
        in_roles = len(parts) > 2 and "roles" in parts[:-2]
        if in_roles:
            for play in self.inventory.plays:
                if play.templated_role:
                    for host in play.hosts:
                        found.setdefault(host, f"{path}: {play.name} names a role by a template")
        return found if found or in_roles else None

    def _playbook(self, path: str, parts: list[str]) -> dict[str, str] | None:
        found, known = {}, False
        for play in self.inventory.plays:
            # the entry playbook's own plays: its change is full already, and it imports
            # every platform's playbook
            if play.playbook != self.entry and path in self._imported(play.playbook):
                known = True
                platform = _stem(play.playbook.split("/")[-1])
                for host in play.hosts | {h for h, v in self.inventory.views.items()
                                          if v.platform == platform}:
                    found.setdefault(host, f"{path}: the playbook of its platform")
        return found if known else None

    def _imported(self, playbook: str) -> set[str]:
        seen, todo = set(), [playbook]
        while todo:
            current = os.path.normpath(todo.pop())
            if current not in seen:
                seen.add(current)
                todo += self.inventory.playbooks.get(current, [])
        return seen


def _ignored(parts: list[str]) -> bool:
    if len(parts) == 1:
        name = parts[0]
        return name.endswith(".md") or name in IGNORED_FILES or name.startswith(
            ("LICENSE", "COPYING"))
    if parts[0] in IGNORED_DIRS:
        return True
    if "roles" in parts[:-2]:  # roles/R/...: a role's tests, scenarios and README
        rest = parts[parts.index("roles") + 2:]
        return rest[0] in ROLE_IGNORED or (len(rest) == 1 and rest[0].endswith(".md"))
    return False


def _member(group: str, view: HostView) -> bool:
    """A host is in ``group``: ``all``, an inventory group (or a child's), or the group of
    its platform that the entry playbook makes (``platform_NAME``, whose group_vars Ansible
    applies too)."""
    return (group == "all" or group in view.groups or group == f"platform_{view.platform}"
            or (group == "ungrouped" and not view.groups))


def _stem(name: str) -> str:
    for suffix in (".yml", ".yaml", ".json"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _name(role_dir: str) -> str:
    return f"role {role_dir.rstrip('/').split('/')[-1]}"


def of_base(inventory: Inventory, base: dict[str, HostView], paths: list[str],
            settings) -> tuple[str | None, dict[str, str]]:
    """(why the run is full, or None; the targets ``paths`` affect) for one base."""
    rules = _Rules(inventory, base, settings.inventory_dir, settings.env,
                   os.path.normpath(settings.playbook))
    found: dict[str, str] = {}
    for path in paths:
        why = rules.full(path)
        if why:
            return why, {}
        hosts = rules.affected(path)
        if hosts is None:
            return f"{path}: not known to affect particular targets", {}
        for host, reason in hosts.items():
            found.setdefault(host, reason)
    changed = rules.changed_hosts
    if changed or set(base) - set(inventory.views):
        first = next(iter(sorted(changed)), None) or sorted(set(base) - set(inventory.views))[0]
        for play in inventory.plays:
            if play.reads_others:
                for host in play.hosts:
                    found.setdefault(host, f"{play.name} reads other hosts' variables "
                                     f"({play.reads_others}) and {first} changed")
    return None, {h: why for h, why in found.items() if h in inventory.views}


def compute(inventory: Inventory, settings, revision: str, records: dict,
            changes: Callable[[str], list[str] | None],
            views_at: Callable[[str], dict[str, HostView]],
            selected: list[str] | None = None) -> Scope:
    """The scope of ``revision``: ``records`` (host -> HostRevision) says where each target
    is; ``changes(base)`` gives the paths the diff from ``base`` touches (None: ``base`` is
    not in the repository); ``views_at(base)`` the hosts at ``base`` (``Refused``: it
    cannot be read); ``selected``: the hosts --limit selects (None: every target)."""
    from .problems import Refused

    bases: dict[str, tuple[str | None, dict[str, str]]] = {}
    scope, fulls = Scope(), []
    targets = sorted(selected if selected is not None else inventory.views)
    left = sorted(set(records) - set(inventory.views))
    if targets and all(records.get(h) and records[h].revision == revision
                       and not records[h].failed_run for h in targets):
        # nothing new: a push or a plan of the revision in place converges or checks
        # again what it says, as ansible-playbook would (a pull cycle stops before this)
        return Scope(f"every target is clean at {revision[:12]} already: run again in full",
                     left=left)
    for host in targets:
        record = records.get(host)
        if record is not None and record.failed_run:
            why = f"not clean since run {record.failed_run}"
        elif record is None or record.revision is None:
            why = "no clean revision recorded for it"
        elif record.revision == revision:
            why = None
        else:
            base = record.revision
            if base not in bases:
                paths = changes(base)
                if paths is None:
                    bases[base] = (f"its revision {base[:12]} is not in the repository", {})
                else:
                    try:
                        bases[base] = of_base(inventory, views_at(base), paths, settings)
                    except Refused as exc:
                        bases[base] = (f"the inventory at {base[:12]} cannot be read: "
                                       f"{exc.problems[0]}", {})
            full, hosts = bases[base]
            why = full or hosts.get(host)
            if full:
                fulls.append(full)
        if why:
            scope.hosts[host] = why
        else:
            scope.unchanged.append(host)
    scope.left = left
    if targets and not scope.unchanged:
        scope.full = fulls[0] if fulls else "every target is affected"
    return scope
