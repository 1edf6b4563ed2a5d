"""Environments: load one environment's inventory, classify targets by platform, validate.

Everything here happens before any target is touched. A problem is reported with the
file and line it comes from; ``Refused`` carries all problems found, not just the first.

The order: the checkout is a boundary (``boundary``: the inventory, playbook and roles
directories and every link in them resolve inside it), then every YAML file Ansible will
read is parsed once (``yamlscan``: duplicate keys, alias expansion, tags, vault data) and
served to Ansible's own inventory load from that parse, then what the run executes is
walked (``fqcn``: the roles each platform applies, found where Ansible finds them, and the
modules, lookups and collection roles named by a fully qualified name, resolved in the
installed collections), then the platforms and their roles are checked against the hosts'
variables, and --limit and --tags against what they select.

The platform contract (what the orchestrator reads of a platform; nothing else of a
platform is known to the Python here):

- A platform is a playbook the entry playbook imports (``import_playbook: vm.yml`` makes
  ``vm`` a platform); its plays converge the group ``platform_<name>``.
- Its plays that target that group decide two facts of the SSH pre-flight: when every one
  of them has ``connection: local``, its targets are never SSH hosts; when one of them sets
  the play variable ``gitops_created_by_run: true``, the run makes its targets exist (VMs)
  and the pre-flight leaves them out.
- The roles it applies (``roles:``, ``import_role``/``include_role`` with a literal name,
  their ``meta/main.yml`` dependencies; a Galaxy-style ``author.role`` like any other) must
  exist: in ``roles/``, the installed roles paths (``SearchPaths.roles``: read outside the
  checkout, without its boundary) or, for ``ns.collection.role``, an installed collection.
  Each role's argument specs (``meta/argument_specs.yml``, else ``meta/main.yml``; entry
  point ``main``) say which variables every target must set (``required`` without
  ``default``) and the types of those a target sets (checked with Ansible's own type
  converters).
- Each role's ``meta/gitops.yml`` may declare file checks run for every target of the
  platform (see ``_FILE_CHECK_KEYS``): an inventory variable listing directories (its
  default is the role's ``defaults/main.yml``), whose YAML files must hold mappings with
  the keys named.
"""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .boundary import checkout_files, files_inside, follow_refs, within
from .fqcn import Collections, RoleRef, Walk, entry_file
from .problems import Problem, Refused, first_line, refuse, relative
from .requirements import SearchPaths
from .yamlscan import (YAML_ERRORS, Loader, Scan, kind_of, read_vault_password, scan_files,
                       templated, vault_lib, yaml_problem)


CONNECTION_VARS = ("ansible_connection", "ansible_host", "ansible_port", "ansible_user",
                   "ansible_ssh_private_key_file", "ansible_ssh_common_args",
                   "ansible_ssh_extra_args")


@dataclass
class Target:
    name: str
    platform: str
    vars: dict = field(default_factory=dict)  # connection variables only
    created_by_run: bool = False  # its platform makes it exist (VMs): no SSH pre-flight

    @property
    def is_ssh(self) -> bool:
        return self.vars.get("ansible_connection", "ssh") in ("ssh", "paramiko", "smart")


@dataclass(frozen=True)
class HostView:
    """What a change-scoped run compares of a host at two revisions (scope.py): its groups
    (their ancestors included) and a digest of its variables (Ansible's magic variables
    left out; the digest keeps decrypted vault values out of memory and logs)."""
    groups: frozenset[str]
    digest: str
    platform: str = ""


@dataclass(frozen=True)
class Play:
    """A play the run executes, as a change-scoped run needs it: its playbook, the
    targets it selects, the directories of the roles it applies (theirs included), whether
    it names a role by a template, and whether it reads other hosts' variables."""
    playbook: str
    name: str
    hosts: frozenset[str]
    roles: tuple[str, ...]
    templated_role: bool = False
    reads_others: str | None = None  # the file that reads hostvars, groups, ...
    together: str | None = None  # file:line of a run_once, serial or delegate_to


