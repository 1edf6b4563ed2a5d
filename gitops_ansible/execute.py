"""Run a plan through ansible-runner and turn its event stream into per-host, per-task results.

One private data directory per run. Every event passes through ``Execution.handle``
as it arrives: secrets are scrubbed from it before ansible-runner writes it to the
artifacts, the result is appended to the run's journal (``journal.py``: what a killed run
is completed from), the listener gets a ``TaskResult`` (progress for a person, JSON for
machines), and the final ``playbook_on_stats`` event gives the per-host totals.

A run never hangs: it has a timeout, an idle timeout (no event for that long), and a
journal that cannot be written (a full disk) ends it; each task has Ansible's
``task_timeout`` and SSH sends keepalives, so that a host that stops answering is
unreachable while the others go on (``runner_env``).
"""
from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .problems import text_lines
from .report import Redactor, diff_text, free_space
from .store import HostResult, TaskResult

# A task reports per-item changes (e.g. one line per Kubernetes object) by showing a list
# in this variable with ansible.builtin.debug; it becomes the task result's message.
REPORT_VAR = "gitops_report"
# A failed task whose result carries this key, true, says that its target refused the
# revision before anything was applied on it (a check that needs the target, such as a
# server-side dry-run); its message says why. The run is then refused, not failed.
REFUSED_KEY = "gitops_refused"
RESULT_EVENTS = {"runner_on_ok": "ok", "runner_on_failed": "failed",
                 "runner_on_unreachable": "unreachable", "runner_on_skipped": "skipped"}


@dataclass
class Ending:
    """How one part of the run ended."""
    status: str  # successful | failed | timeout | cancelled | error
    rc: int
    message: str | None = None
    artifacts: bool = False  # it left artifacts (a part cut short by a full disk: none)


@dataclass
class Outcome:
    status: str  # successful | failed | timeout | cancelled | error
    rc: int
    hosts: dict[str, HostResult] = field(default_factory=dict)
    tasks: list[TaskResult] = field(default_factory=list)
    message: str | None = None
    artifacts: Path | None = None
    refused: dict[str, str] = field(default_factory=dict)  # target -> why it refused


