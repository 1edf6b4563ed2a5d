"""Collections and roles a revision requires, and where Ansible finds them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SearchPaths:
    """Where Ansible looks, in order: ``collections`` are directories that hold an
    ``ansible_collections/`` tree (Ansible's collections_path); ``roles`` are directories of
    roles (its roles_path), the checkout's ``roles/`` first."""
    collections: tuple[Path, ...] = ()
    roles: tuple[Path, ...] = ()

    def env(self) -> dict[str, str]:
        env = {}
        if self.collections:
            env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(map(str, self.collections))
        if self.roles:
            env["ANSIBLE_ROLES_PATH"] = os.pathsep.join(map(str, self.roles))
        return env