@dataclass
class Inventory:
    env: str
    path: Path
    targets: dict[str, Target]
    secrets: set[str]
    views: dict[str, HostView] = field(default_factory=dict)
    plays: list[Play] = field(default_factory=list)
    # host -> the directories its roles' file checks list (clusters/T/, bases)
    file_dirs: dict[str, list[str]] = field(default_factory=dict)
    playbooks: dict[str, list[str]] = field(default_factory=dict)  # playbook -> imports
    limited: list[str] | None = None  # the hosts --limit selects (None: no --limit)
    # the top directories of the roles' file checks by default (clusters/), targets or not
    file_roots: tuple[str, ...] = ()

    def by_platform(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for target in self.targets.values():
            groups.setdefault(target.platform, []).append(target.name)
        return {name: sorted(hosts) for name, hosts in sorted(groups.items())}


def environments(checkout: Path, inventory_dir: str) -> list[str]:
    base = checkout / inventory_dir
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def _environment(checkout: Path, root: Path, settings) -> Path:
    """The environment's inventory directory, inside the checkout, or ``Refused``."""
    inv_rel, env = settings.inventory_dir, settings.env
    refuse(within(checkout / inv_rel, checkout, root, "the inventory directory"))
    inv_path = checkout / inv_rel / env
    if not inv_path.is_dir():
        known = ", ".join(environments(checkout, inv_rel)) or "none"
        raise Refused([Problem(f"{inv_rel}/{env}", None,
                               f"environment '{env}' does not exist (environments: {known})")])
    refuse(within(inv_path, checkout, root, f"environment '{env}'"))
    return inv_path


def _line_of(path: Path, needle: str) -> int | None:
    try:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if needle in line:
                return number
    except (OSError, UnicodeDecodeError):
        pass
    return None


# --- Platforms: what the orchestrator reads of them (the contract above) ----------------

@dataclass
class Platform:
    name: str
    playbook: Path
    # per play: its hosts pattern (None: every host of the platform) and the roles it
    # applies, found or not
    plays: list[tuple[str | None, list[RoleRef]]] = field(default_factory=list)
    local: bool = False  # every play on its group has connection: local
    created_by_run: bool = False  # a play on its group sets gitops_created_by_run: true

    @property
    def roles(self) -> list[RoleRef]:
        return [role for _, refs in self.plays for role in refs]


_PLAY_LISTS = ("roles", "pre_tasks", "tasks", "post_tasks")


def _plays(scan: Scan, path: Path) -> tuple[list[dict], list[Problem]]:
    """The plays of a playbook; one whose roles or tasks are not a list is a problem."""
    data, rel = scan.load(path), relative(path, scan.checkout)
    if data is not None and not isinstance(data, list):
        return [], [Problem(rel, None, f"a playbook must be a list of plays, not {kind_of(data)}")]
    plays = [p for p in data or [] if isinstance(p, dict)]
    problems = [Problem(rel, None, f"play {number} ('{play.get('name', '')}'): '{key}' must be "
                                   f"a list, not {kind_of(play[key])}")
                for number, play in enumerate(plays, 1) for key in _PLAY_LISTS
                if play.get(key) is not None and not isinstance(play[key], list)]
    return plays, problems


def _read_platform(scan: Scan, name: str, path: Path) -> tuple[Platform, list[Problem]]:
    plays, problems = _plays(scan, path)
    own = [p for p in plays if f"platform_{name}" in str(p.get("hosts", ""))] or plays
    platform = Platform(name, path)
    platform.local = bool(own) and all(p.get("connection") == "local" for p in own)
    platform.created_by_run = any(isinstance(p.get("vars"), dict) and
                                  p["vars"].get("gitops_created_by_run") is True for p in own)
    return platform, problems


def _read_platforms(scan: Scan, playbook: str) -> tuple[dict[str, Platform], list[Problem]]:
    """Platforms routed by the entry playbook: {name: Platform}."""
    site = scan.checkout / playbook
    if not site.is_file():
        return {}, [Problem(playbook, None, "entry playbook not found")]
    plays, problems = _plays(scan, site)
    platforms = {}
    for play in plays:
        target = play.get("ansible.builtin.import_playbook") or play.get("import_playbook")
        if not isinstance(target, str):
            continue
        path = site.parent / target
        if not path.is_file():
            problems.append(Problem(playbook, _line_of(site, target),
                                    f"imported playbook '{target}' not found"))
            continue
        platforms[Path(target).stem], found = _read_platform(scan, Path(target).stem, path)
        problems += found
    return platforms, problems


# --- Ansible's inventory, from the files parsed above -----------------------------------

def _served_loader(scan: Scan, password: bytes | None):
    """Ansible's DataLoader, answering with the scan's parse for the files it holds: each
    file is parsed once, with the checks above, and Ansible decides the rest (which files
    belong to which host, precedence) itself."""
    from ansible.parsing.dataloader import DataLoader

    class ServedLoader(DataLoader):
        def load_from_file(self, file_name, cache="all", unsafe=False, json_only=False,
                           trusted_as_template=False):
            real = os.path.realpath(self.path_dwim(file_name))
            if real in scan.data:
                return scan.data[real] if unsafe else copy.deepcopy(scan.data[real])
            return super().load_from_file(file_name, cache, unsafe, json_only,
                                          trusted_as_template)

    loader = ServedLoader()
    if password is not None:
        from ansible.parsing.vault import VaultSecret
        loader.set_vault_secrets([("default", VaultSecret(password))])
    return loader


@dataclass
class _Host:
    """One host as Ansible sees it: its variables and the files they may come from."""
    name: str
    address: str
    values: dict
    files: list[str]  # vars files of the host, highest precedence first; then the sources
    groups: frozenset[str] = frozenset()


# Ansible's variables of a host that say where it is, not what it is given.
HOST_MAGIC = frozenset({"group_names", "groups", "inventory_dir", "inventory_file",
                        "inventory_hostname", "inventory_hostname_short", "ansible_facts",
                        "playbook_dir"})


def _ansible_hosts(inv_path: Path, scan: Scan, password: bytes | None, limit: str | None = None
                   ) -> tuple[list[_Host], list[str] | None, frozenset[str]]:
    """The hosts with their variables, the names ``limit`` selects (None: no limit), and
    the names of Ansible's magic variables (the same for every host)."""
    from ansible.inventory.helpers import sort_groups
    from ansible.inventory.manager import InventoryManager
    from ansible.vars.manager import VariableManager

    loader = _served_loader(scan, password)
    try:
        manager = InventoryManager(loader=loader, sources=[str(inv_path)])
        variables = VariableManager(loader=loader, inventory=manager)
        hosts = []
        for host in manager.get_hosts():
            files = loader.find_vars_files(str(inv_path / "host_vars"), host.name)[::-1]
            for group in reversed(sort_groups(host.get_groups())):
                files += loader.find_vars_files(str(inv_path / "group_vars"), group.name)[::-1]
            files += [str(p) for p in sorted(inv_path.iterdir()) if p.suffix in (".yml", ".yaml")]
            hosts.append(_Host(host.name, host.address or host.name,
                               variables.get_vars(host=host, include_hostvars=False),
                               [os.path.realpath(f) for f in files],
                               frozenset(g.name for g in host.get_groups())))
        limited = None
        if limit and not limit.startswith("@"):  # @FILE: a list of hosts Ansible reads
            limited = [h.name for h in manager.get_hosts(pattern=limit)]
        magic = frozenset(variables.get_vars(include_hostvars=False)) | HOST_MAGIC
    except Exception as exc:  # Ansible's parse errors come as its own exception types
        raise Refused([Problem(relative(inv_path, scan.checkout), None,
                               f"inventory: {first_line(exc)}")]) from None
    if not hosts:
        raise Refused([Problem(relative(inv_path, scan.checkout), None, "inventory has no hosts")])
    return hosts, limited, magic


# Tags Ansible gives meaning to, whatever the tasks say.
SPECIAL_TAGS = {"all", "always", "never", "tagged", "untagged"}


def _tags_of(value, out: set[str]) -> None:
    if isinstance(value, str):
        out.update(t.strip() for t in value.split(",") if t.strip())
    elif isinstance(value, list):
        for item in value:
            _tags_of(item, out)


def _collect_tags(value, out: set[str]) -> None:
    """Every value of a ``tags`` key in a play, block, task or role entry."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "tags":
                _tags_of(item, out)
            _collect_tags(item, out)
    elif isinstance(value, list):
        for item in value:
            _collect_tags(item, out)


def _check_selection(scan: Scan, settings, inv_rel: str, hosts: list[_Host],
                     limited: list[str] | None, code_dirs: list[Path]) -> list[Problem]:
    """--limit and --tags that select nothing are refused, naming what matched nothing."""
    problems = []
    if limited is not None and not limited:
        problems.append(Problem("--limit", None, f"'{settings.limit}' matches no host of "
                                f"{inv_rel} (hosts: {', '.join(sorted(h.name for h in hosts))})"))
    if settings.tags:
        wanted = {t.strip() for t in settings.tags.split(",") if t.strip()}
        known: set[str] = set()
        for real, data in scan.data.items():
            if any(Path(real).is_relative_to(base) for base in code_dirs):
                _collect_tags(data, known)
        if not wanted:
            problems.append(Problem("--tags", None, f"'{settings.tags}' names no tag"))
        elif not any(templated(tag) for tag in known):  # templated: unknowable
            unknown = sorted(wanted - known - SPECIAL_TAGS)
            if unknown:
                problems.append(Problem("--tags", None, f"{', '.join(map(repr, unknown))} "
                                        "matches no task of the playbooks and roles (tags: "
                                        f"{', '.join(sorted(known)) or 'none'})"))
    return problems


def _target(host: _Host, platforms: dict[str, Platform]) -> Target:
    values, platform = host.values, host.values.get("platform")
    conn = {k: str(values[k]) for k in CONNECTION_VARS if values.get(k) is not None}
    conn.setdefault("ansible_host", host.address)
    target = Target(host.name, str(platform) if platform is not None else "", conn)
    known = platforms.get(target.platform)
    if known and known.local:
        target.vars["ansible_connection"] = "local"
    target.created_by_run = bool(known and known.created_by_run)
    return target


# --- Checks -----------------------------------------------------------------------------

def _check_targets(targets, platforms, scan: Scan, inv_rel: str, env: str) -> list[Problem]:
    problems = []
    known = ", ".join(sorted(platforms)) or "none"
    for target in targets.values():
        if not target.platform:
            problems.append(Problem(f"{inv_rel}/{env}", None,
                                    f"host '{target.name}': variable 'platform' is not set "
                                    f"(platforms: {known})"))
        elif target.platform not in platforms:
            marks = scan.platform_marks.get(target.platform) or [(f"{inv_rel}/{env}", None)]
            problems.append(Problem(marks[0][0], marks[0][1],
                                    f"host '{target.name}': unknown platform "
                                    f"'{target.platform}' (platforms: {known})"))
    return problems


def _options(scan: Scan, spec: Path) -> tuple[dict, list[Problem]]:
    """The options of the entry point main of a role's argument_specs.yml."""
    data, options = scan.load(spec), {}
    for key in ("argument_specs", "main", "options"):
        if data is None:
            break
        if not isinstance(data, dict):
            return {}, [Problem(relative(spec, scan.checkout), None,
                                f"expected a mapping above '{key}' (argument_specs: main: "
                                f"options: ...), not {kind_of(data)}")]
        data = options = data.get(key)
    if not isinstance(options, (dict, type(None))):
        return {}, [Problem(relative(spec, scan.checkout), _line_of(spec, "options:"),
                            f"argument_specs: main: options: must be a mapping, not "
                            f"{kind_of(options)}")]
    wrong = [name for name, option in (options or {}).items() if not isinstance(option, dict)]
    if wrong:
        return {}, [Problem(relative(spec, scan.checkout), _line_of(spec, f"{wrong[0]}:"),
                            f"option '{wrong[0]}' must be a mapping (type, default...)")]
    return options or {}, []


_STRINGS = ("str", "path", "bytes", "bits")


def _mismatch(value, option: dict) -> str | None:
    """Why ``value`` does not fit an argument_specs option, or None when it converts
    (Ansible's own converters; they also turn a mapping into a string, which is refused
    here for str and path). Values are not shown: they may be secrets."""
    from ansible.module_utils.common.parameters import DEFAULT_TYPE_VALIDATORS

    kind, elements = option.get("type", "str"), option.get("elements")
    expected = f"{kind} of {elements}" if kind == "list" and elements else str(kind)
    convert = DEFAULT_TYPE_VALIDATORS.get(kind) if isinstance(kind, str) else None
    if convert is None or value is None:
        return None
    try:
        if kind in _STRINGS and isinstance(value, (dict, list)):
            raise TypeError(kind)
        converted = convert(value)
    except (TypeError, ValueError):
        return f"must be {expected}, not {kind_of(value)}"
    sub = option.get("options") if isinstance(option.get("options"), dict) else {}
    parts = []
    if kind == "list" and elements:
        parts = [(f"item {number}", item, {"type": elements, "options": sub})
                 for number, item in enumerate(converted, 1)]
    elif kind == "dict":
        parts = [(f"'{k}'", converted[k], o) for k, o in sub.items()
                 if k in converted and isinstance(o, dict)]
    for name, item, item_option in parts:
        why = _mismatch(item, item_option)
        if why:
            return f"must be {expected}: {name} {why}"
    return None


def _where(scan: Scan, host: _Host, var: str, inv_rel: str) -> tuple[str, int | None]:
    """The vars file that sets ``var`` for the host (Ansible's precedence), else the
    inventory directory."""
    for real in host.files:
        line = scan.lines.get(real, {}).get(var) or (
            _line_of(Path(real), f"{var}:") if Path(real).parent.name not in
            ("group_vars", "host_vars") else None)
        if line:
            return relative(Path(real), scan.root), line
    return inv_rel, None


def _type_problems(scan: Scan, hosts: list[_Host], options: dict, source: str,
                   inv_rel: str) -> list[Problem]:
    """Host variables whose value does not fit their option's type, one problem per place
    that sets them, naming the hosts."""
    wrong: dict[tuple, list[str]] = {}
    for var, option in options.items():
        for host in hosts:
            value = host.values.get(var)
            why = None if templated(value) else _mismatch(value, option)
            if why:
                wrong.setdefault((*_where(scan, host, var, inv_rel), var, why), []).append(
                    host.name)
    return [Problem(file, line, f"variable '{var}' {why} ({source}; host(s) {', '.join(names)})")
            for (file, line, var, why), names in wrong.items()]


# Ansible's connection variables the pre-flight reads, as an argument spec.
_CONNECTION_OPTIONS = {"ansible_host": {"type": "str"}, "ansible_port": {"type": "int"},
                      "ansible_user": {"type": "str"}, "ansible_connection": {"type": "str"}}


def _spec_file(role: Path) -> Path:
    """Where Ansible reads a role's argument specs: meta/argument_specs.yml (or .yaml),
    else the argument_specs of meta/main.yml."""
    meta = role / "meta"
    return entry_file(meta, "argument_specs") or entry_file(meta, "main") or \
        meta / "argument_specs.yml"


def _role_problems(scan: Scan, hosts: list[_Host], role: RoleRef,
                   inv_rel: str) -> list[Problem]:
    """Required variables that hosts lack, and variables whose type is not the spec's."""
    spec = _spec_file(role.path)
    options, problems = _options(scan, spec)
    spec_rel = relative(spec, scan.checkout)
    for var, option in options.items():
        missing = sorted(h.name for h in hosts if var not in h.values)
        if option.get("required") and "default" not in option and missing:
            problems.append(Problem(spec_rel, _line_of(spec, f"{var}:"),
                                    f"role '{role.name}' requires variable '{var}', not set "
                                    f"for host(s) {', '.join(missing)}"))
    return problems + _type_problems(scan, hosts, options, spec_rel, inv_rel)


def _found(roles: list[RoleRef]) -> list[RoleRef]:
    """The roles found, each once (by directory)."""
    found: dict[Path, RoleRef] = {}
    for role in roles:
        if role.path:
            found.setdefault(role.path, role)
    return list(found.values())


def _check_roles(scan: Scan, platforms, hosts: list[_Host], targets, inv_rel) -> list[Problem]:
    """The argument specs and file checks of the roles each platform with targets applies
    (a role not found is the walk's problem: Ansible fails on it whatever the hosts)."""
    problems = []
    for platform in sorted({t.platform for t in targets.values()} & set(platforms)):
        members = [h for h in hosts if targets[h.name].platform == platform]
        applied: dict[Path, tuple[RoleRef, dict[str, _Host]]] = {}
        for pattern, refs in platforms[platform].plays:
            selected = _selected(pattern, members, targets)
            for role in _found(refs):
                applied.setdefault(role.path, (role, {}))[1].update(
                    (h.name, h) for h in selected)
        for role, selected in applied.values():
            problems += _role_problems(scan, list(selected.values()), role, inv_rel)
            problems += _check_role_files(scan, role, list(selected.values()))
    return problems


def _selected(pattern: str | None, members: list[_Host], targets) -> list[_Host]:
    """The platform's hosts a play's ``hosts`` pattern selects (a play on
    ``platform_web:&hardened`` applies its roles to the hardened web hosts only): Ansible's
    terms, ``a:b`` (or ``a,b``) a union, ``&a`` an intersection, ``!a`` an exclusion; a name
    is a host, a group or ``platform_NAME`` (the group site.yml makes), with ``*``
    wildcards; a ``~regex`` or a range is taken as every host."""
    if pattern is None or "~" in pattern or "[" in pattern:
        return members

    def matches(host: _Host, name: str) -> bool:
        names = {host.name, "all", f"platform_{targets[host.name].platform}", *host.groups}
        return any(fnmatch.fnmatchcase(candidate, name) for candidate in names)

    terms = _terms(pattern)
    plain = [t for t in terms if t[0] not in "&!"] or ["all"]
    chosen = [h for h in members if any(matches(h, t) for t in plain)]
    chosen = [h for h in chosen if all(matches(h, t[1:]) for t in terms if t[0] == "&")]
    return [h for h in chosen if not any(matches(h, t[1:]) for t in terms if t[0] == "!")]


# A file check of meta/gitops.yml: {key: (type, what it is)}.
_FILE_CHECK_KEYS = {
    "dirs_var": (str, "the inventory variable that lists the directories (relative to the "
                      "repository root; unset: the role's defaults/main.yml)"),
    "what": (str, "what the files are, in messages ('manifest')"),
    "documents_require": (list, "keys every YAML document of the files must set"),
}
# Optional: file names that make their directory a unit the role builds and checks itself
# (a kustomization): the files below such a directory are not checked here.
_FILE_CHECK_OPTIONAL = {"built_when": (list, "file names that make a directory one the role "
                                             "builds (e.g. kustomization.yaml)")}
_HOSTNAME_VAR = re.compile(r"{{\s*inventory_hostname\s*}}")


def _file_checks(scan: Scan, role: Path) -> tuple[list[dict], list[Problem]]:
    path = role / "meta" / "gitops.yml"
    data = scan.load(path) if path.is_file() else None
    rel = relative(path, scan.checkout)
    if data is None:
        return [], []
    if not isinstance(data, dict) or set(data) - {"file_checks"} \
            or not isinstance(data.get("file_checks"), list):
        return [], [Problem(rel, 1, "expected a mapping with one key, file_checks: a list")]
    checks, problems = [], []
    for number, check in enumerate(data["file_checks"]):
        wrong = _file_check_problem(check)
        if wrong:
            problems.append(Problem(rel, _line_of(path, "dirs_var"),
                                    f"file_checks[{number}]: {wrong}"))
        else:
            checks.append(check)
    return checks, problems


def _file_check_problem(check) -> str | None:
    if not isinstance(check, dict):
        return "not a mapping"
    for key, (kind, what) in _FILE_CHECK_KEYS.items():
        if not isinstance(check.get(key), kind):
            return f"'{key}' must be a {kind.__name__}: {what}"
    for key, (kind, what) in _FILE_CHECK_OPTIONAL.items():
        if key in check and not isinstance(check[key], kind):
            return f"'{key}' must be a {kind.__name__}: {what}"
    unknown = sorted(set(check) - set(_FILE_CHECK_KEYS) - set(_FILE_CHECK_OPTIONAL))
    return f"unknown key '{unknown[0]}'" if unknown else None


def _dirs(host: _Host, var: str, defaults) -> list[str]:
    """The directories ``var`` lists for the host (the role's default when unset)."""
    if var in host.values:
        dirs = host.values[var]
    else:
        dirs = defaults.get(var) if isinstance(defaults, dict) else None
    dirs = [dirs] if isinstance(dirs, str) else dirs if isinstance(dirs, list) else []
    out = []
    for item in dirs:
        item = _HOSTNAME_VAR.sub(host.name, str(item))
        if not templated(item):  # other templating: the role checks it
            out.append(item)
    return out


def _check_role_files(scan: Scan, role: RoleRef, hosts: list[_Host]) -> list[Problem]:
    """The role's file checks (meta/gitops.yml) for every host: the directories exist
    inside the checkout, every file is YAML, every document has the keys required. Files
    with Jinja2 in them are checked by the role after rendering."""
    checks, problems = _file_checks(scan, role.path)
    defaults = scan.load(role.path / "defaults" / "main.yml")
    seen: set[Path] = set()
    for check in checks:
        for host in sorted(hosts, key=lambda h: h.name):
            for rel in _dirs(host, check["dirs_var"], defaults):
                base, what = scan.checkout / rel, f"host '{host.name}': {check['what']} directory"
                outside = within(base, scan.checkout, scan.root, what)
                if not outside and not base.is_dir():
                    outside = [Problem(rel, None, f"{what} not found")]
                if outside:
                    problems += outside
                    continue
                files = files_inside(base, scan.checkout, scan.root, problems)
                # directories the role builds (and checks) itself: a kustomization's
                units = [p.parent for p in files if p.name in check.get("built_when", ())]
                for path in files:
                    if any(path.is_relative_to(unit) for unit in units):
                        continue
                    if path.suffix in (".yml", ".yaml") and path not in seen:
                        seen.add(path)
                        problems += _check_documents(path, relative(path, scan.checkout),
                                                     check["documents_require"])
    return problems


def _check_documents(path: Path, rel: str, required: list) -> list[Problem]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(rel, None, f"cannot read: {exc}")]
    if templated(text):
        return []
    problems = []
    try:
        for number, doc in enumerate(yaml.compose_all(text, Loader=Loader), 1):
            if doc is None:
                continue
            line = doc.start_mark.line + 1
            if not isinstance(doc, yaml.MappingNode):
                problems.append(Problem(rel, line, f"document {number}: not a mapping"))
                continue
            keys = {k.value for k, v in doc.value if isinstance(k, yaml.ScalarNode)
                    and isinstance(v, yaml.ScalarNode) and v.value}
            missing = [k for k in required if k not in keys]
            if missing:
                problems.append(Problem(rel, line, f"document {number}: no "
                                        f"{' and no '.join(missing)}"))
    except YAML_ERRORS as exc:
        problems.append(yaml_problem(rel, exc))
    return problems


