"""What to run for this revision.

``decide`` is the cheap question asked on every pull cycle, before anything heavy is
imported: is there work? ``build`` turns a validated inventory into the plan that
``execute`` runs: the playbook, the inventory, limit, tags, check/diff, and the hosts the
pre-flight removed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .store import EnvState


@dataclass
class Decision:
    converge: bool
    reason: str


def decide(state: EnvState, revision: str, force: bool = False, check: bool = False,
           unclean: tuple[str, ...] = ()) -> Decision:
    """Converge unless this revision is applied already and its last converge had no failures.

    A revision whose converge left failed or unreachable hosts (``unclean``: the targets
    whose last run failed, as the store records them) is retried by the next cycle; a
    revision that was refused (by the validation, the signature policy, or a target whose
    role refused it before applying anything) stays refused until a new commit or
    ``--force``: it would be refused again.
    """
    applied = state.applied_revision
    if force:
        return Decision(True, "forced")
    if check:
        return Decision(True, "a check runs on any revision")
    if revision == state.refused_revision:
        return Decision(False, "refused")
    if applied is None:
        return Decision(True, "first converge of this environment")
    if revision != applied:
        return Decision(True, f"new revision (applied: {applied[:12]})")
    if state.failing:
        return Decision(True, "retry: the last converge of this revision had failures")
    if unclean:
        return Decision(True, f"retry: not clean since their last run: {', '.join(unclean)}")
    return Decision(False, "already applied")


@dataclass
class Plan:
    env: str
    revision: str
    checkout: Path
    playbook: str
    inventory: Path
    platforms: dict[str, list[str]]
    limit: str | None = None
    tags: str | None = None
    skip_tags: str | None = None
    check: bool = False
    diff: bool = False
    vault_password_file: Path | None = None
    timeout: int = 0        # seconds for the whole run (0: none)
    idle_timeout: int = 0   # seconds without an event from Ansible (0: none)
    task_timeout: int = 0   # Ansible's task_timeout (0: none)
    ssh_keepalive: int = 0  # seconds between SSH keepalives (0: off)
    excluded: dict[str, str] = field(default_factory=dict)  # host -> why (pre-flight)
    # A change-scoped run: the hosts it converges (None: every host --limit selects);
    # plays on the controller (``hosts: localhost``: the VM orphan scan) run too.
    scope: list[str] | None = None
    # Where Ansible finds collections and roles (requirements.SearchPaths.env()), and the
    # directories of them this run installed (sent with a job to an execution node).
    ansible_env: dict[str, str] = field(default_factory=dict)
    shipped: tuple[Path, ...] = ()
    # Execution nodes (nodes.py): the slices, and the targets the controller converges.
    slices: list = field(default_factory=list)
    here: list[str] = field(default_factory=list)

    @property
    def hosts(self) -> list[str]:
        return sorted(h for hosts in self.platforms.values() for h in hosts)

    def effective_limit(self) -> str | None:
        """The user's limit (or the scope's hosts), minus the hosts the pre-flight
        excluded."""
        controller = [] if "localhost" in self.hosts else ["localhost"]
        limit = ",".join(self.scope + controller) if self.scope is not None else self.limit
        if not self.excluded:
            return limit
        return ":".join([limit or "all"] + [f"!{host}" for host in sorted(self.excluded)])


def build(settings, inventory, checkout: Path, revision: str, check: bool) -> Plan:
    password = None
    if settings.vault_password_file:
        password = Path(settings.vault_password_file).expanduser()
        password = password if password.is_absolute() else checkout / password
    return Plan(env=settings.env, revision=revision, checkout=checkout,
                playbook=settings.playbook, inventory=inventory.path,
                platforms=inventory.by_platform(), limit=settings.limit, tags=settings.tags,
                skip_tags=settings.skip_tags, check=check, diff=settings.diff or check,
                vault_password_file=password, timeout=settings.timeout,
                idle_timeout=settings.idle_timeout, task_timeout=settings.task_timeout,
                ssh_keepalive=settings.ssh_keepalive)
