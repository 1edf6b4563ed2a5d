"""Slices of a converge on execution nodes: ansible-runner's streaming, carried by SSH.

AWX spreads its jobs over execution nodes with ``ansible-runner transmit | worker |
process`` carried by Receptor; here SSH carries the same stream. ``assign`` decides,
before anything is touched, which targets each node converges (``slicing``: an even share
of the SSH targets per node, or each node's groups) and refuses a node whose ansible-core
or ansible-runner is not the controller's; ``run`` converges every slice at once, the
controller's own part (Kubernetes clusters, VMs, local targets, plays that need all their
hosts together) in the calling thread.

A node's events go through the run's ``Execution`` like a local run's (scrubbed before
they are written, journaled, shown as progress). What a worker sends back besides them
is read here, not by ansible-runner's processor: the ``starting`` status carries the
node's whole environment, and the artifacts the worker zips at the end hold its events
and output unscrubbed; only ``rc``, ``status`` and the output (scrubbed) are kept.

A node that stops answering (its stream ends without its end mark, SSH's keepalives
missed) makes its slice's hosts unreachable, naming it, while the other slices go on.
Cancelling the run, its timeout, or the next cycle after a killed controller stop what
the run started on every node (processes marked with the run id, its work directory).
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .config import ExecutionNode
from .execute import (REVISION_VAR, RUN_ID_VAR, Ending, cmdline, control_dir, runner_env,
                      write_event)

CONNECT_TIMEOUT = 10  # seconds for SSH to reach a node
CHECK_TIMEOUT = 60    # seconds for a node to report its versions
STOP_GRACE = 5        # seconds between SIGTERM and SIGKILL on a node
DEADLINE_GRACE = 60   # past the run's timeout (the worker's own), the node is stopped
POLL = 0.5            # seconds between checks of the run's cancel and idle state
STREAM_LINE_MAX = 64 << 20  # bytes of one line of a worker's stream


class NodeRefused(Exception):
    """A node that cannot take part: the run is refused before any target is touched."""


@dataclass
class Slice:
    """The targets one node converges; ``down`` says why the node cannot (its hosts are
    then unreachable, naming it)."""
    node: ExecutionNode
    hosts: list[str]
    down: str | None = None


class Transport(Protocol):
    """The way to one node: what a slice needs, small enough for another carrier
    (Receptor's signed work units) to provide."""
    name: str

    def versions(self) -> dict[str, str]:
        """ansible-core and ansible-runner as the node's worker would run them."""

    def start(self, run_id: str, workdir: str, errors) -> subprocess.Popen:
        """A worker for one job: binary ``stdin`` takes the transmitted job, ``stdout``
        gives the worker's stream, what it says besides goes to the file ``errors``;
        ``wait``, ``poll`` and ``kill`` as a process's."""

    def stop(self, run_id: str, workdir: str) -> str | None:
        """End what the run left on the node and remove its work directory; why not,
        when that failed."""


class SSHNode:
    """A node reached by OpenSSH, checked against its known_hosts, never a terminal."""

    def __init__(self, node: ExecutionNode, keepalive: int = 0):
        self.node, self.name, self.keepalive = node, node.name, keepalive

    def argv(self, command: str) -> list[str]:
        node = self.node
        args = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-p", str(node.port)]
        if node.known_hosts:
            args += ["-o", f'UserKnownHostsFile="{Path(node.known_hosts).expanduser()}"',
                     "-o", "GlobalKnownHostsFile=/dev/null"]
        if node.ssh_key:
            args += ["-i", str(Path(node.ssh_key).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.keepalive:
            args += ["-o", f"ServerAliveInterval={self.keepalive}",
                     "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT}"]
        return args + ["--", node.destination, command]

    def _env(self, **values) -> str:
        """The remote shell's prelude: the runner's directory first on PATH (its worker
        starts the ansible-playbook found there), a UTF-8 locale (Ansible's requirement;
        a non-interactive session may have none), then VALUES exported."""
        runner = self.node.runner
        path = f'PATH={shlex.quote(os.path.dirname(runner))}:"$PATH" ' if "/" in runner else ""
        pairs = " ".join(f"{k}={shlex.quote(str(v))}"
                         for k, v in {"LC_ALL": "C.UTF-8", **values}.items())
        return f"cd / && export {path}{pairs} && "

    def versions(self) -> dict[str, str]:
        runner = shlex.quote(self.node.runner)
        command = self._env() + f"{runner} worker --worker-info && ansible-playbook --version"
        try:
            done = subprocess.run(self.argv(command), capture_output=True, text=True,
                                  timeout=CHECK_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise OSError(f"no answer within {CHECK_TIMEOUT}s") from None
        runner_version = re.search(r"\brunner_version: *'?([^',}\s]+)", done.stdout)
        core = re.search(r"\[core ([^\]]+)\]", done.stdout)
        if done.returncode != 0 or not (runner_version and core):
            raise OSError(_last_line(done.stderr) or f"rc {done.returncode}: no versions "
                          f"in {_last_line(done.stdout) or 'an empty answer'}")
        return {"ansible-core": core[1], "ansible-runner": runner_version[1]}

    def start(self, run_id: str, workdir: str, errors) -> subprocess.Popen:
        command = self._env(**{RUN_ID_VAR: run_id,
                               "ANSIBLE_RUNNER_KEEPALIVE_SECONDS": self.keepalive or 0})
        command += (f"exec {shlex.quote(self.node.runner)} worker "
                    f"--private-data-dir={shlex.quote(workdir)} --delete")
        return subprocess.Popen(self.argv(command), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors, start_new_session=True)

    def stop(self, run_id: str, workdir: str) -> str | None:
        marker = shlex.quote(f"{RUN_ID_VAR}={run_id}")
        script = (f"for sig in TERM KILL; do pids=$(grep -lzx {marker} /proc/[0-9]*/environ "
                  "2>/dev/null | cut -d/ -f3); [ -n \"$pids\" ] || break; "
                  f"kill -$sig $pids 2>/dev/null; sleep {STOP_GRACE}; done; "
                  f"rm -rf {shlex.quote(workdir)}")
        try:
            done = subprocess.run(self.argv(script), capture_output=True, text=True,
                                  timeout=CHECK_TIMEOUT + 2 * STOP_GRACE,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"no answer within {CHECK_TIMEOUT}s"
        return None if done.returncode == 0 else _last_line(done.stderr) or \
            f"rc {done.returncode}"


KEEPALIVE_COUNT = 4  # keepalives missed in a row before SSH gives up on a node


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def controller_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"ansible-core": version("ansible-core"), "ansible-runner": version("ansible-runner")}


def transports(settings) -> dict[str, SSHNode]:
    return {node.name: SSHNode(node, settings.ssh_keepalive)
            for node in settings.execution_nodes}


def work_dir(node: ExecutionNode, run_id: str) -> str:
    """The job's private data directory on the node (one per run and node)."""
    return f"{node.workdir.rstrip('/')}/gitops-ansible-{run_id}"


# -- which node converges which targets ------------------------------------------------
def assign(settings, inventory, log) -> tuple[list[Slice], list[str]]:
    """The slices of this run and the targets left to the controller, decided before
    anything is touched: the SSH targets the run converges (``inventory.limited``; not
    those a play needs together) split by ``settings.slicing``. A node at other versions
    than the controller's, or whose keys cannot be read, refuses the run
    (``NodeRefused``); a node that does not answer gets no share (slicing = count: the
    answering nodes share its hosts) or its hosts are unreachable (slicing = group, or
    when no node answers). No slice: the run is the controller's alone."""
    nodes = settings.execution_nodes
    chosen = [h for h in sorted(inventory.targets)
              if inventory.limited is None or h in inventory.limited]
    movable = [h for h in chosen if inventory.targets[h].is_ssh
               and not inventory.targets[h].created_by_run]
    held = _held(inventory, movable)
    for why in sorted(set(held.values())):
        log(f"execution nodes: {why}: its targets run on the controller", "warning")
    movable = [h for h in movable if h not in held]
    if not nodes or not movable:
        return [], chosen
    _readable(nodes)
    down = _check(settings, log)
    if settings.slicing == "group":
        slices = _by_group(nodes, movable, inventory, down)
    else:
        up = [n for n in nodes if n.name not in down]
        for node in nodes:
            if node.name in down and up:
                log(f"execution node {node.name} does not answer ({down[node.name]}): "
                    f"its share goes to {', '.join(n.name for n in up)}", "warning")
        shares = _shares(movable, len(up or nodes))
        slices = [Slice(node, hosts, down.get(node.name))
                  for node, hosts in zip(up or nodes, shares) if hosts]
    on_nodes = {h for piece in slices for h in piece.hosts}
    return slices, [h for h in chosen if h not in on_nodes]


def _readable(nodes) -> None:
    for node in nodes:
        for key in ("ssh_key", "known_hosts", "target_key"):
            path = getattr(node, key)
            if path and not os.access(Path(path).expanduser(), os.R_OK):
                raise NodeRefused(f"{node.where}: key '{key}': expected a readable file, got "
                                  f"{path!r}")


def _held(inventory, chosen: list[str]) -> dict[str, str]:
    """The chosen targets of plays that need all their hosts in one run (run_once,
    serial, delegate_to: ``Play.together``), with why."""
    held = {}
    for play in inventory.plays:
        if play.together:
            for host in play.hosts & set(chosen):
                held.setdefault(host, f"{play.name} uses {play.together}")
    return held


def _shares(hosts: list[str], count: int) -> list[list[str]]:
    """HOSTS in COUNT runs of consecutive names, as even as can be."""
    size, extra = divmod(len(hosts), count)
    shares, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        shares.append(hosts[start:end])
        start = end
    return shares


def _by_group(nodes, hosts: list[str], inventory, down: dict[str, str]) -> list[Slice]:
    """Each host to the first node listing one of its groups; the others stay on the
    controller."""
    slices = {node.name: Slice(node, [], down.get(node.name)) for node in nodes}
    for host in hosts:
        view = inventory.views.get(host)
        groups = view.groups if view else frozenset()
        node = next((n for n in nodes if groups & set(n.groups)), None)
        if node:
            slices[node.name].hosts.append(host)
    return [s for s in slices.values() if s.hosts]


def _check(settings, log) -> dict[str, str]:
    """Every node's versions, at once: the nodes that do not answer, with why; a node at
    other versions refuses the run."""
    want, results = controller_versions(), {}

    def ask(transport) -> None:
        try:
            results[transport.name] = transport.versions()
        except OSError as exc:
            results[transport.name] = str(exc)
    threads = [threading.Thread(target=ask, args=(t,)) for t in transports(settings).values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    down = {}
    for name, found in sorted(results.items()):
        if isinstance(found, str):
            down[name] = found
            continue
        other = {k: v for k, v in found.items() if v != want[k]}
        if other:
            said = ", ".join(f"{k} {v} (the controller: {want[k]})" for k, v in other.items())
            raise NodeRefused(f"execution node {name} runs {said}: a node runs the "
                              "controller's ansible-core and ansible-runner")
        log(f"execution node {name}: ansible-core {found['ansible-core']}, ansible-runner "
            f"{found['ansible-runner']}")
    return down


def stop_everywhere(settings, run_id: str, log=None) -> None:
    """What RUN_ID left on the nodes (a killed controller's run): stopped, removed."""
    for transport in transports(settings).values():
        why = transport.stop(run_id, work_dir(transport.node, run_id))
        if why and log:
            log(f"execution node {transport.name}: could not clean up run {run_id}: {why}",
                "warning")


# -- converging the slices --------------------------------------------------------------
def run(plan, run_id: str, private_dir: Path, execution, here) -> list[Ending]:
    """Every slice at once (one thread each), the controller's part in this thread
    (``here(limit)``, skipped when it has no target); the endings of all."""
    slices, endings = plan.slices, []
    on_nodes = {h for s in slices for h in s.hosts}

    def one(piece: Slice) -> None:
        transport = SSHNode(piece.node, plan.ssh_keepalive)
        try:
            with tempfile.TemporaryFile() as errors:
                endings.append(_slice(transport, piece, plan, run_id, private_dir, execution,
                                      errors))
        except Exception as exc:  # a slice's hosts are never left without a result
            execution.node_failed(piece.node.name, piece.hosts, f"internal error: {exc!r}")
            endings.append(Ending("error", -1, f"execution node {piece.node.name}: internal "
                                               f"error: {exc!r}"))
    threads = [threading.Thread(target=one, args=(s,), name=f"node-{s.node.name}")
               for s in slices]
    for thread in threads:
        thread.start()
    try:
        if set(plan.here) - set(plan.excluded):
            endings.append(here(":".join([plan.effective_limit() or "all"]
                                         + [f"!{h}" for h in sorted(on_nodes)])))
    finally:
        for thread in threads:
            thread.join()
        shutil.rmtree(private_dir / "nodes", ignore_errors=True)  # the jobs' copies
    return endings


def _slice(transport, piece: Slice, plan, run_id: str, private_dir: Path,
           execution, errors) -> Ending:
    node = piece.node
    if piece.down:
        execution.node_failed(node.name, piece.hosts, f"did not answer: {piece.down}")
        return Ending("failed", 4)
    artifacts = private_dir / "artifacts" / run_id / "nodes" / node.name
    workdir = work_dir(node, run_id)
    job = private_dir / "nodes" / node.name
    try:
        kwargs = _job(plan, piece, run_id, job, workdir)
        worker = transport.start(run_id, workdir, errors)
    except OSError as exc:
        shutil.rmtree(job, ignore_errors=True)
        execution.node_failed(node.name, piece.hosts, f"could not start: {exc}")
        return Ending("failed", 4)
    sender = threading.Thread(target=_transmit, args=(job, kwargs, worker))
    watcher = _Watcher(transport, worker, execution, plan.timeout, run_id, workdir)
    sender.start()
    watcher.start()
    try:
        found = _Stream(worker.stdout, execution, artifacts).read()
        if not found.get("eof") and worker.poll() is None:  # a stream that cannot be read
            worker.kill()
    finally:
        sender.join()
        watcher.done.set()
        worker.wait()
        watcher.join()
        # what outlives the worker (its Ansible's SSH masters, ControlPersist) goes too
        transport.stop(run_id, workdir)
    errors.seek(0)
    return _ended(found, watcher, worker, execution, piece, errors.read())


def _ended(found: dict, watcher, worker, execution, piece: Slice, said: bytes) -> Ending:
    node = piece.node
    if watcher.why == "timeout":  # stopped from here: past the run's timeout, or cancelled
        return Ending("timeout", -1, f"cancelled: execution node {node.name} ran past the "
                                     f"run's timeout")
    if watcher.why:
        return Ending("cancelled", -1, execution.why_stopped or "cancelled")
    if not found.get("eof"):
        said = _last_line(said.decode(errors="replace"))
        why = found.get("error") or said or f"its stream ended (ssh rc {worker.returncode})"
        execution.node_failed(node.name, piece.hosts, f"failed mid-run: {why}")
        return Ending("failed", 4)
    status = found.get("status") or "error"
    rc = int(found["rc"]) if str(found.get("rc", "")).lstrip("-").isdigit() else -1
    if status == "canceled":
        status = "cancelled"
    message = None
    if status == "error" or not found.get("stats"):
        message = (f"on execution node {node.name}: "
                   f"{found.get('explanation') or found.get('error') or 'no results'}")
        status = "error"
    return Ending(status, rc, message, artifacts=True)


def _transmit(job: Path, kwargs: dict, worker) -> None:
    """The job to the worker, then its copy here goes (it holds the target key). The
    arguments go as they are: the worker reads its paths relative to its private data
    directory (``ansible_runner.run`` would first read them here)."""
    from ansible_runner.streaming import Transmitter

    try:
        Transmitter(_output=worker.stdin, private_data_dir=str(job), **kwargs).run()
    except (OSError, ValueError):  # the worker is gone: its stream says why
        pass
    finally:
        try:
            worker.stdin.close()
        except OSError:
            pass
        shutil.rmtree(job, ignore_errors=True)


class _Watcher(threading.Thread):
    """Stops the node's job when the run is cancelled, goes idle, or runs past its
    timeout; ``why`` says which (None: it ended by itself)."""

    def __init__(self, transport, worker, execution, timeout: int, run_id: str, workdir: str):
        super().__init__(daemon=True, name=f"watch-{transport.name}")
        self.transport, self.worker, self.execution = transport, worker, execution
        self.deadline = time.monotonic() + timeout + DEADLINE_GRACE if timeout else None
        self.run_id, self.workdir = run_id, workdir
        self.done, self.why = threading.Event(), None

    def run(self) -> None:
        while not self.done.wait(POLL):
            if self.execution.stopping():
                self.why = "cancelled"
            elif self.deadline and time.monotonic() > self.deadline:
                self.why = "timeout"
            else:
                continue
            self.transport.stop(self.run_id, self.workdir)
            self.worker.kill()  # its stream ends, also when the node did not answer
            return


class _Stream:
    """A worker's stream, read: its events through the run's ``Execution`` (then written,
    scrubbed, to the slice's ``job_events``), its statuses, and from its artifacts only
    ``rc``, ``status`` and the output (scrubbed)."""

    def __init__(self, stream, execution, artifacts: Path):
        self.stream, self.execution, self.artifacts = stream, execution, artifacts
        self.found: dict = {}

    def read(self) -> dict:
        events = self.artifacts / "job_events"
        events.mkdir(parents=True, exist_ok=True)
        try:
            while line := self.stream.readline(STREAM_LINE_MAX):
                if not self._one(line, events):
                    break
        except (OSError, ValueError) as exc:  # not a worker's stream, or a broken one
            self.found["error"] = f"its stream cannot be read: {str(exc)[:300]}"
        return self.found

    def _one(self, line: bytes, events: Path) -> bool:
        data = json.loads(line)
        if "status" in data:
            self.found["status"] = data["status"]
            self.found["explanation"] = data.get("job_explanation")
        elif "zipfile" in data:
            self._artifacts(int(data["zipfile"]))
        elif "eof" in data:
            self.found["eof"] = True
            return False
        elif data.get("event") != "keepalive" and data.get("uuid") and data.get("counter"):
            if data.get("event") == "playbook_on_stats":
                self.found["stats"] = True
            if self.execution.handle(data):
                write_event(events, data)
        return True

    def _artifacts(self, size: int) -> None:
        encoded = self.stream.read(4 * ((size + 2) // 3))
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(encoded))) as archive:
            for name in ("rc", "status", "stdout"):
                if name not in archive.namelist():
                    continue
                text = archive.read(name).decode(errors="replace")
                if name == "stdout":
                    text = self.execution.redactor.scrub(text)
                else:
                    self.found[name] = text.strip()
                (self.artifacts / name).write_text(text)


def _job(plan, piece: Slice, run_id: str, job: Path, workdir: str) -> dict:
    """The job's private data directory here (the checkout, the installed collections and
    roles, the target key, the vault password when it lies outside the checkout) and
    ansible-runner's arguments, with this controller's paths made the node's."""
    shutil.rmtree(job, ignore_errors=True)
    _link_tree(plan.checkout, job / "project")
    moved = {str(plan.checkout): f"{workdir}/project", str(control_dir(run_id)): f"{workdir}/cp"}
    for index, path in enumerate(plan.shipped):
        if path.is_dir():
            _link_tree(path, job / "ship" / str(index))
            moved[str(path)] = f"{workdir}/ship/{index}"
    env_dir = job / "env"
    env_dir.mkdir(parents=True)
    password = plan.vault_password_file
    if password and not password.resolve().is_relative_to(plan.checkout.resolve()):
        _private_copy(password, env_dir / "vault-password")
        moved[str(password)] = f"{workdir}/env/vault-password"
    if piece.node.target_key:
        _private_copy(Path(piece.node.target_key).expanduser(), env_dir / "ssh_key")

    def here_to_there(text: str) -> str:
        for old in sorted(moved, key=len, reverse=True):
            text = text.replace(old, moved[old])
        return text
    env = {k: here_to_there(v) for k, v in runner_env(plan, run_id).items() if k != "PATH"}
    kwargs = dict(playbook=plan.playbook, ident=run_id, envvars=env, quiet=True,
                  inventory="project/" + os.path.relpath(plan.inventory, plan.checkout),
                  cmdline=here_to_there(cmdline(plan)) or None, limit=",".join(piece.hosts),
                  tags=plan.tags, skip_tags=plan.skip_tags, timeout=plan.timeout or None,
                  extravars={REVISION_VAR: plan.revision} if plan.revision else None)
    return {k: v for k, v in kwargs.items() if v is not None}


def _link_tree(source: Path, dest: Path) -> None:
    """SOURCE's files at DEST, hard links where the file system allows (a checkout is
    read, never written); Git's own directory left out, symlinks kept as links."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    shutil.copytree(source, dest, symlinks=True, copy_function=link,
                    ignore=shutil.ignore_patterns(".git"))


def _private_copy(source: Path, dest: Path) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