def _walk(scan: Scan, settings, paths: SearchPaths, platforms) -> tuple[Walk, list[Path]]:
    """What the run executes: the roles of each platform, the fully qualified names of the
    plays and roles; and the directories whose tags the run may select (the checkout's
    playbooks and roles, and the installed roles it applies)."""
    site = scan.checkout / settings.playbook
    walk = Walk(scan, Collections.of(paths.collections, site.parent), paths.roles, site.parent)
    for platform in platforms.values():
        platform.plays = walk.plays(platform.playbook)
    code_dirs = [site.parent.resolve(), (scan.checkout / "roles").resolve()]
    for role in _found([r for p in platforms.values() for r in p.roles] + walk.applied(site)):
        real = role.path.resolve()
        if not any(real.is_relative_to(d) for d in code_dirs):
            code_dirs.append(real)
            for path in sorted(real.rglob("*.y*ml")) if settings.tags else ():
                if path.relative_to(real).parts[0] in ("tasks", "handlers"):
                    scan.load(path)  # tags of the files it includes too
    return walk, code_dirs


def load(checkout: Path, settings, paths: SearchPaths | None = None) -> Inventory:
    """Load and validate the environment ``settings.env`` of ``checkout``; raise ``Refused``.
    ``paths``: where the run's Ansible finds collections and roles (None: the checkout's
    ``roles/`` and no installed collections)."""
    paths = paths or SearchPaths(roles=(checkout / "roles",))
    root = checkout.resolve()
    inv_path = _environment(checkout, root, settings)
    playbook_dir = (checkout / settings.playbook).parent
    files = checkout_files(checkout, root, [inv_path, playbook_dir, checkout / "roles"])
    password = read_vault_password(settings, checkout)
    scan = scan_files(checkout, root, inv_path, files, vault_lib(password))
    refuse(scan.problems + follow_refs(scan, playbook_dir.resolve()))
    checked = len(scan.refs)  # the platform playbooks may be read only now
    platforms, problems = _read_platforms(scan, settings.playbook)
    refuse(problems + scan.problems + follow_refs(scan, playbook_dir.resolve(), checked))
    walk, code_dirs = _walk(scan, settings, paths, platforms)
    hosts, limited, magic = _ansible_hosts(inv_path, scan, password, settings.limit)
    targets = {host.name: _target(host, platforms) for host in hosts}
    inv_rel = f"{settings.inventory_dir}/{settings.env}"
    problems = _check_targets(targets, platforms, scan, settings.inventory_dir, settings.env)
    problems += walk.problems()
    problems += _check_selection(scan, settings, inv_rel, hosts, limited, code_dirs)
    problems += _type_problems(scan, hosts, _CONNECTION_OPTIONS, "a connection variable", inv_rel)
    refuse(problems + _check_roles(scan, platforms, hosts, targets, inv_rel) + scan.problems)
    inventory = Inventory(settings.env, inv_path, targets, scan.secrets, limited=limited)
    if settings.scope == "auto" or settings.execution_nodes:  # scope.py and nodes.py read
        inventory.views = {h.name: _view(h, magic) for h in hosts}  # groups and plays
        inventory.plays = _scoped_plays(scan, settings, walk, platforms, hosts, targets)
        inventory.file_dirs, inventory.file_roots = _file_dirs(scan, platforms, hosts, targets)
        inventory.playbooks = walk.imports
    return inventory


