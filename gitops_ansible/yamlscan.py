"""YAML: every file Ansible will read, parsed once, safely, before Ansible reads it.

The parse (libyaml when present) refuses duplicate keys, aliases that expand a document
by more than ``MAX_ALIAS_NODES`` nodes or into themselves, unknown and ``!!python`` tags,
several documents in one file, and vars and inventory files that are not mappings; it
decrypts vault files and ``!vault`` values (their plain texts become secrets) and checks
what they hold like any other file. ``Scan`` keeps what each file holds (served to
Ansible's inventory load), the nodes of playbooks and role files (their lines, for
``fqcn``), the line of each top-level key, where ``platform`` is set and the static paths
that playbooks and roles name (checked by ``boundary``; not those of files outside the
checkout: installed roles and collections).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from .problems import Problem, Refused, first_line, relative


VAULT_HEADER = "$ANSIBLE_VAULT"
# Nodes that aliases may add to a document beyond those written: far above any real
# inventory, far below what hangs a parser (a "billion laughs" document adds 10**9).
MAX_ALIAS_NODES = 1_000_000

# Keys whose static value names a file Ansible reads, or a role (a path when it has a /).
_FILE_KEYS = ("import_playbook", "include_vars", "vars_files", "include_tasks", "import_tasks")
ROLE_KEYS = ("roles", "include_role", "import_role", "dependencies")
_REF_KEYS = {prefix + key for key in _FILE_KEYS + ROLE_KEYS
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


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe YAML (libyaml when present: several times faster) with Ansible's own tags:
    !unsafe (the value as written) and !vault (decrypted by the scan)."""

    scan: Scan
    rel: str


def _construct_unsafe(loader: Loader, node):
    plain = copy.copy(node)
    plain.tag = loader.resolve(type(node), node.value, (True, False))
    return loader.construct_object(plain, deep=True)


def _construct_vault(loader: Loader, node):
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, f"the {node.tag} tag requires a "
                                                "string value", node.start_mark)
    return loader.scan.vault_value(loader.rel, node.start_mark.line + 1, node.value)


Loader.add_constructor("!unsafe", _construct_unsafe)
Loader.add_constructor("!vault", _construct_vault)
Loader.add_constructor("!vault-encrypted", _construct_vault)


class _Bad(Exception):
    def __init__(self, line: int, message: str):
        self.line, self.message = line, message


# What bad YAML raises: PyYAML's errors, and the constructors' own (`!!int x`, `!!float y`).
YAML_ERRORS = (yaml.YAMLError, RecursionError, ValueError, TypeError)


def yaml_problem(rel: str, exc: Exception) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError):
        detail = " ".join(str(part) for part in (exc.context, exc.problem) if part)
    else:
        detail = first_line(exc)
    return Problem(rel, mark.line + 1 if mark else None, f"invalid YAML: {detail}")


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def kind_of(value) -> str:
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
        self.nodes: dict[str, yaml.Node] = {}  # real path -> its node: playbooks, role tasks
        self.lines: dict[str, dict[str, int]] = {}  # real path -> {top-level key: line}
        self.platform_marks: dict[str, list[tuple[str, int]]] = {}
        self.refs: list[tuple[str, int, str, str, Path]] = []  # file, line, key, value, path
        self.secrets: set[str] = set()
        self._vault_problem: set[str] = set()

    def load(self, path: Path):
        """What ``path`` holds (parsed now if not yet); None when empty or refused. The
        static paths of a file outside the checkout (an installed role or collection) are
        not the checkout's to check."""
        real = str(path.resolve())
        if real not in self.data and path.is_file():
            self.file(path, shape=None, refs=Path(real).is_relative_to(self.root), keep=True)
        return self.data.get(real)

    def node(self, path: Path):
        """The YAML node of a playbook, role tasks or meta file (where what it names is
        written), parsed now if not yet."""
        real = os.path.realpath(path)
        if real not in self.data:
            self.load(path)
        return self.nodes.get(real)

    def file(self, path: Path, shape: str | None, refs: bool, keep: bool = False) -> None:
        """Parse one file. ``shape``: what the file must be when it must be a mapping (a
        vars file, an inventory file); ``refs``: collect the static paths it names
        (playbooks, role tasks and meta); ``refs`` or ``keep``: keep its node."""
        rel, real = relative(path, self.checkout), str(path.resolve())
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
            self.data[real] = self._parse(text, rel, real, shape, refs, refs or keep)
        except _Bad as bad:
            problem = Problem(rel, bad.line, bad.message)
        except YAML_ERRORS as exc:
            problem = yaml_problem(rel, exc)
        else:
            if decrypted:
                _leaf_strings(self.data[real], self.secrets)
            return
        if decrypted:  # the line is one of the plain text
            problem.message = f"after decryption: {problem.message}"
        self.problems.append(problem)

    def _parse(self, text: str, rel: str, real: str, shape: str | None, refs: bool,
               keep: bool):
        loader = Loader(text)
        loader.scan, loader.rel = self, rel
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            self._walk(node, rel, real, refs)
            if shape and not isinstance(node, yaml.MappingNode):
                raise _Bad(node.start_mark.line + 1, f"{shape}, not {kind_of(node)}")
            if isinstance(node, yaml.MappingNode):
                self.lines[real] = {k.value: k.start_mark.line + 1 for k, _ in node.value
                                    if isinstance(k, yaml.ScalarNode)}
            data = loader.construct_document(node)
            if keep:
                self.nodes[real] = node
            return data
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
        plain = self._decrypt(rel, line, ciphertext)
        return ciphertext if plain is None else plain

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
                                                    f"{first_line(exc)}"))
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


def read_vault_password(settings, checkout: Path) -> bytes | None:
    if not settings.vault_password_file:
        return None
    path = Path(settings.vault_password_file).expanduser()
    path = path if path.is_absolute() else checkout / path
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise Refused([Problem(str(path), None, f"vault_password_file: cannot read: "
                               f"{exc.strerror}")]) from None


def vault_lib(password: bytes | None):
    if password is None:
        return None
    from ansible.parsing.vault import VaultLib, VaultSecret

    return VaultLib([("default", VaultSecret(password))])


def scan_files(checkout: Path, root: Path, inv_path: Path, files: list[Path], vault) -> Scan:
    """Parse those of ``files`` that Ansible reads as YAML; the vars and inventory files
    of ``inv_path`` must be mappings."""
    scan = Scan(checkout, root, vault)
    for path in files:
        parts = path.relative_to(checkout).parts
        if _read_by_ansible(parts):
            shape = _VARS_SHAPE if _is_vars_file(parts) else \
                _INVENTORY_SHAPE if path.parent == inv_path else None
            scan.file(path, shape, _names_paths(parts, inv_path in path.parents))
    return scan


def templated(value) -> bool:
    """Does a value hold Jinja2 (``{{`` or ``{%``)? Such a value is Ansible's to resolve."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(templated(k) or templated(v) for k, v in value.items())
    return isinstance(value, list) and any(templated(item) for item in value)
