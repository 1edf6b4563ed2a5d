"""Fully qualified names (``namespace.collection.name``) in what the run executes, and
whether they resolve where the run's Ansible looks: a missing collection or a misspelled
module is refused before any target is touched, naming the file and line.

What is read: what Ansible loads before the first task, from the scan's YAML nodes (the
checkout's files, and those of installed roles and collections): the entry playbook and
those it imports, their plays (blocks included), the roles they apply (``roles:``,
``import_role`` and ``include_role`` with a literal name, ``meta/main.yml``
dependencies) with those roles' entry tasks file, ``handlers/main.yml`` and the files
they ``import_tasks``. Ansible resolves modules when it loads a playbook, even in a play
no host matches or a task skipped by ``when``: a module that does not resolve fails
every run. Checked there: modules and actions (a task's key, ``action``/``local_action``),
lookups (``lookup``/``query``/``q`` in templated strings and conditions, ``with_<name>``
loops), filters and tests (only that their collection is installed: one plugin file
holds many) and collection roles.

Not read: short names (no dots, Ansible's to resolve; the ``collections:`` keyword's
search for them is not followed); files ``include_tasks`` includes (dynamic: Ansible
resolves them only when a host reaches them, and public roles include per-system files
with modules that other systems lack); templates (``.j2``) and role variables.

Where Ansible looks (its collection finder): ``collections/`` beside the entry playbook,
the configured directories (``SearchPaths.collections``), then every ``sys.path`` entry
that holds ``ansible_collections/``; the first directory holding a collection wins.
Within a collection, ``meta/runtime.yml`` routing first (a redirect is followed, a
tombstone is refused with its text), then ``plugins/<kind>/<name>.*`` or
``roles/<name>``. ``ansible.builtin`` and ``ansible.legacy`` are ansible-core's own
plugins with its ``config/ansible_builtin_runtime.yml``.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from .boundary import is_a
from .problems import Problem, relative
from .yamlscan import Scan, templated

_PART = r"[A-Za-z_]\w*"
NAME = rf"{_PART}\.{_PART}\.{_PART}(?:\.{_PART})*"
_FQCN = re.compile(rf"{NAME}\Z")
_LOOKUP = re.compile(rf"\b(?:lookup|query|q)\(\s*['\"]({NAME})['\"]")
_FILTER = re.compile(rf"\|\s*({NAME})")
_TEST = re.compile(rf"\bis\s+(?:not\s+)?({NAME})")
_STRING = re.compile(r"'[^']*'|\"[^\"]*\"")
_EXPRESSION = re.compile(r"{{.*?}}|{%.*?%}", re.S)
_CONDITIONS = {"when", "changed_when", "failed_when", "until"}  # Jinja without braces

CORE = ("ansible.builtin", "ansible.legacy")
# kind: (its section of plugin_routing, its directory in a collection, in ansible-core)
_PLUGINS = {"module": ("modules", "plugins/modules", "modules"),
            "action": ("action", "plugins/action", "plugins/action"),
            "lookup": ("lookup", "plugins/lookup", "plugins/lookup")}
MAX_REDIRECTS = 10


def is_fqcn(name: str) -> bool:
    return bool(_FQCN.match(name))


def _split(name: str) -> tuple[str, str]:
    """'ns.coll.name' -> ('ns.coll', 'name'); a module in a subdirectory keeps its dots."""
    namespace, collection, short = name.split(".", 2)
    return f"{namespace}.{collection}", short


class Collections:
    """The collections the run's Ansible finds, and what they hold (read when asked, once)."""

    def __init__(self, paths: list[Path]):
        self.paths: list[Path] = []
        for path in paths:
            path = path.parent if path.name == "ansible_collections" else path
            if path not in self.paths and (path / "ansible_collections").is_dir():
                self.paths.append(path)
        self._dirs: dict[str, Path | None] = {}
        self._routing: dict[str, dict] = {}
        self._why: dict[tuple[str, str], str | None] = {}
        self._stems: dict[Path, set[str]] = {}

    @classmethod
    def of(cls, configured: tuple[Path, ...], playbook_dir: Path) -> Collections:
        """Ansible's order: beside the playbook, configured, then sys.path ('' is the
        run's working directory, not ours: left out)."""
        return cls([playbook_dir / "collections", *configured,
                    *(Path(p) for p in sys.path if p)])

    @cached_property
    def core(self) -> Path:
        """ansible-core's package directory."""
        import ansible
        return Path(ansible.__file__).parent

    def directory(self, collection: str) -> Path | None:
        if collection not in self._dirs:
            namespace, name = collection.split(".")
            found = (p / "ansible_collections" / namespace / name for p in self.paths)
            self._dirs[collection] = next((d for d in found if d.is_dir()), None)
        return self._dirs[collection]

    def _not_installed(self, collection: str) -> str:
        searched = ", ".join(map(str, self.paths)) or "no directory holds ansible_collections/"
        return f"collection '{collection}' is not installed (searched: {searched})"

    def _label(self, collection: str) -> str:
        """'collection ns.coll 1.2.0', 'ansible-core 2.21.0': what was searched, in messages."""
        if collection in CORE:
            from ansible.release import __version__
            return f"ansible-core {__version__} ({collection})"
        version = _version(self.directory(collection))
        return f"collection '{collection}'" + (f" {version}" if version else "")

    def routing(self, collection: str) -> dict:
        """plugin_routing of the collection's meta/runtime.yml (ansible-core's for the
        core names)."""
        if collection not in self._routing:
            base = self.directory(collection) if collection not in CORE else None
            path = self.core / "config" / "ansible_builtin_runtime.yml" if collection in CORE \
                else base / "meta" / "runtime.yml" if base else None
            self._routing[collection] = _plugin_routing(path)
        return self._routing[collection]

    def why_not(self, kind: str, name: str) -> str | None:
        """None when ``name`` (module, lookup, role, filter or test) resolves as Ansible
        resolves it, else why not."""
        if (kind, name) not in self._why:
            self._why[kind, name] = self._resolve(kind, name)
        return self._why[kind, name]

    def _resolve(self, kind: str, name: str) -> str | None:
        collection, short = _split(name)
        if collection not in CORE and self.directory(collection) is None:
            return self._not_installed(collection)
        if kind in ("filter", "test"):
            return None
        if kind == "role":
            if collection in CORE:
                return f"{collection} has no roles"
            roles = self.directory(collection) / "roles"
            return None if (roles / short).is_dir() else self._absent(collection, roles,
                                                                      "role", short)
        if kind == "lookup":
            return self._plugin("lookup", name)
        why = self._plugin("module", name)  # a task's action: a module or an action
        other = why and self._plugin("action", name)
        if not other:
            return None
        # the section whose routing names it explains best (core's include: an action)
        return other if self._route("action", name) and not self._route("module", name) \
            else why

    def _route(self, kind: str, name: str) -> dict:
        """The routing entry of a plugin (redirect, tombstone, deprecation), or {}."""
        collection, short = _split(name)
        section = self.routing(collection).get(_PLUGINS[kind][0]) or {}
        entry = section.get(short) if isinstance(section, dict) else None
        return entry if isinstance(entry, dict) else {}

    def _plugin(self, kind: str, name: str) -> str | None:
        """Why the plugin does not resolve, its redirects followed (None: it does)."""
        chain = [name]
        while True:
            why, target = self._step(kind, chain[-1])
            if target is None:
                break
            if target in chain:
                return "redirects in a loop: " + " -> ".join([*chain, target])
            if len(chain) > MAX_REDIRECTS:
                return f"more than {MAX_REDIRECTS} redirects: " + " -> ".join(chain)
            chain.append(target)
        return f"redirected to '{chain[-1]}': {why}" if why and len(chain) > 1 else why

    def _step(self, kind: str, name: str) -> tuple[str | None, str | None]:
        """(why it does not resolve, None) or (None, where it redirects to)."""
        collection, short = _split(name)
        in_collection, in_core = _PLUGINS[kind][1:]
        if collection in CORE:
            base, core = self.core / in_core, True
            # Core's routing names plugins that left it (and deprecates a few it keeps):
            # read only for a name it does not have (it is large).
            if self._has(base, short):
                return None, None
        else:
            base = self.directory(collection)
            if base is None:
                return self._not_installed(collection), None
            base, core = base / in_collection, False
        entry = self._route(kind, name)
        if isinstance(entry.get("tombstone"), dict):
            return _removed(entry["tombstone"]), None
        target = entry.get("redirect")
        if isinstance(target, str) and is_fqcn(target):
            return None, target
        if core and collection == "ansible.legacy":
            return None, None  # also a configured library directory's: Ansible's to find
        if not core and self._has(base, short):
            return None, None
        return self._absent(collection, base, kind, short), None

    def _has(self, base: Path, short: str) -> bool:
        *subdirs, stem = short.split(".")
        return stem in self._names_in(base.joinpath(*subdirs))

    def _names_in(self, directory: Path) -> set[str]:
        """The plugin names of a directory: its entries without their extension."""
        if directory not in self._stems:
            try:
                self._stems[directory] = {os.path.splitext(e)[0] for e in os.listdir(directory)}
            except OSError:
                self._stems[directory] = set()
        return self._stems[directory]

    def _absent(self, collection: str, base: Path, kind: str, short: str) -> str:
        close = difflib.get_close_matches(short, sorted(self._names_in(base) - {"__init__"}), 1)
        hint = f" (did you mean '{collection}.{close[0]}'?)" if close else ""
        return f"{self._label(collection)} has no {kind} '{short}'{hint}"


