"""Collections and roles a revision requires, and where Ansible finds them.

A revision's ``collections/requirements.yml`` and ``roles/requirements.yml`` (``.yaml``
too) are installed with ansible-galaxy before the run, as AWX's project sync does, into a
cache under the state directory, ``STATE_DIR/requirements/KEY/{collections,roles}``. KEY
hashes what decides the result: the files' bytes, the bytes of the tarballs and
directories they name in the checkout, ansible.cfg, the configured Galaxy servers (names
and URLs, not tokens) and the ansible-core version. While KEY is the same the cache is reused
and ansible-galaxy does not run. A cache is built in a temporary directory renamed into
place, so a killed install never leaves half a cache.

Before anything is installed the files are checked: their shape (file, line and key of
what is wrong), and every local source must lie inside the checkout (``..`` or a link
that leads out is refused). A failed install is a refusal naming the requirement, its
source and ansible-galaxy's own error; it does not mark the revision refused (a server
that is down may be back at the next cycle).
"""
from __future__ import annotations

import configparser
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from . import source
from .boundary import files_inside, inside, is_a, real, within
from .execute import RUN_ID_VAR
from .problems import Problem, Refused, first_line, refuse
from .report import Redactor
from .store import new_run_id
from .yamlscan import Loader, Scan, kind_of

FILES = ("collections/requirements.yml", "collections/requirements.yaml",
         "roles/requirements.yml", "roles/requirements.yaml")
COLLECTION_KEYS = ("name", "version", "source", "type", "signatures")
COLLECTION_TYPES = ("galaxy", "git", "file", "dir", "subdirs", "url")
ROLE_KEYS = ("src", "name", "role", "scm", "version", "include")
INCLUDE = ("key 'include': not supported (the roles of an included file would escape the "
           "checks and the cache key): list the roles in this file")
