"""Typed settings, layered: defaults < config file < environment < flags.

One schema (``SCHEMA``) describes every setting; each layer is checked against it, and
a wrong key or value is a ``ConfigError`` that names where it came from (the file, the
environment variable or the flag), the key, and what is allowed.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import names, source
from .names import shown
from .verify import MODES as verify_modes

ENV_PREFIX = "GITOPS_ANSIBLE_"
# Environment variables with the prefix that are not settings.
ENV_SPECIAL = {"GITOPS_ANSIBLE_CONFIG", "GITOPS_ANSIBLE_GIT_TOKEN"}
DEFAULT_CONFIG = Path("/etc/gitops-ansible/config.toml")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class ConfigError(Exception):
    """A setting that cannot be used; the message names source, key and what is allowed."""

    def __init__(self, source: str, key: str, expected: str, got=None):
        self.source, self.key = source, key
        got_text = "" if got is None else f", got {shown(got)}"
        super().__init__(f"{source}: key '{key}': expected {expected}{got_text}")


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # str | int | bool | path | choice | duration | env | repo | listen
    default: object
    help: str
    choices: tuple = ()
    minimum: int = 0  # int: the smallest value; duration: 1 means more than 0

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        return {"int": f"an integer >= {self.minimum}", "bool": "true or false",
                "path": "a file system path", "str": "a string", "env": "an environment name",
                "repo": "a Git URL",
                "duration": "a duration such as 30s, 5m, 2h or seconds as a number"
                + (" (more than 0)" if self.minimum else ""),
                "listen": "HOST:PORT with a port from 1 to 65535"}[self.kind]

    def convert(self, value, source_name: str):
        """Value from TOML, environment (str) or flags, checked and converted."""
        if value is None:
            return None
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
        elif self.kind == "int":
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool) and value >= self.minimum:
                return value
        elif self.kind == "choice":
            if value in self.choices:
                return value
        elif self.kind == "repo":
            if isinstance(value, str) and value.strip():
                name = source.transport(value)
                if name in source.TRANSPORTS:
                    return value
                raise ConfigError(source_name, self.name, f"{source.REPO_EXPECTED} (transport "
                                  f"'{name}' is not allowed)", source.redact_url(value))
        elif self.kind == "env":
            try:
                return names.env_name(value)
            except names.InvalidName:
                raise ConfigError(source_name, self.name, names.ENV_EXPECTED, value) from None
        elif self.kind == "duration":
            from .schedule import ScheduleError, parse_duration
            try:
                seconds = parse_duration(value)
            except ScheduleError:
                seconds = None
            if seconds is not None and (seconds > 0 or not self.minimum):
                return seconds
        elif self.kind == "listen":
            host, _, port = str(value).rpartition(":")
            if host and port.isdigit() and 0 < int(port) < 65536 and not _CONTROL.search(host):
                return value
        elif isinstance(value, str) and (value or self.kind == "str"):
            return value
        raise ConfigError(source_name, self.name, self.describe(), value)


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/gitops-ansible"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "gitops-ansible")


def setting(kind: str, default, help: str, choices: tuple = (), minimum: int = 0):
    """A field of ``Settings``: its kind, default and help make the one schema."""
    return field(default=default, metadata={"kind": kind, "help": help, "choices": choices,
                                            "minimum": minimum})


def _tables(where: str, name: str, raw, keys: tuple[str, ...]) -> list[tuple[str, dict]]:
    """The tables of the list NAME (``[[NAME]]``), each with where it is, once checked to
    be a table of known keys."""
    what = f"a table with {', '.join(keys[:-1])} and {keys[-1]}"
    if not isinstance(raw, list):
        raise ConfigError(where, name, f"a list of tables ([[{name}]], each {what})", raw)
    for index, table in enumerate(raw):
        if not isinstance(table, dict):
            raise ConfigError(where, f"{name}[{index}]", what, table)
        for key in table:
            if key not in keys:
                raise ConfigError(f"{where}: {name}[{index}]", key, "one of " + ", ".join(keys))
    return [(f"{where}: {name}[{index}]", table) for index, table in enumerate(raw)]


@dataclass(frozen=True)
class GalaxyServer:
    """A Galaxy-compatible server (Galaxy NG, Automation Hub, Pulp) that ansible-galaxy
    installs requirements from; ``name`` is how requirements files name it (``source:``)."""
    name: str
    url: str
    token_file: str | None = None
    where: str = field(default="settings", compare=False)

    def token(self) -> str | None:
        if not self.token_file:
            return None
        path = Path(self.token_file).expanduser()
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(self.where, "token_file", "a readable file",
                              f"{path}: {exc.strerror}") from None


GALAXY_KEYS = ("name", "url", "token_file")
# The name becomes part of ansible-galaxy's variables (ANSIBLE_GALAXY_SERVER_<NAME>_URL).
GALAXY_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,63}")


def galaxy_servers(where: str, raw) -> tuple[GalaxyServer, ...]:
    """``[[galaxy_servers]]`` tables, checked: known keys, a name and a URL each, unique
    names."""
    servers = []
    for at, table in _tables(where, "galaxy_servers", raw, GALAXY_KEYS):
        name, url, token_file = (table.get(key) for key in GALAXY_KEYS)
        if not isinstance(name, str) or not GALAXY_NAME_RE.fullmatch(name):
            raise ConfigError(at, "name", "1 to 63 characters of A-Z, a-z, 0-9 and '_'", name)
        if name in (s.name for s in servers):
            raise ConfigError(at, "name", "a name no other galaxy_servers entry has", name)
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/@]+(/\S*)?", url):
            shown_url = source.redact_url(url) if isinstance(url, str) else url
            raise ConfigError(at, "url", "an http:// or https:// URL without credentials (the "
                                         "server's API root, e.g. https://hub.example.com/api/"
                                         "galaxy/; a token goes in token_file)", shown_url)
        if token_file is not None and (not isinstance(token_file, str) or not token_file):
            raise ConfigError(at, "token_file", "a file system path", token_file)
        servers.append(GalaxyServer(name, url, token_file, at))
    return tuple(servers)


@dataclass(frozen=True)
class ExecutionNode:
    """A host that runs slices of a converge (``nodes.py``): reached over SSH at
    ``destination`` ([user@]host), checked against ``known_hosts``; its ansible-runner at
    ``runner`` works in ``workdir``; ``target_key`` is the private key its Ansible reaches
    the targets with (lent to the job through ssh-agent, never left on the node);
    ``groups`` are the inventory groups it converges (slicing = group)."""
    name: str
    destination: str
    port: int = 22
    ssh_key: str | None = None
    known_hosts: str | None = None
    runner: str = "ansible-runner"
    workdir: str = "/tmp"
    target_key: str | None = None
    groups: tuple[str, ...] = ()
    where: str = field(default="settings", compare=False)


# The name becomes part of a directory on the controller and on the node.
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
NODE_KEYS = {
    "name": ("str", "1 to 63 characters of A-Z, a-z, 0-9, '_', '.' and '-', starting with a "
                    "letter or a digit"),
    "destination": ("str", "[user@]host of the node's sshd, without spaces or options"),
    "port": ("int", "a TCP port from 1 to 65535"),
    "ssh_key": ("path", "the private key file that reaches the node"),
    "known_hosts": ("path", "a known_hosts file holding the node's host key"),
    "runner": ("path", "the node's ansible-runner: an absolute path or a command on its PATH"),
    "workdir": ("path", "an absolute directory on the node for the jobs' private data"),
    "target_key": ("path", "the private key file the node's Ansible reaches the targets with"),
    "groups": ("list", "a list of inventory group names"),
}
_DESTINATION_RE = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]*@)?[A-Za-z0-9][A-Za-z0-9_.:-]*")
_REMOTE_PATH_RE = re.compile(r"[A-Za-z0-9_./+-]+")


def execution_nodes(where: str, raw) -> tuple[ExecutionNode, ...]:
    """``[[execution_nodes]]`` tables, checked: known keys, a name and a destination each,
    unique names; every value that reaches an ssh command line or a path on the node is
    one plain word."""
    found = []
    for at, table in _tables(where, "execution_nodes", raw, tuple(NODE_KEYS)):
        values = {key: _node_value(at, key, value) for key, value in table.items()}
        for key in ("name", "destination"):
            if key not in values:
                raise ConfigError(at, key, NODE_KEYS[key][1])
        if values["name"] in (n.name for n in found):
            raise ConfigError(at, "name", "a name no other execution_nodes entry has",
                              values["name"])
        found.append(ExecutionNode(**values, where=at))
    return tuple(found)


def _node_value(at: str, key: str, value):
    kind, expected = NODE_KEYS[key]
    good = {"name": lambda v: isinstance(v, str) and NODE_NAME_RE.fullmatch(v),
            "destination": lambda v: isinstance(v, str) and _DESTINATION_RE.fullmatch(v),
            "port": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536,
            "runner": lambda v: isinstance(v, str) and _REMOTE_PATH_RE.fullmatch(v),
            "workdir": lambda v: isinstance(v, str) and v.startswith("/")
            and _REMOTE_PATH_RE.fullmatch(v) and ".." not in v.split("/"),
            "groups": lambda v: isinstance(v, list) and v and all(
                isinstance(g, str) and re.fullmatch(r"[A-Za-z0-9_]+", g) for g in v)}
    check = good.get(key, lambda v: isinstance(v, str) and v and not _CONTROL.search(v))
    if not check(value):
        raise ConfigError(at, key, expected, value)
    return tuple(value) if kind == "list" else value


@dataclass(frozen=True)
class Settings:
    """The settings of one cycle; ``sources`` says where each value came from."""
    repo: str | None = setting("repo", None, "Git URL to pull from: file://, git://, ssh://, https:// (or a local path)")
    ref: str = setting("str", "HEAD", "branch, tag or commit to converge (HEAD: the remote's default branch)")
    env: str | None = setting("env", None, "environment: a directory under the inventory root")
    path: str = setting("path", ".", "push/plan: the local checkout to converge")
    state_dir: str | None = setting("path", None, "run store, locks and artifacts")
    workdir: str | None = setting("path", None, "Git mirror and checkouts (default: STATE_DIR/work)")
    playbook: str = setting("path", "playbooks/site.yml", "entry playbook, relative to the repository")
    inventory_dir: str = setting("path", "inventories", "directory holding one inventory per environment")
    vault_password_file: str | None = setting("path", None, "ansible-vault password file (relative: to the checkout)")
    splay: int = setting("int", 0, "sleep a random 0..N seconds before the cycle (spreads cron fleets)")
    check: bool = setting("bool", False, "check mode: report what would change, change nothing")
    diff: bool = setting("bool", False, "show differences of changed files and templates")
    limit: str | None = setting("str", None, "Ansible host pattern to limit the run to")
    tags: str | None = setting("str", None, "only run tasks with these tags (comma separated)")
    skip_tags: str | None = setting("str", None, "skip tasks with these tags (comma separated)")
    force: bool = setting("bool", False, "converge even if the revision is already applied; if the fetch "
                                         "fails, converge the last good checkout (ansible-pull -f)")
    lock: str = setting("choice", "wait", "when another cycle holds the environment's lock", ("wait", "fail"))
    lock_timeout: int = setting("int", 3600, "seconds to wait for the lock (lock = wait)")
    timeout: int = setting("int", 7200, "cancel the Ansible run after N seconds (0: no limit)")
    idle_timeout: int = setting("int", 2400, "cancel the Ansible run when it reports nothing for N "
                                             "seconds (0: no limit)")
    task_timeout: int = setting("int", 1800, "a task still running on a host after N seconds fails "
                                             "there (Ansible's task_timeout; 0: no limit)")
    ssh_keepalive: int = setting("int", 15, "SSH keepalive every N seconds: a host that misses 4 "
                                            "in a row is unreachable (0: off)")
    min_free_mb: int = setting("int", 100, "MiB that must be free in the state directory (and "
                                           "the work directory) for a run to start (0: no check)")
    preflight: str = setting("choice", "skip", "SSH pre-flight before converging: off, report failing hosts, "
                                               "or skip them", ("off", "report", "skip"))
    scope: str = setting("choice", "auto", "which targets a new revision converges: auto (those its "
                                           "Git diff affects, docs/scope.md) or full (every target)",
                         ("auto", "full"))
    base: str | None = setting("str", None, "plan: the revision to compare with (a merge request's "
                                            "target branch) instead of each target's own")
    preflight_timeout: int = setting("int", 5, "seconds to wait for each host in the pre-flight", minimum=1)
    known_hosts: str | None = setting("path", None, "known_hosts for Git over SSH and the pre-flight "
                                                    "(default ~/.ssh/known_hosts)")
    ssh_key: str | None = setting("path", None, "private key for Git over SSH")
    accept_host_key: bool = setting("bool", False, "Git over SSH: accept and remember an unknown host key")
    git_token_file: str | None = setting("path", None, "file holding an HTTPS token for Git (or set GITOPS_ANSIBLE_GIT_TOKEN)")
    git_token_user: str = setting("str", "x-access-token", "user name sent with the HTTPS token")
    git_timeout: int = setting("int", 60, "seconds allowed for one Git operation", minimum=1)
    galaxy_timeout: int = setting("int", 600, "seconds allowed for installing the requirements of a "
                                              "revision (ansible-galaxy)", minimum=1)
    verify: str = setting("choice", "none", "signature policy: which commits and tags must be signed by a "
                                            "trusted key before a revision is applied",
                          verify_modes)
    trusted_gpg_keys: str | None = setting("path", None, "verify: an armored OpenPGP public key file, or a "
                                                         "directory of *.asc files (outside the repository)")
    trusted_ssh_signers: str | None = setting("path", None, "verify: an SSH allowed_signers file (outside the "
                                                            "repository)")
    seal_trailer: str = setting("str", "GitOps-Seal", "verify = strict: the trailer of a signed commit that "
                                                      "ends the walk (late adoption, key rotation)")
    promote_from: str | None = setting("env", None, "converge only revisions that this environment "
                                                    "converged cleanly at least `soak` ago")
    soak: float = setting("duration", 0.0, "promote_from: how long a revision must have run cleanly "
                                           "upstream")
    keep_runs: int = setting("int", 20, "artifact directories kept per environment")
    keep_checkouts: int = setting("int", 3, "checkouts kept per environment (besides the last good one)")
    slicing: str = setting("choice", "count", "with execution_nodes: split the SSH targets evenly over "
                                              "the nodes (count), or by each node's groups (group)",
                           ("count", "group"))
    json: bool = setting("bool", False, "structured JSON lines on stdout instead of progress for a person")
    sources: dict = field(default_factory=dict, compare=False, repr=False)
    # GITOPS_ANSIBLE_GIT_TOKEN of the environment the settings were loaded from.
    git_token_env: str | None = field(default=None, compare=False, repr=False)
    # [[galaxy_servers]] of the config file (a list of tables: no flag, no variable).
    galaxy_servers: tuple[GalaxyServer, ...] = ()
    # [[execution_nodes]] of the config file: where slices of the run go (nodes.py).
    execution_nodes: tuple[ExecutionNode, ...] = ()

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or _default_state_dir()).expanduser()

    @property
    def work_path(self) -> Path:
        return Path(self.workdir).expanduser() if self.workdir else self.state_path / "work"

    def require(self, *keys: str) -> None:
        for key in keys:
            if not getattr(self, key):
                raise ConfigError("settings", key, f"a value (flag --{key.replace('_', '-')}, "
                                  f"environment {ENV_PREFIX}{key.upper()} or the config file)")

    def git_token(self) -> str | None:
        if self.git_token_env:
            return self.git_token_env.strip()
        if self.git_token_file:
            path = Path(self.git_token_file).expanduser()
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise ConfigError(self.sources.get("git_token_file", "settings"), "git_token_file",
                                  "a readable file", f"{path}: {exc.strerror}") from None
        return None


SCHEMA = {f.name: Option(f.name, f.metadata["kind"], f.default, f.metadata["help"],
                         f.metadata["choices"], f.metadata["minimum"])
          for f in fields(Settings) if "kind" in f.metadata}


def _settings(values: dict, sources: dict, environ, servers=(), nodes=()) -> Settings:
    return Settings(**values, sources=sources, galaxy_servers=servers, execution_nodes=nodes,
                    git_token_env=environ.get("GITOPS_ANSIBLE_GIT_TOKEN") or None)


def _apply(values: dict, sources: dict, layer: dict, source: str) -> None:
    for key, raw in layer.items():
        option = SCHEMA.get(key)
        if option is None:
            raise ConfigError(source, key, "a known setting (" + ", ".join(sorted(SCHEMA)) + ")")
        converted = option.convert(raw, source)
        if converted is not None:
            values[key] = converted
            sources[key] = source


def read_toml(path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(str(path), "-", "a readable TOML file", exc.strerror) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "-", "a UTF-8 text file", f"byte {exc.start}: "
                          f"{exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "-", "valid TOML", str(exc)) from None


# The config file's lists of tables (no flag, no variable).
LISTS = ("galaxy_servers", "execution_nodes")


def read_file(path: Path) -> dict:
    data = read_toml(path)
    for key, value in data.items():
        if isinstance(value, dict) and key not in LISTS:  # those: their own parsers
            raise ConfigError(str(path), key, "a plain value (tables are not settings)")
    return data


def from_environ(environ) -> dict:
    layer = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_SPECIAL:
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in SCHEMA:
            raise ConfigError(f"environment variable {name}", key,
                              "a known setting (" + ", ".join(sorted(SCHEMA)) + ")")
        layer[key] = value
    return layer


def load(flags: dict | None = None, config_path: str | None = None, environ=None,
         system: bool = False) -> Settings:
    """Settings from defaults, then the config file, then the environment, then flags.

    The library reads no environment and no system file unless asked: ``environ`` (a
    mapping such as ``os.environ``) gives ``GITOPS_ANSIBLE_*`` variables, and ``system``
    reads /etc/gitops-ansible/config.toml when no other config file is named.
    """
    environ = {} if environ is None else environ
    values = {name: option.default for name, option in SCHEMA.items()}
    sources = {name: "default" for name in SCHEMA}
    path = config_path or environ.get("GITOPS_ANSIBLE_CONFIG")
    if not path and system and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    servers = nodes = ()
    if path:
        data = read_file(Path(path))
        servers = galaxy_servers(str(path), data.pop("galaxy_servers", []))
        nodes = execution_nodes(str(path), data.pop("execution_nodes", []))
        _apply(values, sources, data, str(path))
    for key, raw in from_environ(environ).items():
        _apply(values, sources, {key: raw}, f"environment variable {ENV_PREFIX}{key.upper()}")
    for key, raw in (flags or {}).items():
        _apply(values, sources, {key: raw}, f"flag --{key.replace('_', '-')}")
    return _settings(values, sources, environ, servers, nodes)


# -- the agent's file: shared settings, [agent], [[sources]], [[notify]] ----------------
AGENT_SCHEMA = {o.name: o for o in [
    Option("listen", "listen", "127.0.0.1:9420", "HOST:PORT of the HTTP endpoint (health, metrics, "
                                              "status API, webhooks, sync)"),
    Option("grace", "duration", 300.0, "SIGTERM: how long the running cycle may go on before it "
                                       "is cancelled"),
    Option("github_secret_file", "path", None, "secret of the GitHub webhook (X-Hub-Signature-256)"),
    Option("gitlab_token_file", "path", None, "secret token of the GitLab webhook (X-Gitlab-Token)"),
    Option("hmac_secret_file", "path", None, "secret of the generic webhook (X-Signature: "
                                             "sha256=HMAC of the body)"),
    Option("alert_interval", "duration", 600.0, "at most one notification per environment and "
                                                "kind within this time"),
    Option("external_url", "str", None, "the agent's pages as people reach them (e.g. "
                                        "https://gitops.example.com/): links in alerts and "
                                        "commit statuses"),
    Option("actions", "bool", False, "the pages offer sync, suspend and resume to holders of "
                                     "the actions token"),
    Option("actions_token_file", "path", None, "file holding the token the pages' actions "
                                               "ask for (actions = true)"),
]}
SOURCE_SCHEMA = {o.name: o for o in [
    Option("name", "str", None, "name of the source in logs and the API (default: its env)"),
    Option("interval", "duration", 120.0, "time between pull cycles (more than 0)", minimum=1),
    Option("jitter", "duration", 10.0, "random 0..N added to every interval"),
    Option("drift_interval", "duration", 3600.0, "time between drift checks of the applied "
                                                 "revision (0: never)"),
    Option("drift", "choice", "report", "when a drift check finds changes: report them, or heal "
                                        "(converge the applied revision again)",
           ("report", "heal")),
    Option("retry_base", "duration", 15.0, "first retry delay after a failed cycle (more than 0); "
                                           "doubles on every further failure", minimum=1),
    Option("retry_max", "duration", 600.0, "longest retry delay"),
]}
NOTIFY_KINDS = ("webhook", "slack")
ALERT_EVENTS = ("failure", "recovery", "drift", "refused")
STATUS_KINDS = {"github": "https://api.github.com", "gitlab": "https://gitlab.com"}


@dataclass
class Source:
    name: str
    settings: Settings
    options: dict
    windows: list
    commit_status: dict | None = None


@dataclass
class AgentConfig:
    path: str
    agent: dict
    sources: list[Source]
    notify: list[dict]
    json: bool = False
    state_dir: Path | None = None


def _table(data: dict, schema: dict, where: str) -> dict:
    values = {name: option.default for name, option in schema.items()}
    for key, raw in data.items():
        option = schema.get(key)
        if option is None:
            raise ConfigError(where, key, "a known key (" + ", ".join(sorted(schema)) + ")")
        values[key] = option.convert(raw, where)
    return values


def _check_pages(path: str, agent: dict) -> None:
    """[agent] external_url is an http(s) URL without credentials; actions need a token."""
    url = agent["external_url"]
    # The pages link from the root of their host: a path prefix would break them.
    if url is not None and not re.fullmatch(r"https?://[^\s/@]+/?", url):
        raise ConfigError(f"{path}: [agent]", "external_url", "an http:// or https:// URL of a "
                          "host name the agent is served at the root of, without credentials "
                          "or a path, such as https://gitops.example.com/", url)
    if agent["actions"] and not agent["actions_token_file"]:
        raise ConfigError(f"{path}: [agent]", "actions_token_file", "a file holding the "
                          "actions token (actions = true)")


def _check_source(settings: Settings) -> None:
    """The signature policy's keys can be read and the promotion gate names another
    environment (a ``ConfigError`` otherwise)."""
    from . import gate
    from .verify import Policy

    Policy.of(settings)
    gate.check(settings)


def _source(path: str, index: int, table: dict, shared: dict, environ,
            servers: tuple[GalaxyServer, ...], nodes: tuple[ExecutionNode, ...]) -> Source:
    from .schedule import ScheduleError, parse_window

    where = f"{path}: sources[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(path, f"sources[{index}]", "a table ([[sources]])")
    table = dict(table)
    windows_raw = table.pop("windows", [])
    status_raw = table.pop("commit_status", None)
    if "galaxy_servers" in table:  # a source's own list replaces the file's
        servers = galaxy_servers(where, table.pop("galaxy_servers"))
    if "execution_nodes" in table:  # so does a source's own list of nodes
        nodes = execution_nodes(where, table.pop("execution_nodes"))
    own = {k: table.pop(k) for k in list(table) if k in SOURCE_SCHEMA}
    options = _table(own, SOURCE_SCHEMA, where)
    values = {name: option.default for name, option in SCHEMA.items()}
    sources = {name: "default" for name in SCHEMA}
    _apply(values, sources, shared, path)
    for key, raw in from_environ(environ).items():
        _apply(values, sources, {key: raw}, f"environment variable {ENV_PREFIX}{key.upper()}")
    for key in table:
        if key not in SCHEMA:
            raise ConfigError(where, key, "a known key (" + ", ".join(
                sorted(set(SCHEMA) | set(SOURCE_SCHEMA) | {"windows", "commit_status",
                                                           *LISTS})) + ")")
    if "state_dir" in table:
        raise ConfigError(where, "state_dir", "no value here: the agent keeps one store; set "
                                              "state_dir at the top of the file")
    _apply(values, sources, table, where)
    settings = _settings(values, sources, environ, servers, nodes)
    for key in ("env", "repo"):
        if not values.get(key):
            raise ConfigError(where, key, "a value (every source needs repo and env)")
    if not isinstance(windows_raw, list):
        raise ConfigError(where, "windows", "a list of tables like {deny = \"0 8 * * 1-5\", "
                                            "duration = \"10h\", timezone = \"UTC\"}")
    windows = []
    for number, raw in enumerate(windows_raw):
        try:
            windows.append(parse_window(raw if isinstance(raw, dict) else {}))
        except ScheduleError as exc:
            raise ConfigError(where, f"windows[{number}]", str(exc)) from None
    if options["retry_max"] < options["retry_base"]:
        raise ConfigError(where, "retry_max", f"at least retry_base ({options['retry_base']:g}s)",
                          options["retry_max"])
    name = options["name"] or values["env"]
    return Source(name, settings, options, windows, _commit_status(where, status_raw))


def _commit_status(where: str, raw) -> dict | None:
    if raw is None:
        return None
    where = f"{where}.commit_status"
    if not isinstance(raw, dict):
        raise ConfigError(where, "-", "a table with kind, repository and token_file")
    allowed = {"kind", "api_url", "repository", "token_file", "context"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(where, key, "one of " + ", ".join(sorted(allowed)))
    if raw.get("kind") not in STATUS_KINDS:
        raise ConfigError(where, "kind", "one of " + ", ".join(STATUS_KINDS), raw.get("kind"))
    for key in ("repository", "token_file"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(where, key, "a string (repository: owner/name on GitHub, the "
                                          "project path or id on GitLab)")
    return {"api_url": STATUS_KINDS[raw["kind"]], **raw}


def _notify(path: str, index: int, raw) -> dict:
    where = f"{path}: notify[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(path, f"notify[{index}]", "a table ([[notify]])")
    allowed = {"kind", "url", "url_file", "events"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(where, key, "one of " + ", ".join(sorted(allowed)))
    if raw.get("kind") not in NOTIFY_KINDS:
        raise ConfigError(where, "kind", "one of " + ", ".join(NOTIFY_KINDS), raw.get("kind"))
    if bool(raw.get("url")) == bool(raw.get("url_file")):
        raise ConfigError(where, "url", "exactly one of url or url_file (a file holding the URL, "
                                        "for URLs that carry a token)")
    events = raw.get("events", list(ALERT_EVENTS))
    if not isinstance(events, list) or not set(events) <= set(ALERT_EVENTS):
        raise ConfigError(where, "events", "a list of " + ", ".join(ALERT_EVENTS), events)
    return {**raw, "events": events}


def load_agent(path: str, flags: dict | None = None, environ=None) -> AgentConfig:
    """The agent's TOML file, checked as a whole: one bad key refuses the file.
    ``environ`` as for ``load``: none unless given."""
    environ = {} if environ is None else environ
    data = read_toml(path)
    agent = _table(data.pop("agent", {}), AGENT_SCHEMA, f"{path}: [agent]")
    for key, raw in (flags or {}).items():
        if key in AGENT_SCHEMA and raw is not None:
            agent[key] = AGENT_SCHEMA[key].convert(raw, f"flag --{key.replace('_', '-')}")
    _check_pages(str(path), agent)
    raw_sources = data.pop("sources", [])
    raw_notify = data.pop("notify", [])
    servers = galaxy_servers(str(path), data.pop("galaxy_servers", []))
    nodes = execution_nodes(str(path), data.pop("execution_nodes", []))
    shared = dict(data)
    shared.update({k: v for k, v in (flags or {}).items() if k in SCHEMA})
    for key, value in shared.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(str(path), key, "a setting, [agent], [[sources]], [[notify]], "
                                              "[[galaxy_servers]] or [[execution_nodes]]")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise ConfigError(str(path), "sources", "at least one [[sources]] table with repo and env")
    sources = [_source(str(path), i, table, shared, environ, servers, nodes)
               for i, table in enumerate(raw_sources)]
    seen: dict[str, str] = {}
    for index, src in enumerate(sources):
        for key, value in (("name", src.name), ("env", src.settings.env)):
            if (key, value) in seen:
                raise ConfigError(f"{path}: sources[{index}]", key,
                                  f"a unique value ({value!r} is used by {seen[(key, value)]})")
            seen[(key, value)] = f"sources[{index}]"
    if not isinstance(raw_notify, list):
        raise ConfigError(str(path), "notify", "a list of tables ([[notify]] with kind, url or "
                                               "url_file, events)", raw_notify)
    notify = [_notify(str(path), i, raw) for i, raw in enumerate(raw_notify)]
    for src in sources:  # a source whose policy or gate cannot work refuses the file
        _check_source(src.settings)
    return AgentConfig(str(path), agent, sources, notify, json=sources[0].settings.json,
                       state_dir=sources[0].settings.state_path)