class Execution:
    """The event stream of one run, folded into results as it arrives."""

    def __init__(self, plan, redactor: Redactor, listener=None, journal=None,
                 cancel: threading.Event | None = None):
        self.plan, self.redactor, self.listener, self.journal = plan, redactor, listener, journal
        self.platform_of = platform_of(plan)
        self.tasks: list[TaskResult] = []
        self.failed_items: dict[tuple, list[str]] = {}  # (host, task uuid) -> "item: why"
        self.refusals: dict[str, str] = {}  # host -> why, when its last failure refused
        self.stats: dict | None = None
        self.cancel = cancel or threading.Event()
        self.last_event = time.monotonic()
        self.why_stopped: str | None = None  # the run was ended here: idle, journal
        # A run in slices (nodes.py) gets events from several threads, and one stats event
        # per slice: their sum is journaled once, when every slice has ended.
        self.sliced = bool(plan.slices)
        self._lock = threading.Lock()

    def stopping(self) -> bool:
        """ansible-runner's cancel callback (polled while Ansible runs): a cancel asked
        for, an idle stream, or a journal that cannot be written."""
        if self.cancel.is_set():
            return True
        idle = self.plan.idle_timeout
        if idle and time.monotonic() - self.last_event > idle:
            self.why_stopped = f"cancelled: Ansible reported nothing for {idle}s (idle_timeout)"
        elif self.journal and self.journal.error:
            error = self.journal.error
            self.why_stopped = (f"cancelled: the run's journal {self.journal.path} cannot be "
                                f"written: {error.strerror or error}{free_space(self.journal.path)}")
        return self.why_stopped is not None

    def handle(self, event: dict) -> bool:
        with self._lock:
            return self._handle(event)

    def _handle(self, event: dict) -> bool:
        self.last_event = time.monotonic()
        self.redactor.scrub_event(event)
        name, data = event.get("event"), event.get("event_data") or {}
        if name == "playbook_on_task_start" and self.listener:
            self.listener.task_start(data.get("task", ""), data.get("role"))
        elif name == "runner_item_on_failed":
            res = data.get("res") if isinstance(data.get("res"), dict) else {}
            label = str(res.get("_ansible_item_label", res.get("item", "?")))[:80]
            self.failed_items.setdefault((data.get("host"), data.get("task_uuid")), []).append(
                f"{label}: {_failure(res)}")
        elif name in RESULT_EVENTS:
            self._result(RESULT_EVENTS[name], data)
        elif name == "playbook_on_stats":
            self._add_stats(data)
            if self.journal and not self.sliced:
                self.journal.stats(data)
        return True  # keep the (scrubbed) event in the artifacts

    def _add_stats(self, data: dict) -> None:
        self.stats = {} if self.stats is None else self.stats
        for key, counts in data.items():
            if isinstance(counts, dict):
                self.stats.setdefault(key, {}).update(counts)

    def node_failed(self, node: str, hosts: list[str], why: str) -> None:
        """The hosts of a slice whose execution node failed: unreachable, naming it."""
        with self._lock:
            for host in hosts:
                result = TaskResult(host=host, task=f"execution node {node}", role=None,
                                    status="unreachable", duration=None, message=why[:1000])
                self.tasks.append(result)
                if self.journal:
                    self.journal.task(result)
                if self.listener:
                    self.listener.task_result(result, None)
            if self.stats is not None or self.sliced:
                self._add_stats({"dark": {host: 1 for host in hosts}})

    def slices_ended(self) -> None:
        """Every slice has ended: their stats, summed, are the run's (journaled now)."""
        if self.journal and self.stats is not None:
            self.journal.stats(self.stats)

    def _result(self, status: str, data: dict) -> None:
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        if status == "ok" and res.get("changed"):
            status = "changed"
        if status == "failed" and data.get("ignore_errors"):
            status = "ok"
        message = None
        if status in ("failed", "unreachable"):
            message = _failure(res) or status
            items = self.failed_items.pop((data.get("host"), data.get("task_uuid")), [])
            if items:  # a loop: its own message is "One or more items failed"
                more = f"; {len(items) - ITEMS_SHOWN} more" if len(items) > ITEMS_SHOWN else ""
                message = f"{message}: {'; '.join(items[:ITEMS_SHOWN])}{more}"
            message = message[:1000]
            if status == "failed":
                self._refusal(data.get("host", "?"), res, message)
        elif isinstance(res.get(REPORT_VAR), list) and res[REPORT_VAR]:
            message = _listed(res[REPORT_VAR])
        diffs = _diffs(res) if status == "changed" else None
        result = TaskResult(host=data.get("host", "?"), task=data.get("task", ""),
                            role=data.get("role"), status=status,
                            duration=data.get("duration"), message=message,
                            diff=diff_text(diffs)[:DIFF_MAX] or None if diffs else None)
        self.tasks.append(result)
        if self.journal:
            self.journal.task(result)
        if self.listener:
            self.listener.task_result(result, diffs)

    def _refusal(self, host: str, res: dict, message: str) -> None:
        """Keep whether the host's latest failure is a refusal (``REFUSED_KEY``): a later
        failure (after a rescue) is one of its own."""
        if res.get(REFUSED_KEY) is True:
            self.refusals[host] = message
        else:
            self.refusals.pop(host, None)

    def outcome(self, status: str, rc: int, **fields) -> Outcome:
        """The run's outcome with its per-host results; the hosts that refused the revision
        are those whose last failure was a refusal and that Ansible counts failed (a
        rescued refusal is not one)."""
        hosts = host_results(self.tasks, self.stats, self.platform_of)
        refused = {h: why for h, why in self.refusals.items()
                   if h in hosts and hosts[h].outcome == "failed"}
        for host in refused:
            hosts[host].refused = True
        return Outcome(status, rc, hosts, self.tasks, refused=refused, **fields)


def platform_of(plan) -> dict[str, str]:
    return {h: p for p, hosts in plan.platforms.items() for h in hosts}


