"""Environments: load one environment's inventory, classify targets by platform, validate.

Everything here happens before any target is touched. A problem is reported with the
file and line it comes from; ``Refused`` carries all problems found, not just the first.

The order: the checkout is a boundary (the inventory, playbook and roles directories and
every link in them resolve inside it), then every YAML file Ansible will read is parsed
once (duplicate keys, alias expansion, tags, vault data) and served to Ansible's own
inventory load from that parse, then the platforms and their roles are checked against
the hosts' variables.

The platform contract (what the orchestrator reads of a platform; nothing else of a
platform is known to the Python here):

- A platform is a playbook the entry playbook imports (``import_playbook: vm.yml`` makes
  ``vm`` a platform); its plays converge the group ``platform_<name>``.
- Its plays that target that group decide two facts of the SSH pre-flight: when every one
  of them has ``connection: local``, its targets are never SSH hosts; when one of them sets
  the play variable ``gitops_created_by_run: true``, the run makes its targets exist (VMs)
  and the pre-flight leaves them out.
- The roles it applies (``roles:`` and ``import_role``/``include_role`` with a literal name)
  must exist; each role's ``meta/argument_specs.yml`` (entry point ``main``) says which
  variables every target must set (``required`` without ``default``) and the types of
  those a target sets (checked with Ansible's own type converters).
- Each role's ``meta/gitops.yml`` may declare file checks run for every target of the
  platform (see ``_FILE_CHECK_KEYS``): an inventory variable listing directories (its
  default is the role's ``defaults/main.yml``), whose YAML files must hold mappings with
  the keys named.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

VAULT_HEADER = "$ANSIBLE_VAULT"
CONNECTION_VARS = ("ansible_connection", "ansible_host", "ansible_port", "ansible_user",
                   "ansible_ssh_private_key_file", "ansible_ssh_common_args",
                   "ansible_ssh_extra_args")
# Nodes that aliases may add to a document beyond those written: far above any real
# inventory, far below what hangs a parser (a "billion laughs" document adds 10**9).
MAX_ALIAS_NODES = 1_000_000


@dataclass
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class Refused(Exception):
    """The revision cannot be converged: bad input, found before touching anything."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass
class Target:
    name: str
    platform: str
    vars: dict = field(default_factory=dict)  # connection variables only
    created_by_run: bool = False  # its platform makes it exist (VMs): no SSH pre-flight

    @property
    def is_ssh(self) -> bool:
        return self.vars.get("ansible_connection", "ssh") in ("ssh", "paramiko", "smart")