def _version(collection: Path) -> str:
    """An installed collection's version (MANIFEST.json; galaxy.yml in a source tree)."""
    try:
        return str(json.loads((collection / "MANIFEST.json").read_text())["collection_info"]
                   ["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        data = yaml.safe_load((collection / "galaxy.yml").read_text())
        return str(data["version"]) if isinstance(data, dict) and "version" in data else ""
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ""


def _plugin_routing(path: Path | None) -> dict:
    """An unreadable runtime.yml routes nothing (Ansible reports it itself)."""
    if path is None:
        return {}
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    routing = data.get("plugin_routing") if isinstance(data, dict) else None
    return routing if isinstance(routing, dict) else {}


def _removed(tombstone: dict) -> str:
    version, date = tombstone.get("removal_version"), tombstone.get("removal_date")
    when = f" in {version}" if version else f" on {date}" if date else ""
    text = str(tombstone.get("warning_text") or "").strip()
    return f"was removed{when}" + (f": {text}" if text else "")


# --- What the run executes --------------------------------------------------------------

@dataclass(frozen=True)
class Use:
    """A fully qualified name the run uses, where it is written."""
    kind: str  # module, lookup, filter, test
    name: str
    file: str
    line: int


@dataclass(frozen=True)
class RoleRef:
    """A role a playbook or role applies, and where it was found (None: why not)."""
    name: str
    file: str
    line: int
    path: Path | None
    why: str | None = None  # ' not found (searched ...)', ': collection ...'
    entry: str = "main"  # its tasks file (import_role's tasks_from)

    @property
    def problem(self) -> Problem | None:
        return Problem(self.file, self.line, f"role '{self.name}'{self.why}") \
            if self.why else None


@dataclass(frozen=True)
class _Context:
    """Where a task list is: its file, its role's directory, the play's collections."""
    path: Path
    role: Path | None = None
    collections: tuple[str, ...] = ()


_TASK_LISTS = ("pre_tasks", "tasks", "post_tasks", "handlers")
_BLOCK_LISTS = ("block", "rescue", "always")


def _core_short(key: str) -> str:
    for prefix in CORE:
        if key.startswith(prefix + "."):
            return key[len(prefix) + 1:]
    return key


def _pairs(node) -> dict:
    """A mapping node's {key: (key node, value node)} (merge keys left out)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: (k, v) for k, v in node.value
            if isinstance(k, yaml.ScalarNode) and k.value != "<<"}


def _items(node) -> list:
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _text(node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def entry_file(directory: Path, name: str) -> Path | None:
    """A role's tasks/handlers/meta file as Ansible finds it: NAME, NAME.yml, NAME.yaml."""
    for candidate in (f"{name}.yml", f"{name}.yaml", name):
        if is_a("file", directory / candidate):
            return directory / candidate
    return None


class Walk:
    """The plays, tasks and roles the run executes, read once each: the fully qualified
    names they use (``uses``) and the roles they apply (``applied``)."""

    def __init__(self, scan: Scan, collections: Collections, role_paths: tuple[Path, ...],
                 playbook_dir: Path):
        self.scan, self.collections = scan, collections
        # Ansible's search for a role: roles/ beside the playbook, the roles path, the
        # playbook's own directory.
        self.role_paths = [playbook_dir / "roles", *role_paths, playbook_dir]
        self.uses: dict[Use, None] = {}
        self.refs: dict[RoleRef, None] = {}
        # What a change-scoped run needs (scope.py): the files naming a role by a template
        # (which role runs is known only at run time), and the playbooks each one imports.
        self.templated: set[str] = set()
        self.imports: dict[str, list[str]] = {}
        self._files: dict[tuple, list] = {}
        self._scanned: set[tuple[int, bool]] = set()
        self._rel: dict[Path, str] = {}

    def applied(self, playbook: Path) -> list[RoleRef]:
        """The roles a playbook applies, those its roles apply included, in order."""
        return self._closure(self._playbook(playbook))

    def plays(self, playbook: Path) -> list[tuple[str | None, list[RoleRef]]]:
        """Each play of a playbook: its ``hosts`` pattern (None: a playbook it imports, or
        not a literal) and the roles it applies, theirs included."""
        return [(hosts, self._closure(refs)) for hosts, refs in self._plays(playbook)]

    def _closure(self, refs: list[RoleRef]) -> list[RoleRef]:
        todo, out, seen = list(refs), [], set()
        while todo:
            ref = todo.pop(0)
            out.append(ref)
            if ref.path is not None and (ref.path, ref.entry) not in seen:
                seen.add((ref.path, ref.entry))
                todo += self._role(ref.path, ref.entry)
        return out

    def problems(self) -> list[Problem]:
        found = [ref.problem for ref in self.refs if ref.problem]
        for use in self.uses:
            why = self.collections.why_not(use.kind, use.name)
            if why:
                found.append(Problem(use.file, use.line, f"{use.kind} '{use.name}': {why}"))
        return sorted(found, key=lambda problem: (problem.file, problem.line or 0))

    # --- files ---

    def _node(self, path: Path):
        node = self.scan.node(path)
        if node is not None:
            self._expressions(node, path, False)
        return node

    def _once(self, key: tuple, read) -> list:
        if key not in self._files:
            self._files[key] = []  # a file that imports itself: read once
            self._files[key] = read()
        return self._files[key]

    def _playbook(self, path: Path) -> list[RoleRef]:
        return [ref for _, refs in self._plays(path) for ref in refs]

    def _plays(self, path: Path) -> list[tuple[str | None, list[RoleRef]]]:
        """(hosts pattern, roles) of each play of a playbook, read once."""
        return self._once(("playbook", os.path.realpath(path)), lambda: self._read_plays(path))

    def _read_plays(self, path: Path) -> list[tuple[str | None, list[RoleRef]]]:
        plays = []
        for play in _items(self._node(path)):
            pairs, refs = _pairs(play), []
            imported = next((pairs[k][1] for k in pairs if _core_short(k) == "import_playbook"),
                            None)
            target = _text(imported)
            if target is not None and not templated(target):
                if is_a("file", path.parent / target):
                    self.imports.setdefault(self._relative(path), []).append(
                        self._relative(path.parent / target))
                    plays.append((None, self._playbook(path.parent / target)))
                continue
            here = _Context(path, None, _names(pairs.get("collections", (None, None))[1]))
            if "roles" in pairs:
                refs += [self._find(item, here) for item in _items(pairs["roles"][1])]
            for key in _TASK_LISTS:
                if key in pairs:
                    refs += self._tasks(pairs[key][1], here)
            hosts = _text(pairs.get("hosts", (None, None))[1])
            plays.append((None if hosts is None or templated(hosts) else hosts,
                          [ref for ref in refs if ref is not None]))
        return plays

    def _role(self, role: Path, entry: str) -> list[RoleRef]:
        def read() -> list[RoleRef]:
            meta = entry_file(role / "meta", "main")
            meta_pairs = _pairs(self._node(meta)) if meta else {}
            collections = _names(meta_pairs.get("collections", (None, None))[1])
            refs = []
            for directory, name in (("tasks", entry), ("handlers", "main")):
                found = entry_file(role / directory, name)
                if found:
                    refs += self._tasks(self._node(found), _Context(found, role, collections))
            deps = meta_pairs.get("dependencies", (None, None))[1]
            refs += [self._find(item, _Context(meta, role, collections)) for item in _items(deps)]
            return [ref for ref in refs if ref is not None]
        return self._once(("role", os.path.realpath(role), entry), read)

    # --- tasks ---

    def _tasks(self, node, here: _Context) -> list[RoleRef]:
        refs = []
        for task in _items(node):
            pairs = _pairs(task)
            for key in _BLOCK_LISTS:
                if key in pairs:
                    refs += self._tasks(pairs[key][1], here)
            for key, (key_node, value) in pairs.items():
                refs += self._task_key(key, key_node, value, here)
        return refs

    def _task_key(self, key: str, key_node, value, here: _Context) -> list[RoleRef]:
        short = _core_short(key)
        if key.startswith("with_"):
            if is_fqcn(key[5:]):
                self._use("lookup", key[5:], here.path, key_node)
        elif is_fqcn(key):
            self._use("module", key, here.path, key_node)
        elif key in ("action", "local_action"):  # `action: MODULE ARGS`, or {module: M}
            words = (_text(_pairs(value).get("module", (None, None))[1]) or _text(value)
                     or "").split()
            if words and is_fqcn(words[0]):
                self._use("module", words[0], here.path, value)
        if short in ("import_role", "include_role"):
            return self._role_task(value, here)
        if short == "import_tasks":
            return self._import_tasks(value, here)
        return []

    def _role_task(self, value, here: _Context) -> list[RoleRef]:
        if not isinstance(value, yaml.MappingNode):
            return []  # `name=x` and other forms: Ansible's to parse
        tasks_from = _text(_pairs(value).get("tasks_from", (None, None))[1])
        entry = "main" if not tasks_from or templated(tasks_from) else \
            os.path.splitext(tasks_from)[0]
        ref = self._find(value, here, entry)
        return [ref] if ref else []

    def _import_tasks(self, value, here: _Context) -> list[RoleRef]:
        name = _text(value) or _text(_pairs(value).get("file", (None, None))[1])
        if not name or templated(name):
            return []
        bases = [here.role / "tasks"] if here.role else []
        found = next((base / name for base in [*bases, here.path.parent]
                      if is_a("file", base / name)), None)
        if found is None:
            return []  # a file that does not exist: Ansible's error, with its own words
        inner = _Context(found, here.role, here.collections)
        return self._once(("tasks", os.path.realpath(found), here.role),
                          lambda: self._tasks(self._node(found), inner))

    # --- names ---

    def _relative(self, path: Path) -> str:
        if path not in self._rel:
            self._rel[path] = relative(path, self.scan.checkout)
        return self._rel[path]

    def _use(self, kind: str, name: str, path: Path, node, line: int | None = None) -> None:
        self.uses[Use(kind, name, self._relative(path), line or node.start_mark.line + 1)] = None

    def _find(self, item, here: _Context, entry: str = "main") -> RoleRef | None:
        """Where Ansible finds the role an entry names (a string, or role:/name:)."""
        pairs = _pairs(item)
        node = pairs.get("role", pairs.get("name", (None, item)))[1]
        name = _text(node)
        if name and templated(name):
            self.templated.add(self._relative(here.path))
        if not name or templated(name):
            return None
        ref = self._locate(name, here)
        ref = RoleRef(name, self._relative(here.path), node.start_mark.line + 1,
                      *ref, entry)
        self.refs[ref] = None
        return ref

    def _locate(self, name: str, here: _Context) -> tuple[Path | None, str | None]:
        why = None
        if is_fqcn(name):
            why = self.collections.why_not("role", name)
            if why is None:
                collection, short = _split(name)
                return self.collections.directory(collection) / "roles" / short, None
        else:  # a short name: the collection of the role it is in, then `collections:`
            for collection in (*_collection_of(here.role), *here.collections):
                if is_fqcn(f"{collection}.{name}") and \
                        self.collections.why_not("role", f"{collection}.{name}") is None:
                    return self.collections.directory(collection) / "roles" / name, None
        bases = [here.path.parent, *self.role_paths] if "/" in name else self.role_paths
        for base in bases:
            if is_a("dir", base / name):
                return base / name, None
        return None, f": {why}" if why else f" not found (searched {self._searched()})"

    def _searched(self) -> str:
        existing = [p for p in self.role_paths if p.is_dir()] or self.role_paths
        return ", ".join(relative(p, self.scan.checkout).rstrip("/") + "/" for p in existing)

    def _expressions(self, node, path: Path, condition: bool) -> None:
        """Lookups, filters and tests in templated strings and conditions, anywhere in a
        file (each mapping and list once: aliases share theirs)."""
        if isinstance(node, yaml.ScalarNode):
            text = node.value
            if "." in text and (condition or "{" in text):  # cheap: most values are neither
                self._expression_names(node, path, condition)
            return
        if (id(node), condition) in self._scanned:
            return
        self._scanned.add((id(node), condition))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self._expressions(value, path, _text(key) in _CONDITIONS)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._expressions(item, path, condition)

    def _expression_names(self, node: yaml.ScalarNode, path: Path, condition: bool) -> None:
        text = node.value
        regions = [(0, text)] if condition else \
            [(m.start(), m.group()) for m in _EXPRESSION.finditer(text)]
        for start, region in regions:
            bare = _STRING.sub("''", region)  # a '|' inside a string is no filter
            found = [(m.start(1), "lookup", m.group(1)) for m in _LOOKUP.finditer(region)]
            found += [(m.start(1), kind, m.group(1)) for kind, pattern in
                      (("filter", _FILTER), ("test", _TEST)) for m in pattern.finditer(bare)]
            for offset, kind, name in found:
                line = node.start_mark.line + 1
                if node.style == "|":  # a literal block: its lines are the file's
                    line += 1 + text[:start + offset].count("\n")
                self._use(kind, name, path, node, line)


def _names(node) -> tuple[str, ...]:
    """A `collections:` list (ns.coll names)."""
    return tuple(t for t in map(_text, _items(node)) if t and t.count(".") == 1)


def _collection_of(role: Path | None) -> tuple[str, ...]:
    """'ns.coll' for a role inside an installed collection."""
    parts = role.parts if role else ()
    if len(parts) > 4 and parts[-5] == "ansible_collections" and parts[-2] == "roles":
        return (f"{parts[-4]}.{parts[-3]}",)
    return ()