def host_results(tasks: list[TaskResult], stats: dict | None,
                 platforms: dict[str, str]) -> dict[str, HostResult]:
    """Per-host totals: from Ansible's final stats; a run that never got them (killed,
    cancelled) counts its task results."""
    def count(key: str, host: str) -> int:
        if stats is not None:
            return (stats.get(key) or {}).get(host, 0)
        status = {"ok": ("ok", "changed"), "changed": ("changed",), "failures": ("failed",),
                  "dark": ("unreachable",), "skipped": ("skipped",)}[key]
        return sum(1 for t in tasks if t.host == host and t.status in status)

    names = {t.host for t in tasks}
    for key in ("ok", "changed", "failures", "dark", "skipped", "processed"):
        names |= set((stats or {}).get(key) or {})
    hosts = {}
    for host in sorted(names):
        bad = [t for t in tasks if t.host == host and t.status in ("failed", "unreachable")]
        hosts[host] = HostResult(
            host=host, platform=platforms.get(host), ok=count("ok", host),
            changed=count("changed", host), failed=count("failures", host),
            unreachable=count("dark", host), skipped=count("skipped", host),
            message=f"{bad[-1].task}: {bad[-1].message}" if bad else None)
    return hosts


ITEMS_SHOWN = 3  # a failed loop's message names its first failing items
DIFF_MAX = 20000  # characters of a task's diff kept in the store
REPORT_MAX = 20000  # characters of a task's report (gitops_report) kept as its message


def _listed(items: list) -> str:
    """A task's report (one item per object it changed), whole up to REPORT_MAX
    characters; past that, how many more there were."""
    text, shown = "", 0
    for item in map(str, items):
        if len(text) + len(item) + 2 > REPORT_MAX:
            break
        text, shown = f"{text}; {item}" if text else item, shown + 1
    return text + (f"; (+{len(items) - shown} more)" if shown < len(items) else "")


def _failure(res: dict) -> str:
    """Why a task (or one loop item) failed, in one line, as Ansible said it."""
    message = _line(res.get("msg"), 0) or _line(res.get("reason"), 0)
    if message.startswith("MODULE FAILURE"):  # the cause is in the module's own output
        return _line(res.get("module_stderr"), -1) or _line(res.get("module_stdout"), -1) \
            or message
    stderr = _line(res.get("stderr"), -1)
    if stderr and stderr not in message:
        rc = f" (rc {res['rc']})" if isinstance(res.get("rc"), int) else ""
        message = f"{message}{rc}: {stderr}" if message else stderr
    return message[:500]


def _line(text, index: int) -> str:
    """The first (0) or last (-1) line of a result's text that says something."""
    return (text_lines(text) or [""])[index]


RUN_ID_VAR = "GITOPS_ANSIBLE_RUN_ID"
# Extra variable carrying the revision being converged (roles record it, e.g. on
# Kubernetes objects); plain ansible-playbook runs leave it undefined.
REVISION_VAR = "gitops_revision"


def _diffs(res: dict) -> list:
    """Diffs of a task result; a loop keeps them in its items."""
    found = res.get("diff")
    found = found if isinstance(found, list) else [found] if found else []
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("changed") and item.get("diff"):
            diff = item["diff"]
            found.extend(diff if isinstance(diff, list) else [diff])
    return found


def runner_env(plan, run_id: str) -> dict:
    """Environment for ansible-playbook: this interpreter's bin first (ansible-runner
    starts the ``ansible-playbook`` it finds on PATH: rc 127 when the venv's is not first).

    The run id marks the Ansible processes of a run, so that a later cycle can find and
    stop those a killed controller left behind (ansible-runner starts them in their own
    session, so they outlive it).
    """
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), RUN_ID_VAR: run_id,
           "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "True",
           "ANSIBLE_FORCE_COLOR": "False",
           # The validation refuses duplicate keys; so does the run, whatever ansible.cfg says
           # (a file the validation did not see, a checkout without ansible.cfg).
           "ANSIBLE_DUPLICATE_YAML_DICT_KEY": "error"}
    config = plan.checkout / "ansible.cfg"
    if config.is_file():
        env["ANSIBLE_CONFIG"] = str(config)
    else:  # the repository layout: roles/ beside playbooks/
        env["ANSIBLE_ROLES_PATH"] = str(plan.checkout / "roles")
    env.update(plan.ansible_env)
    settings = _ansible_cfg(Path(env.get("ANSIBLE_CONFIG") or os.environ.get("ANSIBLE_CONFIG")
                                 or next((p for p in CONFIG_FILES if p.is_file()), config)))
    # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False when its caller does not: that
    # would beat ansible.cfg and the inventory's StrictHostKeyChecking=yes. What the
    # settings file says goes on ([ssh_connection] first, as Ansible reads it).
    if "ANSIBLE_HOST_KEY_CHECKING" not in os.environ:
        said = _option(settings, "ssh_connection", "host_key_checking") or \
            _option(settings, "defaults", "host_key_checking") or "True"
        env["ANSIBLE_HOST_KEY_CHECKING"] = str(said.strip().lower() not in FALSE)
    env.update(fault_defaults(plan, settings, run_id))
    return env