def views_at(checkout: Path, settings) -> dict[str, HostView]:
    """The hosts of the environment at another revision's checkout (the base of a scoped
    run), with the same boundary and parse as ``load``; ``Refused`` if it cannot be read."""
    root = checkout.resolve()
    inv_path = _environment(checkout, root, settings)
    files = checkout_files(checkout, root, [inv_path])
    password = read_vault_password(settings, checkout)
    scan = scan_files(checkout, root, inv_path, files, vault_lib(password))
    refuse(scan.problems)
    hosts, _, magic = _ansible_hosts(inv_path, scan, password)
    return {h.name: _view(h, magic) for h in hosts}


def _view(host: _Host, magic: frozenset[str]) -> HostView:
    values = {k: v for k, v in host.values.items() if k not in magic}
    text = json.dumps(values, sort_keys=True, default=str)
    return HostView(host.groups - {"all", "ungrouped"},
                    hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest(),
                    str(host.values.get("platform") or ""))


# Variables that name other hosts: a play that reads them depends on every host's
# variables and groups (a change-scoped run converges all its targets when those change).
_READS_OTHERS = re.compile(r"(?<![.\w])(hostvars|groups\s*[\[.|)]|ansible_play_hosts|"
                           r"ansible_play_batch|play_hosts)")