@dataclass
class Inventory:
    env: str
    path: Path
    targets: dict[str, Target]
    secrets: set[str]

    def by_platform(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for target in self.targets.values():
            groups.setdefault(target.platform, []).append(target.name)
        return {name: sorted(hosts) for name, hosts in sorted(groups.items())}


def _refuse(problems: list[Problem]) -> None:
    if problems:
        raise Refused(problems)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _one_line(exc: Exception) -> str:
    """The first line of an error (Ansible's carry the source below it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# --- The checkout is a boundary ---------------------------------------------------------

def _files(base: Path, checkout: Path, root: Path, problems: list[Problem]) -> list[Path]:
    """Every file under ``base``, following links that stay inside the checkout (``root``,
    resolved). A link that resolves outside is a problem, named with its target, and is
    not followed: its target is never read."""
    found, seen, todo = [], set(), [base]
    while todo:
        here = todo.pop()
        real = here.resolve()
        if real in seen:  # a link back into a directory already walked
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(here), key=lambda entry: entry.name)
        except OSError as exc:
            problems.append(Problem(_rel(here, checkout), None, f"cannot read: {exc.strerror}"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink() and not _inside(path.resolve(), root):
                problems.append(Problem(_rel(path, checkout), None,
                                        f"symlink to '{os.readlink(path)}' resolves outside "
                                        f"the checkout ({path.resolve()})"))
            elif entry.is_dir():
                todo.append(path)
            elif entry.is_file():
                found.append(path)
    return sorted(found)


def _within(path: Path, checkout: Path, root: Path, what: str) -> list[Problem]:
    real = path.resolve()
    if _inside(real, root):
        return []
    return [Problem(_rel(path, checkout), None, f"{what} resolves outside the checkout ({real})")]


def environments(checkout: Path, inventory_dir: str) -> list[str]:
    base = checkout / inventory_dir
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def _environment(checkout: Path, root: Path, settings) -> Path:
    """The environment's inventory directory, inside the checkout, or ``Refused``."""
    inv_rel, env = settings.inventory_dir, settings.env
    _refuse(_within(checkout / inv_rel, checkout, root, "the inventory directory"))
    inv_path = checkout / inv_rel / env
    if not inv_path.is_dir():
        known = ", ".join(environments(checkout, inv_rel)) or "none"
        raise Refused([Problem(f"{inv_rel}/{env}", None,
                               f"environment '{env}' does not exist (environments: {known})")])
    _refuse(_within(inv_path, checkout, root, f"environment '{env}'"))
    return inv_path


# Keys whose static value names a file Ansible reads, or a role (a path when it has a /).
_FILE_KEYS = ("import_playbook", "include_vars", "vars_files", "include_tasks", "import_tasks")
_ROLE_KEYS = ("roles", "include_role", "import_role", "dependencies")
_REF_KEYS = {prefix + key for key in _FILE_KEYS + _ROLE_KEYS
             for prefix in ("", "ansible.builtin.")}
_REF_FIELDS = ("file", "dir", "name", "role", "tasks_from", "vars_from", "defaults_from",
               "handlers_from")


def _ref_values(node) -> list[yaml.ScalarNode]:
    """The scalars of a reference: `x`, `[x, {role: y}]`, `{file: x}`,
    `{name: r, tasks_from: t}`."""
    if isinstance(node, yaml.ScalarNode):
        return [node]
    if isinstance(node, yaml.SequenceNode):
        return [scalar for item in node.value for scalar in _ref_values(item)]
    if isinstance(node, yaml.MappingNode):
        return [value for key, value in node.value if isinstance(value, yaml.ScalarNode)
                and isinstance(key, yaml.ScalarNode) and key.value in _REF_FIELDS]
    return []


def _outside_refs(scan: Scan, refs: list, playbook_dir: Path) -> list[Problem]:
    """Static paths in playbooks and roles (import_playbook, include_vars, vars_files,
    include/import_tasks, role paths) that resolve outside the checkout from any of the
    directories Ansible searches."""
    problems = []
    for rel, line, key, value, path in refs:
        is_role = key.rsplit(".", 1)[-1] in _ROLE_KEYS
        if "{{" in value or "{%" in value or (is_role and "/" not in value):
            continue
        bases = [path.parent, playbook_dir, scan.root / "roles"]
        parts = path.relative_to(scan.root).parts
        if parts[0] == "roles" and len(parts) > 2:
            bases.append(scan.root / "roles" / parts[1])
        for base in bases:
            target = (base / value).resolve()
            if not _inside(target, scan.root):
                problems.append(Problem(rel, line, f"{key} '{value}' resolves outside the "
                                                   f"checkout ({target})"))
                break
    return problems


# --- YAML: every file parsed once -------------------------------------------------------

class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe YAML (libyaml when present: several times faster) with Ansible's own tags:
    !unsafe (the value as written) and !vault (decrypted by the scan)."""

    scan: Scan
    rel: str


def _construct_unsafe(loader: _Loader, node):
    plain = copy.copy(node)
    plain.tag = loader.resolve(type(node), node.value, (True, False))
    return loader.construct_object(plain, deep=True)


def _construct_vault(loader: _Loader, node):
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, f"the {node.tag} tag requires a "
                                                "string value", node.start_mark)
    return loader.scan.vault_value(loader.rel, node.start_mark.line + 1, node.value)


_Loader.add_constructor("!unsafe", _construct_unsafe)
_Loader.add_constructor("!vault", _construct_vault)
_Loader.add_constructor("!vault-encrypted", _construct_vault)


class _Bad(Exception):
    def __init__(self, line: int, message: str):
        self.line, self.message = line, message


# What bad YAML raises: PyYAML's errors, and the constructors' own (`!!int x`, `!!float y`).
_YAML_ERRORS = (yaml.YAMLError, RecursionError, ValueError, TypeError)


def _yaml_problem(rel: str, exc: Exception) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError):
        detail = " ".join(str(part) for part in (exc.context, exc.problem) if part)
    else:
        detail = _one_line(exc)
    return Problem(rel, mark.line + 1 if mark else None, f"invalid YAML: {detail}")


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _kind(value) -> str:
    if isinstance(value, (dict, yaml.MappingNode)):
        return "a mapping"
    if isinstance(value, (list, yaml.SequenceNode)):
        return "a list"
    if isinstance(value, yaml.ScalarNode):
        return "a single value"
    for kind, name in ((str, "a string"), (bool, "a boolean"), (int, "an integer"),
                       (float, "a number")):  # Ansible's tagged values are subclasses
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _read_by_ansible(parts: tuple[str, ...]) -> bool:
    """Whether Ansible parses this file as YAML: *.yml/*.yaml, and extension-less files in
    *_vars/. A role's templates/ and files/ are data for the targets, not YAML for Ansible."""
    dirs, name = parts[:-1], parts[-1]
    if any(d in ("templates", "files") for d in dirs):
        return False
    in_vars = any(d.endswith("_vars") for d in dirs[-2:])
    return name.endswith((".yml", ".yaml")) or (in_vars and "." not in name)


def _is_vars_file(parts: tuple[str, ...]) -> bool:
    """group_vars/ and host_vars/ files (a file, or the files of a directory per name)."""
    return any(d in ("group_vars", "host_vars") for d in parts[-3:-1])


_VARS_SHAPE = "a vars file must be a mapping of variable names to values"
_INVENTORY_SHAPE = "an inventory file must be a mapping of groups (all: hosts: ...)"


def _names_paths(parts: tuple[str, ...], in_inventory: bool) -> bool:
    """Playbooks and role tasks, handlers and meta: where import_playbook, include_vars,
    role paths... are written (not the inventory, not vars files: a variable may be named
    `roles`)."""
    role_vars = parts[0] == "roles" and len(parts) > 3 and parts[2] in ("vars", "defaults")
    return not (in_inventory or role_vars or _is_vars_file(parts))


class Scan:
    """Every YAML file Ansible will read, parsed once: syntax, duplicate keys, alias
    expansion, the shape of vars files, where `platform` is set, the static paths the
    playbooks and roles name, and vault data (decrypted: its plain texts are secrets)."""

    def __init__(self, checkout: Path, root: Path, vault):
        self.checkout, self.root, self.vault = checkout, root, vault
        self.problems: list[Problem] = []
        self.data: dict[str, object] = {}  # real path -> what the file holds
        self.lines: dict[str, dict[str, int]] = {}  # real path -> {top-level key: line}
        self.platform_marks: dict[str, list[tuple[str, int]]] = {}
        self.refs: list[tuple[str, int, str, str, Path]] = []  # file, line, key, value, path
        self.secrets: set[str] = set()
        self._vault_problem: set[str] = set()

    def load(self, path: Path):
        """What ``path`` holds (parsed now if not yet); None when empty or refused."""
        real = str(path.resolve())
        if real not in self.data and path.is_file():
            self.file(path, shape=None, refs=True)
        return self.data.get(real)

    def file(self, path: Path, shape: str | None, refs: bool) -> None:
        """Parse one file. ``shape``: what the file must be when it must be a mapping (a
        vars file, an inventory file); ``refs``: collect the static paths it names
        (playbooks, role tasks and meta)."""
        rel, real = _rel(path, self.checkout), str(path.resolve())
        if real in self.data:
            return
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(Problem(rel, None, f"cannot read: {exc}"))
            return
        decrypted = text.startswith(VAULT_HEADER)
        if decrypted:
            text = self._decrypt(rel, None, text)
            if text is None:
                return
        try:
            self.data[real] = self._parse(text, rel, real, shape, refs)
        except _Bad as bad:
            problem = Problem(rel, bad.line, bad.message)
        except _YAML_ERRORS as exc:
            problem = _yaml_problem(rel, exc)
        else:
            if decrypted:
                _leaf_strings(self.data[real], self.secrets)
            return
        if decrypted:  # the line is one of the plain text
            problem.message = f"after decryption: {problem.message}"
        self.problems.append(problem)

    def _parse(self, text: str, rel: str, real: str, shape: str | None, refs: bool):
        loader = _Loader(text)
        loader.scan, loader.rel = self, rel
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            self._walk(node, rel, real, refs)
            if shape and not isinstance(node, yaml.MappingNode):
                raise _Bad(node.start_mark.line + 1, f"{shape}, not {_kind(node)}")
            if isinstance(node, yaml.MappingNode):
                self.lines[real] = {k.value: k.start_mark.line + 1 for k, _ in node.value
                                    if isinstance(k, yaml.ScalarNode)}
            return loader.construct_document(node)
        finally:
            loader.dispose()

    def _walk(self, root, rel: str, real: str, refs: bool) -> None:
        """One pass over the node graph: duplicate keys, `platform` and path references at
        each mapping; the size each node has once aliases are expanded, refused beyond
        MAX_ALIAS_NODES more than the document's written nodes, and aliases into
        themselves."""
        sizes: dict[int, int] = {}
        open_nodes: set[int] = set()
        written, todo = 0, [(root, False)]
        while todo:
            node, done = todo.pop()
            if done:
                open_nodes.discard(id(node))
                size = sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in _children(node))
                if size - written > MAX_ALIAS_NODES:
                    raise _Bad(node.start_mark.line + 1, f"aliases expand this value to more "
                               f"than {MAX_ALIAS_NODES} nodes (an alias bomb?)")
                continue
            if id(node) in open_nodes:
                raise _Bad(node.start_mark.line + 1, "an alias refers to a value that "
                           "contains it (a recursive structure)")
            if id(node) in sizes:  # an alias of a value already walked
                continue
            written += 1
            if isinstance(node, yaml.ScalarNode):
                continue
            open_nodes.add(id(node))
            todo.append((node, True))
            if isinstance(node, yaml.MappingNode):
                self._pairs(node, rel, real, refs)
            todo.extend((child, False) for child in reversed(_children(node)))

    def _pairs(self, node: yaml.MappingNode, rel: str, real: str, refs: bool) -> None:
        seen: dict[tuple, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in seen:
                raise _Bad(line, f"duplicate key '{key.value}' (first at line "
                                 f"{seen[key.tag, key.value]})")
            seen[key.tag, key.value] = line
            if key.value == "platform" and isinstance(value, yaml.ScalarNode):
                self.platform_marks.setdefault(value.value, []).append((rel, line))
            if refs and key.value in _REF_KEYS:
                for scalar in _ref_values(value):
                    self.refs.append((rel, scalar.start_mark.line + 1, key.value,
                                      scalar.value, Path(real)))

    def vault_value(self, rel: str, line: int, ciphertext: str) -> str:
        return self._decrypt(rel, line, ciphertext) or ciphertext

    def _decrypt(self, rel: str, line: int | None, ciphertext: str) -> str | None:
        if self.vault is None:
            if rel not in self._vault_problem:
                self._vault_problem.add(rel)
                self.problems.append(Problem(rel, line, "vault-encrypted data but no "
                                             "vault_password_file is configured"))
            return None
        try:
            plain = self.vault.decrypt(ciphertext.encode()).decode()
        except Exception as exc:  # wrong password, corrupt data: ansible raises its own types
            self.problems.append(Problem(rel, line, f"cannot decrypt vault data: "
                                                    f"{_one_line(exc)}"))
            return None
        if line is not None:
            _leaf_strings(plain, self.secrets)
        return plain


def _leaf_strings(value, out: set[str]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _leaf_strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _leaf_strings(item, out)
    elif isinstance(value, str) and len(value.strip()) >= 4:
        out.add(value)
        out.update(line for line in value.splitlines() if len(line.strip()) >= 4)


def _read_vault_password(settings, checkout: Path) -> bytes | None:
    if not settings.vault_password_file:
        return None
    path = Path(settings.vault_password_file).expanduser()
    path = path if path.is_absolute() else checkout / path
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise Refused([Problem(str(path), None, f"vault_password_file: cannot read: "
                               f"{exc.strerror}")]) from None


def _vault(password: bytes | None):
    if password is None:
        return None
    from ansible.parsing.vault import VaultLib, VaultSecret

    return VaultLib([("default", VaultSecret(password))])


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
    roles: list[str] = field(default_factory=list)  # local roles it applies, literal names
    local: bool = False  # every play on its group has connection: local
    created_by_run: bool = False  # a play on its group sets gitops_created_by_run: true


_ROLE_MODULES = ("import_role", "include_role", "ansible.builtin.import_role",
                "ansible.builtin.include_role")


_PLAY_LISTS = ("roles", "pre_tasks", "tasks", "post_tasks")


def _plays(scan: Scan, path: Path) -> tuple[list[dict], list[Problem]]:
    """The plays of a playbook; one whose roles or tasks are not a list is a problem."""
    data, rel = scan.load(path), _rel(path, scan.checkout)
    if data is not None and not isinstance(data, list):
        return [], [Problem(rel, None, f"a playbook must be a list of plays, not {_kind(data)}")]
    plays = [p for p in data or [] if isinstance(p, dict)]
    problems = [Problem(rel, None, f"play {number} ('{play.get('name', '')}'): '{key}' must be "
                                   f"a list, not {_kind(play[key])}")
                for number, play in enumerate(plays, 1) for key in _PLAY_LISTS
                if play.get(key) is not None and not isinstance(play[key], list)]
    return plays, problems


def _listed(play: dict, key: str) -> list:
    return play[key] if isinstance(play.get(key), list) else []


def _roles_of(play: dict) -> list[str]:
    roles = [item if isinstance(item, str) else item.get("role") or item.get("name")
             for item in _listed(play, "roles") if isinstance(item, (str, dict))]
    for section in _PLAY_LISTS[1:]:
        for task in _listed(play, section):
            for module in _ROLE_MODULES:
                if isinstance(task, dict) and isinstance(task.get(module), dict):
                    roles.append(task[module].get("name"))
    return [r for r in roles if isinstance(r, str) and "{{" not in r and "." not in r]


def _read_platform(scan: Scan, name: str, path: Path) -> tuple[Platform, list[Problem]]:
    plays, problems = _plays(scan, path)
    own = [p for p in plays if f"platform_{name}" in str(p.get("hosts", ""))] or plays
    platform = Platform(name, path)
    platform.roles = [role for play in plays for role in _roles_of(play)]
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


def _ansible_hosts(inv_path: Path, scan: Scan, password: bytes | None,
                  limit: str | None = None) -> tuple[list[_Host], list[str] | None]:
    """The hosts with their variables, and the names ``limit`` selects (None: no limit)."""
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
                               [os.path.realpath(f) for f in files]))
        limited = None
        if limit and not limit.startswith("@"):  # @FILE: a list of hosts Ansible reads
            limited = [h.name for h in manager.get_hosts(pattern=limit)]
    except Exception as exc:  # Ansible's parse errors come as its own exception types
        raise Refused([Problem(_rel(inv_path, scan.checkout), None,
                               f"inventory: {_one_line(exc)}")]) from None
    if not hosts:
        raise Refused([Problem(_rel(inv_path, scan.checkout), None, "inventory has no hosts")])
    return hosts, limited


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
        elif not any("{{" in tag or "{%" in tag for tag in known):  # templated: unknowable
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
            return {}, [Problem(_rel(spec, scan.checkout), None,
                                f"expected a mapping above '{key}' (argument_specs: main: "
                                f"options: ...), not {_kind(data)}")]
        data = options = data.get(key)
    if not isinstance(options, (dict, type(None))):
        return {}, [Problem(_rel(spec, scan.checkout), _line_of(spec, "options:"),
                            f"argument_specs: main: options: must be a mapping, not "
                            f"{_kind(options)}")]
    wrong = [name for name, option in (options or {}).items() if not isinstance(option, dict)]
    if wrong:
        return {}, [Problem(_rel(spec, scan.checkout), _line_of(spec, f"{wrong[0]}:"),
                            f"option '{wrong[0]}' must be a mapping (type, default...)")]
    return options or {}, []


def _templated(value) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_templated(k) or _templated(v) for k, v in value.items())
    return isinstance(value, list) and any(_templated(item) for item in value)


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
        return f"must be {expected}, not {_kind(value)}"
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
            return _rel(Path(real), scan.root), line
    return inv_rel, None


def _type_problems(scan: Scan, hosts: list[_Host], options: dict, source: str,
                   inv_rel: str) -> list[Problem]:
    """Host variables whose value does not fit their option's type, one problem per place
    that sets them, naming the hosts."""
    wrong: dict[tuple, list[str]] = {}
    for var, option in options.items():
        for host in hosts:
            value = host.values.get(var)
            why = None if _templated(value) else _mismatch(value, option)
            if why:
                wrong.setdefault((*_where(scan, host, var, inv_rel), var, why), []).append(
                    host.name)
    return [Problem(file, line, f"variable '{var}' {why} ({source}; host(s) {', '.join(names)})")
            for (file, line, var, why), names in wrong.items()]


# Ansible's connection variables the pre-flight reads, as an argument spec.
_CONNECTION_OPTIONS = {"ansible_host": {"type": "str"}, "ansible_port": {"type": "int"},
                      "ansible_user": {"type": "str"}, "ansible_connection": {"type": "str"}}


def _role_problems(scan: Scan, hosts: list[_Host], role: str, inv_rel: str) -> list[Problem]:
    """Required variables that hosts lack, and variables whose type is not the spec's."""
    spec = scan.checkout / "roles" / role / "meta" / "argument_specs.yml"
    options, problems = _options(scan, spec)
    spec_rel = _rel(spec, scan.checkout)
    for var, option in options.items():
        missing = sorted(h.name for h in hosts if var not in h.values)
        if option.get("required") and "default" not in option and missing:
            problems.append(Problem(spec_rel, _line_of(spec, f"{var}:"),
                                    f"role '{role}' requires variable '{var}', not set "
                                    f"for host(s) {', '.join(missing)}"))
    return problems + _type_problems(scan, hosts, options, spec_rel, inv_rel)


def _check_roles(scan: Scan, platforms, hosts: list[_Host], targets, inv_rel) -> list[Problem]:
    problems = []
    for platform in sorted({t.platform for t in targets.values()} & set(platforms)):
        known = platforms[platform]
        members = [h for h in hosts if targets[h.name].platform == platform]
        for role in dict.fromkeys(known.roles):
            if not (scan.checkout / "roles" / role / "tasks").is_dir():
                problems.append(Problem(_rel(known.playbook, scan.checkout),
                                        _line_of(known.playbook, role),
                                        f"role '{role}' not found (no roles/{role}/tasks)"))
                continue
            problems += _role_problems(scan, members, role, inv_rel)
            problems += _check_role_files(scan, role, members)
    return problems


# A file check of meta/gitops.yml: {key: (type, what it is)}.
_FILE_CHECK_KEYS = {
    "dirs_var": (str, "the inventory variable that lists the directories (relative to the "
                      "repository root; unset: the role's defaults/main.yml)"),
    "what": (str, "what the files are, in messages ('manifest')"),
    "documents_require": (list, "keys every YAML document of the files must set"),
}
_HOSTNAME_VAR = re.compile(r"{{\s*inventory_hostname\s*}}")


def _file_checks(scan: Scan, role: str) -> tuple[list[dict], list[Problem]]:
    path = scan.checkout / "roles" / role / "meta" / "gitops.yml"
    data = scan.load(path) if path.is_file() else None
    rel = _rel(path, scan.checkout)
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
    unknown = sorted(set(check) - set(_FILE_CHECK_KEYS))
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
        if "{{" not in item and "{%" not in item:  # other templating: the role checks it
            out.append(item)
    return out


def _check_role_files(scan: Scan, role: str, hosts: list[_Host]) -> list[Problem]:
    """The role's file checks (meta/gitops.yml) for every host: the directories exist
    inside the checkout, every file is YAML, every document has the keys required. Files
    with Jinja2 in them are checked by the role after rendering."""
    checks, problems = _file_checks(scan, role)
    defaults = scan.load(scan.checkout / "roles" / role / "defaults" / "main.yml")
    seen: set[Path] = set()
    for check in checks:
        for host in sorted(hosts, key=lambda h: h.name):
            for rel in _dirs(host, check["dirs_var"], defaults):
                base, what = scan.checkout / rel, f"host '{host.name}': {check['what']} directory"
                outside = _within(base, scan.checkout, scan.root, what)
                if not outside and not base.is_dir():
                    outside = [Problem(rel, None, f"{what} not found")]
                if outside:
                    problems += outside
                    continue
                for path in _files(base, scan.checkout, scan.root, problems):
                    if path.suffix in (".yml", ".yaml") and path not in seen:
                        seen.add(path)
                        problems += _check_documents(path, _rel(path, scan.checkout),
                                                     check["documents_require"])
    return problems


def _check_documents(path: Path, rel: str, required: list) -> list[Problem]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(rel, None, f"cannot read: {exc}")]
    if "{{" in text or "{%" in text:
        return []
    problems = []
    try:
        for number, doc in enumerate(yaml.compose_all(text, Loader=_Loader), 1):
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
    except _YAML_ERRORS as exc:
        problems.append(_yaml_problem(rel, exc))
    return problems


# --- The entry point --------------------------------------------------------------------

def _checkout_files(checkout: Path, root: Path, bases: list[Path]) -> list[Path]:
    """The files of the inventory, playbook and roles directories, or ``Refused`` (before
    any file is read: a link leading outside is never followed)."""
    problems = [p for base in bases[1:] for p in _within(base, checkout, root, "the directory")]
    problems += _within(checkout / "ansible.cfg", checkout, root, "the run's Ansible settings")
    _refuse(problems)
    files = [path for base in bases if base.is_dir()
             for path in _files(base, checkout, root, problems)]
    _refuse(problems)
    return files


def _scan(checkout: Path, root: Path, inv_path: Path, files: list[Path], vault) -> Scan:
    scan = Scan(checkout, root, vault)
    for path in files:
        parts = path.relative_to(checkout).parts
        if _read_by_ansible(parts):
            shape = _VARS_SHAPE if _is_vars_file(parts) else \
                _INVENTORY_SHAPE if path.parent == inv_path else None
            scan.file(path, shape, _names_paths(parts, inv_path in path.parents))
    return scan


def load(checkout: Path, settings) -> Inventory:
    """Load and validate the environment ``settings.env`` of ``checkout``; raise ``Refused``."""
    root = checkout.resolve()
    inv_path = _environment(checkout, root, settings)
    playbook_dir = (checkout / settings.playbook).parent
    files = _checkout_files(checkout, root, [inv_path, playbook_dir, checkout / "roles"])
    password = _read_vault_password(settings, checkout)
    scan = _scan(checkout, root, inv_path, files, _vault(password))
    _refuse(scan.problems + _outside_refs(scan, scan.refs, playbook_dir.resolve()))
    checked = len(scan.refs)  # the platform playbooks may be read only now
    platforms, problems = _read_platforms(scan, settings.playbook)
    _refuse(problems + scan.problems
            + _outside_refs(scan, scan.refs[checked:], playbook_dir.resolve()))
    hosts, limited = _ansible_hosts(inv_path, scan, password, settings.limit)
    targets = {host.name: _target(host, platforms) for host in hosts}
    inv_rel = f"{settings.inventory_dir}/{settings.env}"
    problems = _check_targets(targets, platforms, scan, settings.inventory_dir, settings.env)
    problems += _check_selection(scan, settings, inv_rel, hosts, limited,
                                 [playbook_dir.resolve(), (checkout / "roles").resolve()])
    problems += _type_problems(scan, hosts, _CONNECTION_OPTIONS, "a connection variable", inv_rel)
    _refuse(problems + _check_roles(scan, platforms, hosts, targets, inv_rel) + scan.problems)
    return Inventory(settings.env, inv_path, targets, scan.secrets)
