"""A cycle in a process of its own: how the agent converges, so that what a converge
imports (Ansible, ansible-runner, the YAML and Jinja2 machinery) and the memory it takes
leave with that process, and the idle agent stays small.

    result = child.cycle(settings, Mode.PULL, reporter, trigger, cancel, on_start, who)

The parent (``cycle``) starts ``python -m gitops_ansible.child`` in a session of its own,
writes the cycle's arguments to its stdin and reads back, as they happen, pickled
messages: each reporter event (re-said by the parent's reporter, so the agent's log and
metrics see them as before), the ``RunRecord`` of a changing run that starts (the
parent's ``on_start``: a pending commit status) and, last, the ``Result``. The parent's
``cancel`` becomes a SIGTERM to the child, which cancels the run as ``run`` does on one.
A parent that dies leaves the child to finish and record its run.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading

from .report import ExitCode, Reporter
from .store import RunStatus, StoreError


def cycle(settings, mode, reporter: Reporter, trigger: str, cancel: threading.Event,
          on_start=None, started_by: str | None = None):
    """``reconcile.cycle`` run in a child process; the same result."""
    from .reconcile import Result

    proc = subprocess.Popen([sys.executable, "-m", "gitops_ansible.child"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)
    pickle.dump((settings, mode, trigger, started_by), proc.stdin)
    proc.stdin.close()
    done = threading.Event()
    threading.Thread(target=_cancel_when, args=(cancel, done, proc), daemon=True).start()
    result = None
    try:
        while True:
            try:
                kind, value = pickle.load(proc.stdout)
            except EOFError:
                break
            if kind == "event":
                reporter.bind(**{k: value[k] for k in ("run_id", "env", "revision")
                                 if k in value})
                reporter.handle(value)
            elif kind == "start" and on_start:
                on_start(value)
            elif kind == "result":
                result = value
            elif kind == "store_error":  # as the cycle raises it in the parent's process
                raise StoreError(value)
    finally:
        done.set()
        proc.stdout.close()
        code = proc.wait()
    if result is None:  # it died before it could say how the cycle ended
        message = (f"the converge process ended with {_ended(code)} before its cycle did; "
                   "the next cycle records what it left")
        reporter.log(message, "error")
        return Result(ExitCode.ERROR, RunStatus.ERROR, message)
    return result


def _cancel_when(cancel: threading.Event, done: threading.Event, proc) -> None:
    while not done.is_set():
        if cancel.wait(0.2):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            return


def _ended(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class _Pipe:
    """The child's side: pickled messages on stdout; a parent gone is not an error (the
    run goes on and is recorded)."""

    def __init__(self, stream):
        self.stream, self.gone = stream, False

    def send(self, kind: str, value) -> None:
        if self.gone:
            return
        try:
            pickle.dump((kind, value), self.stream)
            self.stream.flush()
        except OSError:
            self.gone = True


def main() -> int:
    from .reconcile import Cancel, Cancelled, cycle as run_cycle

    settings, mode, trigger, started_by = pickle.load(sys.stdin.buffer)
    out = _Pipe(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # nothing else (this process, git, Ansible) may write into the messages
    cancel = Cancel()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: cancel.request())
    reporter = Reporter(on_event=lambda record: out.send("event", record))
    try:
        result = run_cycle(settings, mode, reporter, trigger, cancel,
                           lambda run: out.send("start", run), started_by)
    except Cancelled:
        from .reconcile import Result

        result = Result(ExitCode.ERROR, RunStatus.CANCELLED, "cancelled before the cycle "
                        "started; nothing was changed")
    except StoreError as exc:
        out.send("store_error", str(exc))
        return 1
    out.send("result", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