_TEXT_MAX = 1 << 20


def _first_match(scan: Scan, paths: list[Path], pattern: re.Pattern,
                 seen: dict[Path, int | None]) -> str | None:
    """``file:line`` (relative to the checkout) of the first text that ``pattern`` finds
    in the files under ``paths``; ``seen`` keeps each file's answer (its line, or None)."""
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file not in seen:
                try:  # a large file is data (an archive, an image), not what a play reads
                    text = file.read_text(errors="replace") \
                        if file.stat().st_size <= _TEXT_MAX else ""
                    found = pattern.search(text)
                    seen[file] = text.count("\n", 0, found.start()) + 1 if found else None
                except OSError:
                    seen[file] = 1
            if seen[file] is not None:
                return f"{relative(file, scan.checkout)}:{seen[file]}"
    return None


def _reads_others(scan: Scan, paths: list[Path], seen: dict[Path, int | None]) -> str | None:
    found = _first_match(scan, paths, _READS_OTHERS, seen)
    return found.rsplit(":", 1)[0] if found else None


# What makes a play need all its hosts in one ansible-playbook (nodes.py keeps its targets
# on the controller): run_once, serial batches, a task delegated to another host.
_TOGETHER = re.compile(r"^[ \t]*(?:-[ \t]+)?(run_once|serial|delegate_to)[ \t]*:", re.M)