# Where Ansible reads its settings when neither the repository nor ANSIBLE_CONFIG names a
# file (the current directory is the checkout: its ansible.cfg is the repository's).
CONFIG_FILES = (Path("~/.ansible.cfg").expanduser(), Path("/etc/ansible/ansible.cfg"))


# Ansible's own ssh_args when neither ansible.cfg nor the environment sets them.
ANSIBLE_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s"
KEEPALIVE_COUNT = 4  # keepalives missed in a row before SSH gives up on a host


def fault_defaults(plan, config: configparser.ConfigParser, run_id: str) -> dict[str, str]:
    """What keeps one host from stalling the run, unless Ansible's settings file or the
    controller's environment says otherwise: Ansible's task_timeout, and SSH keepalives
    added to ssh_args (a host whose link is cut is unreachable after KEEPALIVE_COUNT
    missed ones; the others go on), over SSH master connections of the run's own
    (``control_dir``): one opened by someone else, without keepalives, is not reused."""
    env = {}
    if not ({"ANSIBLE_SSH_CONTROL_PATH_DIR", "ANSIBLE_SSH_CONTROL_PATH"} & set(os.environ)
            or config.has_option("ssh_connection", "control_path_dir")
            or config.has_option("ssh_connection", "control_path")):
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(control_dir(run_id))
    if plan.task_timeout and "ANSIBLE_TASK_TIMEOUT" not in os.environ and \
            not config.has_option("defaults", "task_timeout"):
        env["ANSIBLE_TASK_TIMEOUT"] = str(plan.task_timeout)
    args = os.environ.get("ANSIBLE_SSH_ARGS") or _option(config, "ssh_connection",
                                                         "ssh_args") or ANSIBLE_SSH_ARGS
    if plan.ssh_keepalive and "serveraliveinterval" not in args.lower():
        args += (f" -o ServerAliveInterval={plan.ssh_keepalive}"
                 f" -o ServerAliveCountMax={KEEPALIVE_COUNT}")
    env["ANSIBLE_SSH_ARGS"] = args  # what Ansible would use, said (the pre-flight reads it)
    return env


def masters(plan, run_id: str):
    """How the pre-flight opens the run's SSH master connections (preflight.Masters): the
    run's ssh_args in the run's own control_path_dir; None where Ansible's settings put
    them elsewhere (their users' keepalives and lifetime are not the run's)."""
    from .preflight import Masters

    env = runner_env(plan, run_id)
    if "ANSIBLE_SSH_CONTROL_PATH_DIR" not in env:
        return None
    return Masters(env["ANSIBLE_SSH_ARGS"], Path(env["ANSIBLE_SSH_CONTROL_PATH_DIR"]))


def control_dir(run_id: str) -> Path:
    """The run's SSH master connections (ControlPersist), removed after the run. Under
    the home directory, not the artifacts, and named by the run id's random part: a
    socket path longer than 107 characters cannot be used (Ansible's name in it is 40)."""
    return Path("~/.ansible/cp").expanduser() / f"ga-{run_id.rsplit('-', 1)[-1]}"


FALSE = {"false", "no", "off", "0", "n", "f"}  # Ansible's words for a false boolean


def _ansible_cfg(path: Path) -> configparser.ConfigParser:
    """Ansible's settings file, parsed as Ansible parses it (';' starts an inline
    comment, '%%' is '%'); empty when there is none or it does not parse: Ansible then
    says why."""
    def parser():
        return configparser.ConfigParser(inline_comment_prefixes=(";",))

    found = parser()
    try:
        found.read(path)
    except (configparser.Error, UnicodeDecodeError):
        return parser()
    return found


def _option(config: configparser.ConfigParser, section: str, key: str) -> str | None:
    """A setting as Ansible would read it (None when unset or it cannot be read)."""
    try:
        return config.get(section, key, fallback=None)
    except configparser.Error:
        return None


def cmdline(plan) -> str:
    args = []
    if plan.check:
        args.append("--check")
    if plan.diff:
        args.append("--diff")
    if plan.vault_password_file:
        args += ["--vault-password-file", str(plan.vault_password_file)]
    return " ".join(args)


