"""The environment's lock: a cycle that finds it held is told who holds it."""
from __future__ import annotations

import os
import threading
import time

from gitops_ansible.reconcile import Lock


def test_the_holder_is_named_while_it_holds_and_not_after(tmp_path):
    path = tmp_path / "dev.lock"
    path.write_text("pid 1 since 2026-01-01T00:00:00Z, and more than a new holder writes\n")
    first, second = Lock(path), Lock(path)
    assert first.acquire(False, 0)
    assert path.read_text().count("\n") == 1  # written over the old line, cut after it
    started = time.monotonic()
    assert not second.acquire(False, 0) and time.monotonic() - started < 1
    assert second.holder().startswith(f"pid {os.getpid()} since ")
    first.release()
    assert second.holder() == "unknown"


def test_a_holder_that_has_just_locked_is_still_named(tmp_path):
    """Between its flock and its line, the file of a new holder is empty: the reader
    reads it again for a moment instead of saying "unknown"."""
    path = tmp_path / "dev.lock"
    path.write_text("")
    threading.Timer(0.05, path.write_text, ("pid 4242 since 2026-12-01T10:00:00Z\n",)).start()
    assert Lock(path).holder() == "pid 4242 since 2026-12-01T10:00:00Z"