def _scoped_plays(scan: Scan, settings, walk: Walk, platforms, hosts: list[_Host],
                  targets) -> list[Play]:
    """Every play of the platforms, with the targets it selects (a change-scoped run)."""
    plays, seen, together = [], {}, {}
    known = {"all", *(f"platform_{p}" for p in platforms), *(h.name for h in hosts),
             *(g for h in hosts for g in h.groups)}
    for platform in platforms.values():
        members = [h for h in hosts if targets[h.name].platform == platform.name]
        rel = relative(platform.playbook, scan.checkout)
        names = [p.get("name") for p in _plays(scan, platform.playbook)[0]]
        if len(names) != len(platform.plays):
            names = [None] * len(platform.plays)
        for number, (pattern, refs) in enumerate(platform.plays, 1):
            roles = tuple(dict.fromkeys(relative(r.path, scan.checkout) for r in _found(refs)))
            dirs = [platform.playbook] + [scan.checkout / r for r in roles]
            # a name the inventory does not know (a group made at run time: group_by):
            # every host of the platform, to be safe
            chosen = members if _unknown_terms(pattern, known) else \
                _selected(pattern, members, targets)
            name = names[number - 1]
            label = f"play '{name}' ({rel})" if isinstance(name, str) else f"{rel} play {number}"
            plays.append(Play(rel, label, frozenset(h.name for h in chosen),
                              roles, any(f == rel or any(f.startswith(r + "/") for r in roles)
                                         for f in walk.templated),
                              _reads_others(scan, dirs, seen),
                              _first_match(scan, dirs, _TOGETHER, together)))
    site = scan.checkout / settings.playbook
    covered = {role for play in plays for role in play.roles}
    own = tuple(dict.fromkeys(r for r in (relative(ref.path, scan.checkout)
                                          for ref in _found(walk.applied(site))) if r not in covered))
    if own:  # roles the entry playbook's own plays apply: every target, to be safe
        dirs = [scan.checkout / r for r in own]
        plays.append(Play(settings.playbook, settings.playbook, frozenset(targets), own,
                          reads_others=_reads_others(scan, dirs, seen),
                          together=_first_match(scan, dirs, _TOGETHER, together)))
    return plays