REDACTED = ".redacted"  # in an artifact directory: its files were scrubbed of secrets


def execute(plan, run_id: str, private_dir: Path, redactor: Redactor, listener=None,
            cancel: threading.Event | None = None, journal=None) -> Outcome:
    """Run the plan: here, or in slices on execution nodes (``plan.slices``, nodes.py)
    with the controller's part here."""
    execution = Execution(plan, redactor, listener, journal, cancel)
    private_dir.mkdir(parents=True, exist_ok=True)
    artifacts = private_dir / "artifacts" / run_id
    if not plan.slices:
        ending = _here(plan, run_id, private_dir, execution, plan.effective_limit())
    else:
        from . import nodes

        endings = nodes.run(plan, run_id, private_dir, execution,
                            lambda limit: _here(plan, run_id, private_dir, execution, limit))
        execution.slices_ended()
        ending = _worst(endings)
        stop_leftovers(run_id, grace=5.0)
        _redact(redactor, private_dir, artifacts)
    return execution.outcome(ending.status, ending.rc, message=ending.message,
                             artifacts=artifacts if ending.artifacts or plan.slices else None)


def _worst(endings: list[Ending]) -> Ending:
    """The run's ending from its parts': an error, else a cancel or timeout, else the
    highest rc (a failed part makes the run failed)."""
    for status in ("error", "cancelled", "timeout"):
        found = [e for e in endings if e.status == status]
        if found:
            return found[0]
    rc = max((e.rc for e in endings), default=0)
    return Ending("failed" if rc else "successful", rc, artifacts=True)


def _here(plan, run_id: str, private_dir: Path, execution: Execution, limit: str | None):
    """The part of the run this controller converges (LIMIT), through ansible-runner."""
    import ansible_runner  # imported only when there is a playbook to run

    redactor, stats = execution.redactor, []
    artifacts = private_dir / "artifacts" / run_id  # ansible-runner's, for ident=run_id

    def handle(event: dict) -> bool:  # this part's events (the nodes' come in beside them)
        if event.get("event") == "playbook_on_stats":
            stats.append(True)
        if execution.handle(event):
            write_event(artifacts / "job_events", event)
        return False  # written: ansible-runner would write it again, more slowly
    kwargs = dict(private_data_dir=str(private_dir), project_dir=str(plan.checkout),
                  playbook=plan.playbook, inventory=str(plan.inventory), ident=run_id,
                  envvars=runner_env(plan, run_id), cmdline=cmdline(plan) or None, quiet=True,
                  event_handler=handle, cancel_callback=execution.stopping,
                  limit=limit, tags=plan.tags, skip_tags=plan.skip_tags,
                  extravars={REVISION_VAR: plan.revision} if plan.revision else None)
    if plan.timeout:
        kwargs["timeout"] = plan.timeout
    try:
        runner = ansible_runner.run(**{k: v for k, v in kwargs.items() if v is not None})
    except OSError as exc:  # ansible-runner's own writes (a full disk): the run ends here
        _let_go(exc)
        stop_leftovers(run_id, grace=5.0)
        _redact(redactor, private_dir, artifacts)
        where = exc.filename or private_dir
        cancelled = execution.cancel.is_set()
        if not execution.sliced:
            execution.stats = None  # the run was cut short: its totals are its task results'
        why = f"cannot write {where}: {exc.strerror or exc}{free_space(Path(where))}"
        return Ending("cancelled" if cancelled else "error", -1,
                      f"cancelled; then {why}" if cancelled else why)
    if not execution.sliced:
        stop_leftovers(run_id, grace=5.0)  # a cancelled run can leave module processes
        _redact(redactor, private_dir, artifacts)
    status = "cancelled" if runner.status == "canceled" else runner.status
    ending = Ending(status, runner.rc if runner.rc is not None else -1, artifacts=True)
    if status in ("timeout", "cancelled"):
        ending.message = (f"cancelled after the {plan.timeout}s timeout" if status ==
                          "timeout" else execution.why_stopped or "cancelled")
    elif not stats:
        ending.status = "error"
        ending.message = redactor.scrub(_ansible_error(artifacts / "stdout", plan.checkout)) \
            or f"ansible-playbook ended with rc {runner.rc} and no results"
    return ending