FQCN_RE = re.compile(r"[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
ANSIBLE_DEFAULT_COLLECTIONS = ("~/.ansible/collections", "/usr/share/ansible/collections")
UNUSED_DAYS = 30  # a cache no cycle used for this long is removed by the next install


@dataclass(frozen=True)
class SearchPaths:
    """Where Ansible looks, in order: ``collections`` are directories that hold an
    ``ansible_collections/`` tree (Ansible's collections_path); ``roles`` are directories of
    roles (its roles_path), the checkout's ``roles/`` first."""
    collections: tuple[Path, ...] = ()
    roles: tuple[Path, ...] = ()
    installed: tuple[Path, ...] = ()  # those of them that hold what the revision installed

    def env(self) -> dict[str, str]:
        env = {}
        if self.collections:
            env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(map(str, self.collections))
        if self.roles:
            env["ANSIBLE_ROLES_PATH"] = os.pathsep.join(map(str, self.roles))
        return env


@dataclass(frozen=True)
class Requirement:
    """One entry of a requirements file: what it installs and from where."""
    kind: str              # collection | role
    file: str              # the requirements file, relative to the checkout
    line: int
    name: str              # as written: a name, a path or a URL
    source: str            # where it comes from, for a person
    needle: str            # what ansible-galaxy's messages call it
    local: Path | None = None  # a tarball or a directory in the checkout

    def __str__(self) -> str:
        return f"{self.kind} '{self.name}' from {self.source}"


@dataclass
class RequirementsFile:
    rel: str
    path: Path
    collections: list[Requirement] = field(default_factory=list)
    roles: list[Requirement] = field(default_factory=list)


# -- reading and checking -----------------------------------------------------------------
def read(checkout: Path, servers=()) -> list[RequirementsFile]:
    """The requirements files of ``checkout`` that exist, checked; ``Refused`` names file,
    line and key of every problem. The checkout's ansible.cfg, which ansible-galaxy and
    the search paths read, must be in the checkout too."""
    root = checkout.resolve()
    found, problems = [], []
    config = checkout / "ansible.cfg"
    if config.is_symlink() or config.exists():
        problems += within(config, checkout, root, "ansible.cfg")
    for rel in FILES:
        path = checkout / rel
        if not (path.is_file() or path.is_symlink()):
            continue
        outside = within(path, checkout, root, "the requirements file")
        if outside:
            problems += outside
            continue
        wanted = RequirementsFile(rel, path)
        node = _node(checkout, root, path)
        if node is not None:
            problems += _entries(wanted, node, _Context(checkout, root, tuple(servers)))
        found.append(wanted)
    refuse(problems)
    return found


def _node(checkout: Path, root: Path, path: Path):
    """The file's YAML node tree (lines and keys), after the scan's checks: syntax,
    duplicate keys, aliases."""
    scan = Scan(checkout, root, None)
    scan.file(path, None, refs=False)
    refuse(scan.problems)
    loader = Loader(path.read_text())
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


@dataclass(frozen=True)
class _Context:
    checkout: Path
    root: Path
    servers: tuple


def _line(node) -> int:
    return node.start_mark.line + 1


def _entries(wanted: RequirementsFile, node, ctx: _Context) -> list[Problem]:
    """A roles file may be a plain list of roles; any file may be a mapping with
    ``collections`` and ``roles`` lists (ansible-galaxy's two formats)."""
    rel = wanted.rel
    if isinstance(node, yaml.SequenceNode) and rel.startswith("roles/"):
        lists = [("roles", node)]
    elif isinstance(node, yaml.MappingNode):
        lists = []
        for key, value in node.value:
            if key.value not in ("collections", "roles"):
                return [Problem(rel, _line(key), f"key '{key.value}': expected collections "
                                                 "or roles")]
            if not (isinstance(value, yaml.SequenceNode) or value.tag.endswith(":null")):
                return [Problem(rel, _line(value), f"key '{key.value}': expected a list, "
                                                   f"not {kind_of(value)}")]
            if isinstance(value, yaml.SequenceNode):
                lists.append((key.value, value))
    else:
        shape = "a list of roles, or " if rel.startswith("roles/") else ""
        return [Problem(rel, _line(node), f"expected {shape}a mapping with the keys "
                                          f"collections and roles, not {kind_of(node)}")]
    problems = []
    for key, items in lists:
        parse = _collection if key == "collections" else _role
        for index, item in enumerate(items.value):
            found = parse(rel, f"{key}[{index}]", item, ctx)
            if isinstance(found, Problem):
                problems.append(found)
            else:
                getattr(wanted, key).append(found)
    return problems


def _fields(rel: str, where: str, node, allowed: tuple, first: str):
    """A requirement's keys and string values; a plain string is its ``first`` key."""
    if isinstance(node, yaml.ScalarNode) and node.value.strip():
        return {first: node.value}
    if not isinstance(node, yaml.MappingNode):
        return Problem(rel, _line(node), f"{where}: expected a name or a mapping with "
                                         f"{', '.join(allowed)}, not {kind_of(node)}")
    fields = {}
    for key, value in node.value:
        if key.value not in allowed:
            return Problem(rel, _line(key), f"{where}: key '{key.value}': expected one of "
                                            f"{', '.join(allowed)}")
        if key.value == "signatures" and isinstance(value, yaml.SequenceNode):
            continue  # ansible-galaxy's to verify
        if not isinstance(value, yaml.ScalarNode):
            return Problem(rel, _line(value), f"{where}: key '{key.value}': expected a "
                                              f"string, not {kind_of(value)}")
        fields[key.value] = value.value
    return fields


def _collection(rel: str, where: str, node, ctx: _Context):
    fields = _fields(rel, where, node, COLLECTION_KEYS, "name")
    if isinstance(fields, Problem):
        return fields
    line, name = _line(node), fields.get("name", "").strip()
    if not name:
        return Problem(rel, line, f"{where}: key 'name': a collection needs a name (a "
                                  "namespace.collection, a path or a URL)")
    if fields.get("type", "galaxy") not in COLLECTION_TYPES:
        return Problem(rel, line, f"{where}: key 'type': expected one of "
                                  f"{', '.join(COLLECTION_TYPES)}, got {fields['type']!r}")
    kind = fields.get("type") or _guess_type(name)
    made = partial(Requirement, "collection", rel, line, name)
    if kind == "git":
        return _git(rel, where, line, name, made)
    if kind == "url" and not name.startswith("file://"):
        return made(f"URL {source.redact_url(name)}", name)
    if kind == "galaxy":
        server = _server(ctx, fields.get("source"))
        if server is None:
            names = ", ".join(s.name for s in ctx.servers) or "none configured"
            return Problem(rel, line, f"{where}: key 'source': expected the name of a "
                                      f"galaxy_servers entry ({names}) or a URL, got "
                                      f"{fields['source']!r}")
        return made(server, name.split(":")[0])
    return _local(rel, where, line, name, {"subdirs": "dir", "url": "local"}.get(kind, kind),
                  ctx, made)


def _guess_type(name: str) -> str:
    """The type ansible-galaxy infers when none is given."""
    if name.startswith("git+"):
        return "git"
    if "://" in name:
        return "url"
    return "galaxy" if FQCN_RE.fullmatch(name.split(":")[0]) else "local"


def _server(ctx: _Context, wanted: str | None) -> str | None:
    """Where a Galaxy requirement comes from, for a person (None: an unknown server)."""
    if wanted and "://" in wanted:
        return f"Galaxy server {source.redact_url(wanted)}"
    if wanted:
        found = [s for s in ctx.servers if s.name == wanted]
        return f"Galaxy server '{wanted}' ({found[0].url})" if found else None
    if ctx.servers:
        return "Galaxy servers " + ", ".join(f"'{s.name}' ({s.url})" for s in ctx.servers)
    return "the Galaxy servers of ansible-galaxy's own configuration (no galaxy_servers set)"


# Git transports a requirement may use: not file, which would install a repository of the
# controller's, outside the checkout.
GIT_TRANSPORTS = tuple(t for t in source.TRANSPORTS if t != "file")


def _git(rel: str, where: str, line: int, name: str, made):
    url = re.sub(r"^git\+", "", name).split(",")[0].split("#")[0]
    transport = source.transport(url)
    if transport not in GIT_TRANSPORTS:
        return Problem(rel, line, f"{where}: Git URL {source.redact_url(url)!r}: transport "
                                  f"'{transport}' is not allowed ({', '.join(GIT_TRANSPORTS)}: "
                                  "a repository of this machine is outside the checkout)")
    return made(f"Git {source.redact_url(url)}", url)


def _local(rel: str, where: str, line: int, name: str, want: str, ctx: _Context, made):
    """A tarball or a directory named by path (relative: to the checkout, where
    ansible-galaxy runs); it must be in the checkout, and so must what a directory's links
    lead to."""
    path = Path(re.sub(r"^file://", "", name)).expanduser()
    path = path if path.is_absolute() else ctx.checkout / path
    resolved = real(path)
    if resolved is None or not inside(resolved, ctx.root):
        shown = resolved or "a path that cannot be resolved"
        return Problem(rel, line, f"{where}: '{name}' resolves to {shown}, outside the "
                                  "checkout: only tarballs and directories of the repository "
                                  "are installed from a path")
    found = "dir" if is_a("dir", resolved) else "file" if is_a("file", resolved) else None
    if found is None or want not in ("local", found):
        what = {"dir": "a directory", "file": "a file (a tarball)"}.get(
            want, "a namespace.collection, a URL, or a tarball or directory")
        return Problem(rel, line, f"{where}: '{name}': expected {what} in the checkout")
    if found == "dir":
        problems: list[Problem] = []
        files_inside(resolved, ctx.checkout, ctx.root, problems)
        if problems:
            return Problem(rel, line, f"{where}: '{name}': {problems[0]}")
    return made(f"{name} in the repository", name, resolved)


def _role(rel: str, where: str, node, ctx: _Context):
    fields = _fields(rel, where, node, ROLE_KEYS, "src")
    if isinstance(fields, Problem):
        return fields
    line = _line(node)
    if "include" in fields:
        return Problem(rel, line, f"{where}: {INCLUDE}")
    parts = [part.strip() for part in fields.get("src", "").split(",")]  # src,version,name
    name = fields.get("name") or fields.get("role") or (parts[2] if len(parts) > 2 else parts[0])
    if not name.strip():
        return Problem(rel, line, f"{where}: key 'src': a role needs src or name")
    made = partial(Requirement, "role", rel, line, name.strip())
    src = parts[0] or name.strip()
    scm = fields.get("scm") or (src.split("+")[0] if "+" in src else None)  # ansible-galaxy's
    if scm:
        return _git(rel, where, line, src, made) if scm == "git" else \
            made(f"{scm} {source.redact_url(src)}", src)
    if "://" in src and not src.startswith("file://"):
        return made(f"URL {source.redact_url(src)}", src)
    if "/" in src or src.endswith((".tar.gz", ".tgz", ".tar")):
        return _local(rel, where, line, src, "file", ctx, made)
    first = ctx.servers[0] if ctx.servers else None
    server = f"Galaxy server '{first.name}' ({first.url})" if first else \
        "the Galaxy server of ansible-galaxy's own configuration (no galaxy_servers set)"
    return made(server, src)


# -- where Ansible looks ------------------------------------------------------------------
def configured(checkout: Path) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(collections, roles) directories that the checkout's ansible.cfg names, relative
    paths from the checkout; collections default to Ansible's own when it names none."""
    cfg = checkout / "ansible.cfg"
    collections = roles = ()
    if cfg.is_file():
        parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
        try:
            parser.read(cfg)
            defaults = parser["defaults"] if parser.has_section("defaults") else {}
            collections = _pathspec(defaults.get("collections_path")
                                    or defaults.get("collections_paths"), checkout)
            roles = _pathspec(defaults.get("roles_path"), checkout)
        except configparser.Error as exc:
            raise Refused([Problem("ansible.cfg", getattr(exc, "lineno", None),
                                   f"cannot be read: {first_line(exc)}")]) from None
    return collections or tuple(Path(p).expanduser() for p in ANSIBLE_DEFAULT_COLLECTIONS), roles


def _pathspec(value: str | None, base: Path) -> tuple[Path, ...]:
    """Ansible's pathspec: a colon-separated list, ~ and $VARS expanded, relative to the
    directory of the file that sets it."""
    items = [os.path.expandvars(os.path.expanduser(p)) for p in (value or "").split(os.pathsep)]
    return tuple(base / item if not os.path.isabs(item) else Path(item) for item in items if item)


def search_paths(checkout: Path, cache: Path | None) -> SearchPaths:
    """The installed collections first, then what ansible.cfg names; the checkout's roles
    first, then the installed ones, then ansible.cfg's (each directory once)."""
    collections, roles = configured(checkout)
    installed = (cache,) if cache else ()
    return SearchPaths(
        collections=tuple(dict.fromkeys((*(c / "collections" for c in installed), *collections))),
        roles=tuple(dict.fromkeys((checkout / "roles", *(c / "roles" for c in installed),
                                   *roles))),
        installed=tuple(c / kind for c in installed for kind in ("collections", "roles")))


# -- installing -----------------------------------------------------------------------------
def install(checkout: Path, settings, log=lambda message, level="info": None,
            run_id: str | None = None) -> SearchPaths:
    """Install what the checkout's requirements files name (or reuse the cache) and say
    where Ansible finds it. No requirements file: nothing runs. ``run_id`` marks the
    ansible-galaxy processes as the run's (execute.orphans)."""
    wanted = [f for f in read(checkout, settings.galaxy_servers) if f.collections or f.roles]
    if not wanted:
        return search_paths(checkout, None)
    cache = settings.state_path / "requirements" / cache_key(checkout, wanted,
                                                            settings.galaxy_servers)
    what = ", ".join(f.rel for f in wanted)
    if cache.is_dir():
        _touch(cache)
        log(f"requirements: {what} unchanged, reused {cache}")
    else:
        _build(checkout, wanted, cache, settings, log, run_id or new_run_id())
    return search_paths(checkout, cache)


def cache_key(checkout: Path, wanted: list[RequirementsFile], servers) -> str:
    from ansible.release import __version__

    digest = hashlib.sha256()

    def feed(data: bytes) -> None:  # length first: no two inputs hash alike
        digest.update(len(data).to_bytes(8, "big") + data)

    feed(__version__.encode())
    config = checkout / "ansible.cfg"  # its [galaxy] server_list, when no galaxy_servers
    feed(config.read_bytes() if is_a("file", config) else b"")
    for server in servers:
        feed(f"{server.name}={server.url}".encode())
    for wanted_file in wanted:
        feed(wanted_file.rel.encode())
        feed(wanted_file.path.read_bytes())
        for req in wanted_file.collections + wanted_file.roles:
            for path in _local_files(checkout, req.local):
                feed(str(path.relative_to(checkout.resolve())).encode())
                feed(path.read_bytes())
    return digest.hexdigest()


def _local_files(checkout: Path, local: Path | None) -> list[Path]:
    if local is None:
        return []
    return files_inside(local, checkout, checkout.resolve(), []) if local.is_dir() else [local]


def _touch(cache: Path) -> None:
    """Mark the cache used (a file inside: the directory itself stays as it was)."""
    (cache / ".used").touch()


def _build(checkout: Path, wanted: list[RequirementsFile], cache: Path, settings, log,
           run_id: str) -> None:
    root = cache.parent
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time: the same key, once
        if cache.is_dir():
            log(f"requirements: reused {cache}, installed meanwhile by another cycle")
            return
        _prune(root)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
        try:
            for sub in ("collections", "roles"):
                (tmp / sub).mkdir()
            for wanted_file in wanted:
                for kind in ("collections", "roles"):
                    if getattr(wanted_file, kind):
                        log(f"requirements: installing the {kind} of {wanted_file.rel}")
                        _galaxy(checkout, wanted_file, kind, tmp, settings, run_id)
            _touch(tmp)
            tmp.rename(cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"requirements: installed in {time.monotonic() - started:.1f} s into {cache}")


def _prune(root: Path) -> None:
    """Leftovers of killed installs, and caches no cycle used for UNUSED_DAYS (the caller
    holds the lock: no install is running)."""
    old = time.time() - UNUSED_DAYS * 86400
    for path in root.iterdir():
        stamp = path / ".used"
        if path.name.startswith(".install-") or (
                path.is_dir() and stamp.exists() and stamp.stat().st_mtime < old):
            shutil.rmtree(path, ignore_errors=True)


def galaxy_env(checkout: Path, settings, collections: Path, run_id: str) -> dict[str, str]:
    """ansible-galaxy's environment: this interpreter's bin first, the checkout's
    ansible.cfg, the cache being built as the only collection path (a collection found
    elsewhere, ~/.ansible/collections say, would be skipped and missing from a cache
    that outlives it), the configured servers with their tokens, Git's allowed transports,
    and the run id (a later cycle stops what a killed one left running)."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
               ANSIBLE_NOCOLOR="True", ANSIBLE_FORCE_COLOR="False",
               GIT_ALLOW_PROTOCOL=":".join(GIT_TRANSPORTS), GIT_TERMINAL_PROMPT="0")
    if (checkout / "ansible.cfg").is_file():
        env["ANSIBLE_CONFIG"] = str(checkout / "ansible.cfg")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    env[RUN_ID_VAR] = run_id
    if settings.galaxy_servers:
        env["ANSIBLE_GALAXY_SERVER_LIST"] = ",".join(s.name for s in settings.galaxy_servers)
    for server in settings.galaxy_servers:
        prefix = f"ANSIBLE_GALAXY_SERVER_{server.name.upper()}_"
        env[prefix + "URL"] = server.url
        token = server.token()
        if token:
            env[prefix + "TOKEN"] = token
    return env


def _galaxy(checkout: Path, wanted: RequirementsFile, kind: str, tmp: Path, settings,
            run_id: str) -> None:
    """``ansible-galaxy collection|role install -r FILE -p DIR`` in the checkout (relative
    paths of the file resolve there); a failure or the timeout is a ``Refused``."""
    argv = ["ansible-galaxy", kind[:-1], "install", "-r", wanted.rel, "-p", str(tmp / kind)]
    env = galaxy_env(checkout, settings, tmp / "collections", run_id)
    redactor = Redactor({s.token() for s in settings.galaxy_servers} - {None})
    proc = subprocess.Popen(argv, cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=settings.galaxy_timeout)
    except subprocess.TimeoutExpired:
        raise Refused([Problem(wanted.rel, None, f"installing the {kind} did not finish "
                               f"within {settings.galaxy_timeout}s (galaxy_timeout)")],
                      retry=True) from None
    finally:
        if proc.poll() is None:  # the timeout, or a signal that cancels the cycle
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode:  # a server down, or a version it lacks: the next cycle tries again
        raise Refused([_failure(wanted, kind, redactor.scrub(output))], retry=True)


ERROR_LINES = 6  # an error and the lines that explain it, in a refusal


def _failure(wanted: RequirementsFile, kind: str, output: str) -> Problem:
    """The requirement ansible-galaxy's error names (else the only one, else every
    source) and its own error, with the lines that explain it (a dependency conflict lists
    the requirements it could not satisfy below its error line)."""
    lines = [line.strip() for line in output.splitlines()]
    prefixed = ("[ERROR]", "ERROR!", "[WARNING]")
    starts = [i for i, line in enumerate(lines) if "NOT installed successfully" in line] or \
        [i for i, line in enumerate(lines) if line.startswith(prefixed[:2])]
    if starts:
        block = [lines[starts[0]]]
        for line in lines[starts[0] + 1:]:
            if not line or line.startswith(prefixed) or len(block) == ERROR_LINES:
                break
            block.append(line)
    else:
        block = [line for line in lines if line][-1:] or ["ansible-galaxy failed with no output"]
    error = re.sub(r"^(\[(ERROR|WARNING)\]:|ERROR!)\s*(- )?", "", " ".join(block))
    reqs = getattr(wanted, kind)
    said = [line for line in lines if line.startswith(prefixed)]  # not "Installing 'x'..."
    named = [r for r in reqs if any(r.needle in line for line in block)] or \
        [r for r in reqs if any(r.needle in line for line in said)] or \
        (reqs if len(reqs) == 1 else [])
    if named:
        return Problem(wanted.rel, named[0].line, f"{named[0]} cannot be installed: "
                                                  f"ansible-galaxy: {error}")
    sources = "; ".join(dict.fromkeys(r.source for r in reqs))
    return Problem(wanted.rel, None, f"the {kind} cannot be installed (from {sources}): "
                                     f"ansible-galaxy: {error}")
