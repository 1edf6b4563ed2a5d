"""The checkout is a boundary: nothing the run reads may resolve outside it.

Links in the inventory, playbook and roles directories that resolve outside the checkout
are refused, naming link and target, and never followed (their target is never read);
so are those directories, the run's ansible.cfg and the directories of a role's file
checks when they resolve outside, and static paths that playbooks and roles name
(import_playbook, include_vars, vars_files, include/import_tasks, tasks_from, role paths).
"""
from __future__ import annotations

import os
from pathlib import Path

from .problems import Problem, refuse, relative
from .yamlscan import ROLE_KEYS, Scan


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def files_inside(base: Path, checkout: Path, root: Path, problems: list[Problem]) -> list[Path]:
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
            problems.append(Problem(relative(here, checkout), None,
                                    f"cannot read: {exc.strerror}"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink() and not inside(path.resolve(), root):
                problems.append(Problem(relative(path, checkout), None,
                                        f"symlink to '{os.readlink(path)}' resolves outside "
                                        f"the checkout ({path.resolve()})"))
            elif entry.is_dir():
                todo.append(path)
            elif entry.is_file():
                found.append(path)
    return sorted(found)


def within(path: Path, checkout: Path, root: Path, what: str) -> list[Problem]:
    real = path.resolve()
    if inside(real, root):
        return []
    return [Problem(relative(path, checkout), None,
                    f"{what} resolves outside the checkout ({real})")]


def outside_refs(scan: Scan, refs: list, playbook_dir: Path) -> list[Problem]:
    """Static paths in playbooks and roles (import_playbook, include_vars, vars_files,
    include/import_tasks, role paths) that resolve outside the checkout from any of the
    directories Ansible searches."""
    problems = []
    for rel, line, key, value, path in refs:
        is_role = key.rsplit(".", 1)[-1] in ROLE_KEYS
        if "{{" in value or "{%" in value or (is_role and "/" not in value):
            continue
        bases = [path.parent, playbook_dir, scan.root / "roles"]
        parts = path.relative_to(scan.root).parts
        if parts[0] == "roles" and len(parts) > 2:
            bases.append(scan.root / "roles" / parts[1])
        for base in bases:
            target = (base / value).resolve()
            if not inside(target, scan.root):
                problems.append(Problem(rel, line, f"{key} '{value}' resolves outside the "
                                                   f"checkout ({target})"))
                break
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
