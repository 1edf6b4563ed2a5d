"""What the lab's modules ask of this machine: commands run and checked, free loopback
ports, and waiting for something to answer on a port.

    run("ip", "link", "show")        # CompletedProcess (text); a failure raises with stderr
    free_port(), free_ports(4)       # TCP ports free on 127.0.0.1 now
    wait_port(port)                  # until something accepts on 127.0.0.1:PORT
    ssh_banner(address, port)        # does an SSH server answer there?
"""
from __future__ import annotations

import socket
import subprocess
import time


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """ARGV with its output captured as text; unless check=False a non-zero exit raises
    with the command and its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def free_ports(n: int) -> list[int]:
    """N different TCP ports free on 127.0.0.1 now (all bound at once, so no two are alike);
    whoever binds them later may still lose one to another process in between."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def connects(address: str, port: int, timeout: float = 1) -> bool:
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_until(ready, timeout: float, what: str, interval: float = 0.1):
    """The first true value of ``ready()``, asked every INTERVAL seconds; a TimeoutError
    that says WHAT was awaited after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g}s: {what}")
        time.sleep(interval)
    return found


def wait_port(port: int, timeout: float = 10.0, address: str = "127.0.0.1") -> None:
    wait_until(lambda: connects(address, port), timeout, f"a listener on {address}:{port}",
               interval=0.05)


def ssh_banner(address: str, port: int, timeout: float = 1) -> bool:
    """Does an SSH server answer there (its banner, not only the TCP port)?"""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(2 * timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False
