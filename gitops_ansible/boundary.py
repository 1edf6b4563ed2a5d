"""The checkout is a boundary: what the run reads statically may not resolve outside it.

Links in the inventory, playbook and roles directories that resolve outside the checkout
are refused, naming link and target, and never followed (their target is never read);
so are those directories, the run's ansible.cfg and the directories of a role's file
checks when they resolve outside, and static paths that playbooks and roles name
(import_playbook, include_vars, vars_files, include/import_tasks, tasks_from, role paths).
A static path to a file or directory elsewhere in the checkout is followed: its files
are scanned (and their own paths checked) like the others. Templated paths are Ansible's
to resolve at run time, and ansible.cfg's search paths are not checked.
"""
from __future__ import annotations

import os
from pathlib import Path

from .problems import Problem, refuse, relative
from .yamlscan import ROLE_KEYS, Scan, templated


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def real(path: Path) -> Path | None:
    """``path`` resolved, or None when it cannot be (a link loop, a NUL in the name)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def is_a(kind: str, path: Path) -> bool:
    """path.is_dir() ("dir") or is_file() of a name from the input: False for one no path
    can be (Python raises for a name longer than the file system allows)."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except (OSError, ValueError):
        return False


def _unresolvable(path: Path, checkout: Path) -> Problem:
    return Problem(relative(path, checkout), None, "cannot be resolved (a symlink loop, or "
                                                   "a character no path may hold)")


def files_inside(base: Path, checkout: Path, root: Path, problems: list[Problem]) -> list[Path]:
    """Every file under ``base``, following links that stay inside the checkout (``root``,
    resolved). A link that resolves outside is a problem, named with its target, and is
    not followed: its target is never read."""
    found, seen, todo = [], set(), [base]
    while todo:
        here = todo.pop()
        resolved = real(here)
        if resolved is None:
            problems.append(_unresolvable(here, checkout))
            continue
        if resolved in seen:  # a link back into a directory already walked
            continue
        seen.add(resolved)
        try:
            entries = sorted(os.scandir(here), key=lambda entry: entry.name)
        except OSError as exc:
            problems.append(Problem(relative(here, checkout), None,
                                    f"cannot read: {exc.strerror}"))
            continue
        for entry in entries:
            path = Path(entry.path)
            target, kind = real(path), _kind(entry)
            if target is None or kind is None:
                problems.append(_unresolvable(path, checkout))
            elif entry.is_symlink() and not inside(target, root):
                problems.append(Problem(relative(path, checkout), None,
                                        f"symlink to '{os.readlink(path)}' resolves outside "
                                        f"the checkout ({target})"))
            elif kind == "dir":
                todo.append(path)
            elif kind == "file":
                found.append(path)
    return sorted(found)


def _kind(entry: os.DirEntry) -> str | None:
    """dir, file or other (a dangling link, a socket); None for a link loop."""
    try:
        return "dir" if entry.is_dir() else "file" if entry.is_file() else "other"
    except OSError:
        return None


def within(path: Path, checkout: Path, root: Path, what: str) -> list[Problem]:
    resolved = real(path)
    if resolved is None:
        return [_unresolvable(path, checkout)]
    if inside(resolved, root):
        return []
    return [Problem(relative(path, checkout), None,
                    f"{what} resolves outside the checkout ({resolved})")]


def outside_refs(scan: Scan, refs: list, playbook_dir: Path) -> list[Problem]:
    """Static paths in playbooks and roles (import_playbook, include_vars, vars_files,
    include/import_tasks, role paths) that resolve outside the checkout from any of the
    directories Ansible searches."""
    problems = []
    for rel, line, key, value, path in refs:
        for target in _targets(scan, key, value, path, playbook_dir):
            if target is None:
                problems.append(Problem(rel, line, f"{key} '{value}' cannot be resolved"))
                break
            if not inside(target, scan.root):
                problems.append(Problem(rel, line, f"{key} '{value}' resolves outside the "
                                                   f"checkout ({target})"))
                break
    return problems


def _targets(scan: Scan, key: str, value: str, path: Path, playbook_dir: Path) -> list:
    """Where a static path may lead, from each directory Ansible searches (None: it cannot
    be resolved); nothing for a templated path or a plain role name."""
    is_role = key.rsplit(".", 1)[-1] in ROLE_KEYS
    if templated(value) or (is_role and "/" not in value
                                          and value not in (".", "..")):
        return []
    bases = [path.parent, playbook_dir, scan.root / "roles"]
    parts = path.relative_to(scan.root).parts
    if parts[0] == "roles" and len(parts) > 2:
        bases.append(scan.root / "roles" / parts[1])
    return [real(base / value) for base in bases]


def follow_refs(scan: Scan, playbook_dir: Path, start: int = 0) -> list[Problem]:
    """Check the static paths from ``scan.refs[start:]`` on, and scan the files they lead
    to elsewhere in the checkout (a tasks file beside the playbooks, a role by path, a
    vars directory), whose own paths are then checked too, until none is new."""
    problems, done = [], start
    while done < len(scan.refs):
        batch, done = scan.refs[done:], len(scan.refs)
        found = outside_refs(scan, batch, playbook_dir)
        problems += found
        if found:
            continue
        for _rel, _line, key, value, path in batch:
            for target in _targets(scan, key, value, path, playbook_dir):
                if target and is_a("dir", target):
                    files = files_inside(target, scan.checkout, scan.root, problems)
                    for file in files:
                        if file.suffix in (".yml", ".yaml"):
                            scan.load(file)
                elif target and is_a("file", target) and target.suffix in (".yml", ".yaml", ""):
                    scan.load(target)
    return problems


def checkout_files(checkout: Path, root: Path, bases: list[Path]) -> list[Path]:
    """The files of the inventory, playbook and roles directories, or ``Refused`` (before
    any file is read: a link leading outside is never followed)."""
    problems = [p for base in bases[1:] for p in within(base, checkout, root, "the directory")]
    problems += within(checkout / "ansible.cfg", checkout, root, "the run's Ansible settings")
    refuse(problems)
    files = [path for base in bases if base.is_dir()
             for path in files_inside(base, checkout, root, problems)]
    refuse(problems)
    return files