def write_event(events: Path, event: dict) -> None:
    """An event (scrubbed) into the artifacts, as ansible-runner names it: whole or not
    at all (a temporary file, renamed). ``json.dumps`` in one write: ansible-runner's own
    ``json.dump`` through a codecs stream encodes in pure Python (the 1003 events of a
    12-host no-op: 0.231 CPU s written here, 0.288 by ansible-runner)."""
    path = events / f"{event['counter']}-{event['uuid']}.json"
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(event))
    os.replace(temporary, path)


def _let_go(exc: OSError) -> None:
    """Close what ansible-runner left open when its write failed: its output file still
    holds buffered data, and closing it (when collected) fails again and Python prints a
    traceback. Collected here, with that second failure of the same kind kept quiet."""
    import gc
    import traceback

    default = sys.unraisablehook

    def quiet(unraisable):
        if not isinstance(unraisable.exc_value, OSError):
            default(unraisable)

    sys.unraisablehook = quiet
    try:
        traceback.clear_frames(exc.__traceback__)
        gc.collect()
    finally:
        sys.unraisablehook = default


def _redact(redactor: Redactor, private_dir: Path, artifacts: Path) -> None:
    """Scrub the artifacts of secrets (the events were scrubbed as they came), then mark
    them redacted; artifacts that cannot be scrubbed (a full disk) are removed, never
    kept with a secret in them."""
    try:
        redactor.scrub_tree(artifacts, skip=("job_events",))
        for partial in artifacts.glob("job_events/*-partial.json"):  # Ansible's, unscrubbed
            partial.unlink()
        (private_dir / REDACTED).touch()
    except OSError:
        shutil.rmtree(private_dir, ignore_errors=True)


_ORIGIN = re.compile(r"Origin: (?P<path>.+?)(?P<pos>(:\d+)+)$")


def _ansible_error(path: Path, checkout: Path) -> str:
    """Ansible's own error line from the output of a run that ended without results
    ("[ERROR]: ...", "ERROR! ..." before ansible-core 2.19), with the file:line it names
    relative to the checkout; else the last lines of the output. The last one: the error
    that ended the run comes after those of the failures it went past (ignore_errors)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    for number, line in reversed(list(enumerate(lines))):
        if line.startswith(("[ERROR]:", "ERROR!")):
            error = line.split(":", 1)[1].strip() if line.startswith("[") else line[6:].strip()
            origin = next((m for m in map(_ORIGIN.match, lines[number + 1:number + 3]) if m),
                          None)
            if origin:
                where, root = Path(origin["path"]), checkout.resolve()
                where = where.relative_to(root) if where.is_relative_to(root) else where
                error += f" ({where}{origin['pos']})"
            return error
    return " | ".join(line for line in lines[-5:] if line)


def orphans(run_id: str) -> list[int]:
    """Processes still running for ``run_id`` (found by their environment, Linux /proc),
    and its SSH master connections (found by the title OpenSSH gives a master, which
    overwrites its environment), in this controller's PID namespace: an execution node
    that shares its kernel (a container) stops its own (nodes.py)."""
    marker = f"{RUN_ID_VAR}={run_id}".encode()
    master = f"ssh: {control_dir(run_id)}/".encode()
    found, own = [], _pid_namespace("self")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            ours = marker in (entry / "environ").read_bytes().split(b"\0") or \
                (entry / "cmdline").read_bytes().startswith(master)
        except OSError:
            continue
        if ours and _pid_namespace(entry.name) == own:
            found.append(int(entry.name))
    return found


def _pid_namespace(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def stop_leftovers(run_id: str, grace: float = 10.0) -> list[int]:
    """What a run leaves when it ends or its controller was killed: its Ansible processes
    and SSH master connections (stopped; their pids returned) and the masters' directory."""
    stopped = stop_orphans(run_id, grace)
    shutil.rmtree(control_dir(run_id), ignore_errors=True)
    return stopped


def stop_orphans(run_id: str, grace: float = 10.0) -> list[int]:
    """Stop what a killed run left running: SIGTERM, then SIGKILL after ``grace`` seconds."""
    pids = remaining = orphans(run_id)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not remaining:
            break
        for pid in remaining:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while remaining and time.monotonic() < deadline:
            time.sleep(0.2)
            remaining = orphans(run_id)
    return pids