def _terms(pattern: str | None) -> list[str]:
    """The terms of a host pattern: ``a:b`` or ``a,b``, each maybe ``&a`` or ``!a``."""
    return [term.strip() for term in re.split(r"[:,]", pattern or "") if term.strip()]


def _unknown_terms(pattern: str | None, known: set[str]) -> bool:
    terms = [t.lstrip("&!") for t in _terms(pattern)]
    return any(not any(fnmatch.fnmatchcase(name, t) for name in known) for t in terms
               if t != "localhost")


def _file_dirs(scan: Scan, platforms, hosts: list[_Host], targets
               ) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """Per host, the directories its roles' file checks list (meta/gitops.yml), normalized;
    and the top directories those checks list by default (``clusters/`` for
    ``clusters/{{ inventory_hostname }}``), targets or not: where other environments'
    targets have theirs."""
    out: dict[str, list[str]] = {}
    roots: dict[str, None] = {}
    for platform in platforms.values():
        members = [h for h in hosts if targets[h.name].platform == platform.name]
        for role in _found(platform.roles):
            checks, _ = _file_checks(scan, role.path)
            defaults = scan.load(role.path / "defaults" / "main.yml")
            for check in checks:
                for host in members:
                    out.setdefault(host.name, []).extend(
                        os.path.normpath(d).strip("/")
                        for d in _dirs(host, check["dirs_var"], defaults))
                default = defaults.get(check["dirs_var"]) if isinstance(defaults, dict) else None
                for item in [default] if isinstance(default, str) else default or []:
                    top = os.path.normpath(str(item)).split("/")[0]
                    if top and top not in (".", "..") and not templated(top):
                        roots[top] = None
    return out, tuple(roots)
