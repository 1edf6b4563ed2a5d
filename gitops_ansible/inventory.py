"""Environments: load one environment's inventory, classify targets by platform, validate.

Everything here happens before any target is touched. A problem is reported with the
file and line it comes from; ``Refused`` carries all problems found, not just the first.

What counts as a platform: every playbook that ``site.yml`` imports
(``import_playbook: baremetal.yml`` makes ``baremetal`` a platform). Required variables:
the options marked ``required: true`` in the ``meta/argument_specs.yml`` of the roles a
platform playbook applies; every host of that platform must define them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

VAULT_HEADER = "$ANSIBLE_VAULT"
CONNECTION_VARS = ("ansible_connection", "ansible_host", "ansible_port", "ansible_user",
                   "ansible_ssh_private_key_file", "ansible_ssh_common_args",
                   "ansible_ssh_extra_args")


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
    manifest_dirs: object = None  # kubernetes: k8s_manifests_dirs as the inventory sets it
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


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe YAML (libyaml when present: several times faster) that accepts Ansible's tags
    (!vault, !unsafe) as plain scalars."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node)
                              if isinstance(node, yaml.ScalarNode) else None)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def yaml_files(*dirs: Path):
    """YAML files Ansible will parse: *.yml/*.yaml, and extension-less files in *_vars/.

    A role's templates/ and files/ are data for the targets, not YAML for Ansible.
    """
    for base in dirs:
        for dirpath, subdirs, files in os.walk(base):
            subdirs[:] = sorted(d for d in subdirs if d not in ("templates", "files"))
            here = Path(dirpath)
            in_vars = here.name.endswith("_vars") or here.parent.name.endswith("_vars")
            for name in sorted(files):
                if name.endswith((".yml", ".yaml")) or (in_vars and "." not in name):
                    yield here / name


def _walk(node, visit):
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            visit(key, value)
            _walk(value, visit)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _walk(item, visit)


class Scan:
    """YAML syntax of every file, where `platform` is set, and the vault data found."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[Problem] = []
        self.platform_marks: dict[str, list[tuple[str, int]]] = {}
        self.vault_values: list[tuple[str, int, str]] = []  # file, line, ciphertext
        self.vault_files: list[Path] = []

    def file(self, path: Path) -> None:
        rel = _rel(path, self.root)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(Problem(rel, None, f"cannot read: {exc}"))
            return
        if text.startswith(VAULT_HEADER):
            self.vault_files.append(path)
            return
        try:
            for doc in yaml.compose_all(text, Loader=_Loader):
                _walk(doc, lambda key, value: self._visit(rel, key, value))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            detail = " ".join(str(part) for part in (exc.context, exc.problem) if part)
            self.problems.append(Problem(rel, line, f"invalid YAML: {detail}"))
        except yaml.YAMLError as exc:
            self.problems.append(Problem(rel, None, f"invalid YAML: {exc}"))

    def _visit(self, rel: str, key, value) -> None:
        if isinstance(value, yaml.ScalarNode) and value.tag == "!vault":
            self.vault_values.append((rel, value.start_mark.line + 1, value.value))
        if isinstance(key, yaml.ScalarNode) and key.value == "platform" \
                and isinstance(value, yaml.ScalarNode):
            self.platform_marks.setdefault(value.value, []).append((rel, key.start_mark.line + 1))


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


def decrypt_secrets(scan: Scan, password: bytes | None) -> tuple[set[str], list[Problem]]:
    """Plain texts of every vault value and file: what must never be written anywhere."""
    if not scan.vault_values and not scan.vault_files:
        return set(), []
    if password is None:
        where = scan.vault_values[0][:2] if scan.vault_values else (_rel(scan.vault_files[0],
                                                                         scan.root), None)
        return set(), [Problem(where[0], where[1], "vault-encrypted data but no "
                               "vault_password_file is configured")]
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(password))])
    found, problems = set(), []
    items = [(f, line, text) for f, line, text in scan.vault_values]
    items += [(_rel(p, scan.root), None, p.read_text()) for p in scan.vault_files]
    for rel, line, ciphertext in items:
        try:
            plain = vault.decrypt(ciphertext.encode()).decode()
        except Exception as exc:  # wrong password, corrupt data: ansible raises its own types
            problems.append(Problem(rel, line, f"cannot decrypt vault data: {exc}"))
            continue
        if line is None:  # a whole vault file holds YAML
            try:
                _leaf_strings(yaml.load(plain, Loader=_Loader), found)
            except yaml.YAMLError:
                _leaf_strings(plain, found)
        else:
            _leaf_strings(plain, found)
    return found, problems


def _load_yaml(path: Path):
    return yaml.load(path.read_text(), Loader=_Loader)


def _line_of(path: Path, needle: str) -> int | None:
    try:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if needle in line:
                return number
    except OSError:
        pass
    return None


def site_platforms(checkout: Path, playbook: str) -> tuple[dict[str, Path], list[Problem]]:
    """Platforms routed by the entry playbook: {platform: playbook path}."""
    site = checkout / playbook
    if not site.is_file():
        return {}, [Problem(playbook, None, "entry playbook not found")]
    platforms, problems = {}, []
    for play in _load_yaml(site) or []:
        target = isinstance(play, dict) and (play.get("ansible.builtin.import_playbook")
                                             or play.get("import_playbook"))
        if not target:
            continue
        path = site.parent / target
        if not path.is_file():
            problems.append(Problem(playbook, _line_of(site, target),
                                    f"imported playbook '{target}' not found"))
        platforms[Path(target).stem] = path
    return platforms, problems


ROLE_MODULES = ("import_role", "include_role", "ansible.builtin.import_role",
                "ansible.builtin.include_role")


def playbook_roles(path: Path) -> list[str]:
    """Role names a platform playbook applies (roles: lists and import/include_role tasks)."""
    roles = []
    for play in _load_yaml(path) or []:
        if not isinstance(play, dict):
            continue
        for item in play.get("roles") or []:
            name = item if isinstance(item, str) else (item.get("role") or item.get("name"))
            roles.append(name)
        for section in ("pre_tasks", "tasks", "post_tasks"):
            for task in play.get(section) or []:
                for module in ROLE_MODULES:
                    if isinstance(task, dict) and isinstance(task.get(module), dict):
                        roles.append(task[module].get("name"))
    return [r for r in roles if isinstance(r, str) and "{{" not in r]


def required_vars(role_dir: Path) -> list[str]:
    spec = role_dir / "meta" / "argument_specs.yml"
    if not spec.is_file():
        return []
    data = _load_yaml(spec) or {}
    options = ((data.get("argument_specs") or {}).get("main") or {}).get("options") or {}
    return sorted(name for name, opt in options.items() if isinstance(opt, dict)
                  and opt.get("required") and "default" not in opt)


def environments(checkout: Path, inventory_dir: str) -> list[str]:
    base = checkout / inventory_dir
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def load(checkout: Path, settings) -> Inventory:
    """Load and validate the environment ``settings.env`` of ``checkout``; raise ``Refused``."""
    env, inv_rel = settings.env, settings.inventory_dir
    inv_path = checkout / inv_rel / env
    if not inv_path.is_dir():
        known = ", ".join(environments(checkout, inv_rel)) or "none"
        raise Refused([Problem(f"{inv_rel}/{env}", None,
                               f"environment '{env}' does not exist (environments: {known})")])
    scan = Scan(checkout)
    for path in yaml_files(inv_path, checkout / "playbooks", checkout / "roles"):
        scan.file(path)
    if scan.problems:
        raise Refused(scan.problems)
    secrets, problems = decrypt_secrets(scan, read_vault_password(settings, checkout))
    platforms, site_problems = site_platforms(checkout, settings.playbook)
    problems += site_problems
    if problems:
        raise Refused(problems)
    targets, host_vars = _ansible_inventory(inv_path, checkout, settings, scan)
    _mark_local(targets, platforms)
    problems = _check_targets(targets, platforms, scan, inv_rel, env)
    problems += _check_roles(checkout, targets, host_vars, platforms)
    problems += _check_manifests(checkout, targets)
    if problems:
        raise Refused(problems)
    return Inventory(env, inv_path, targets, secrets)


def _ansible_inventory(inv_path: Path, checkout: Path, settings, scan: Scan):
    """Hosts and their variables as Ansible itself sees them (group_vars, host_vars...)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    password = read_vault_password(settings, checkout)
    if password is not None:
        from ansible.parsing.vault import VaultSecret
        loader.set_vault_secrets([("default", VaultSecret(password))])
    try:
        manager = InventoryManager(loader=loader, sources=[str(inv_path)])
        variables = VariableManager(loader=loader, inventory=manager)
        hosts = manager.get_hosts()
    except Exception as exc:  # Ansible's parse errors come as its own exception types
        raise Refused([Problem(_rel(inv_path, checkout), None, f"inventory: {exc}")]) from None
    if not hosts:
        raise Refused([Problem(_rel(inv_path, checkout), None, "inventory has no hosts")])
    targets, host_vars = {}, {}
    for host in hosts:
        values = variables.get_vars(host=host, include_hostvars=False)
        platform = values.get("platform")
        conn = {k: str(values[k]) for k in CONNECTION_VARS if values.get(k) is not None}
        conn.setdefault("ansible_host", host.address or host.name)
        targets[host.name] = Target(host.name, str(platform) if platform is not None else "", conn)
        if values.get("k8s_manifests_dirs") is not None:
            targets[host.name].manifest_dirs = values["k8s_manifests_dirs"]
        host_vars[host.name] = set(values)
    return targets, host_vars


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


def _check_roles(checkout: Path, targets, host_vars, platforms) -> list[Problem]:
    problems, used = [], {t.platform for t in targets.values()}
    for platform in sorted(used & set(platforms)):
        path = platforms[platform]
        rel = _rel(path, checkout)
        for role in playbook_roles(path):
            if "." in role:  # a collection role (namespace.collection.role)
                continue
            role_dir = checkout / "roles" / role
            if not (role_dir / "tasks").is_dir():
                problems.append(Problem(rel, _line_of(path, role),
                                        f"role '{role}' not found (no roles/{role}/tasks)"))
                continue
            for var in required_vars(role_dir):
                missing = sorted(t.name for t in targets.values()
                                 if t.platform == platform and var not in host_vars[t.name])
                if missing:
                    spec = role_dir / "meta" / "argument_specs.yml"
                    problems.append(Problem(_rel(spec, checkout), _line_of(spec, f"{var}:"),
                                            f"role '{role}' requires variable '{var}', not set "
                                            f"for host(s) {', '.join(missing)}"))
    return problems


def _platform_plays(platforms: dict[str, Path]):
    for name, path in platforms.items():
        try:
            plays = [p for p in (_load_yaml(path) or []) if isinstance(p, dict)
                     and "hosts" in p]
        except (OSError, yaml.YAMLError):
            continue
        if plays:
            yield name, plays


def _mark_local(targets, platforms) -> None:
    """Targets of a platform whose playbook runs every play with `connection: local`
    (clusters, the controller) are never SSH hosts, whatever the inventory says. Targets of
    a platform whose playbook sets the play var `gitops_created_by_run: true` (VMs) do not
    exist before the run: the playbook waits for them, the pre-flight leaves them out."""
    local, created = set(), set()
    for name, plays in _platform_plays(platforms):
        if all(p.get("connection") == "local" for p in plays):
            local.add(name)
        if any((p.get("vars") or {}).get("gitops_created_by_run") is True for p in plays):
            created.add(name)
    for target in targets.values():
        if target.platform in local:
            target.vars["ansible_connection"] = "local"
        target.created_by_run = target.platform in created


KUBERNETES = "kubernetes"
_HOSTNAME_VAR = re.compile(r"{{\s*inventory_hostname\s*}}")


def _manifest_dirs(target) -> list[str]:
    dirs = target.manifest_dirs
    if dirs is None:
        return [f"clusters/{target.name}"]
    if isinstance(dirs, str):
        dirs = [dirs]
    out = []
    for item in dirs if isinstance(dirs, list) else []:
        item = _HOSTNAME_VAR.sub(target.name, str(item))
        if "{{" not in item and "{%" not in item:  # other templating: the role checks it
            out.append(item)
    return out


def _check_manifests(checkout: Path, targets) -> list[Problem]:
    """Kubernetes manifests of every cluster target: the directories exist, every file is
    YAML, every document has apiVersion and kind. Files with Jinja2 in them are checked by
    the role after rendering (still before anything is applied)."""
    problems, seen = [], set()
    for target in sorted(targets.values(), key=lambda t: t.name):
        if target.platform != KUBERNETES:
            continue
        for rel in _manifest_dirs(target):
            base = Path(rel) if Path(rel).is_absolute() else checkout / rel
            if not base.is_dir():
                problems.append(Problem(rel, None, f"host '{target.name}': manifest directory "
                                        "not found"))
                continue
            for path in sorted(base.rglob("*")):
                if path.suffix in (".yml", ".yaml") and path.is_file() and path not in seen:
                    seen.add(path)
                    problems += _check_manifest(path, _rel(path, checkout))
    return problems


def _check_manifest(path: Path, rel: str) -> list[Problem]:
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
            missing = [k for k in ("apiVersion", "kind") if k not in keys]
            if missing:
                problems.append(Problem(rel, line, f"document {number}: no "
                                        f"{' and no '.join(missing)}"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        problems.append(Problem(rel, mark.line + 1 if mark else None, f"invalid YAML: {detail}"))
    return problems
