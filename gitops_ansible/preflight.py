"""SSH pre-flight with paramiko: every SSH target, in parallel, within seconds.

Each target is connected to with the connection variables Ansible will use
(ansible_host, ansible_port, ansible_user, ansible_ssh_private_key_file), and its host
key is checked against the known_hosts file Ansible will use (``UserKnownHostsFile=``
in ansible_ssh_common_args/extra_args, else the configured ``known_hosts``, else
~/.ssh/known_hosts). An unknown or changed host key is a failure, never accepted.
"""
from __future__ import annotations

import getpass
import shlex
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

OK, UNREACHABLE, HOSTKEY_MISMATCH, HOSTKEY_UNKNOWN, AUTH_FAILED = (
    "ok", "unreachable", "host-key-mismatch", "host-key-unknown", "auth-failed")


@dataclass
class HostCheck:
    host: str
    address: str
    port: int
    status: str
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == OK


def _ssh_option(args: str, name: str) -> str | None:
    """Value of ``-o Name=value`` (or ``-oName=value``) in ssh arguments."""
    words = shlex.split(args or "")
    for index, word in enumerate(words):
        if word == "-o" and index + 1 < len(words):
            word = words[index + 1]
        key, sep, value = word.removeprefix("-o").partition("=")
        if sep and key.lower() == name.lower():
            return value
    return None


def _known_hosts(conn: dict, default: str | None) -> tuple[Path, bool]:
    """The known_hosts file Ansible's ssh will use, and whether checking is switched off."""
    args = " ".join(conn.get(k, "") for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    strict = (_ssh_option(args, "StrictHostKeyChecking") or "yes").lower()
    path = _ssh_option(args, "UserKnownHostsFile") or default or "~/.ssh/known_hosts"
    return Path(path).expanduser(), strict == "no"


def check_target(target, default_known_hosts: str | None, timeout: float) -> HostCheck:
    import paramiko

    conn = target.vars
    address = conn.get("ansible_host", target.name)
    port = int(conn.get("ansible_port") or 22)
    started = time.monotonic()

    def result(status: str, detail: str) -> HostCheck:
        return HostCheck(target.name, address, port, status, detail,
                         round(time.monotonic() - started, 3))

    known_hosts, unchecked = _known_hosts(conn, default_known_hosts)
    client = paramiko.SSHClient()
    try:
        if known_hosts.is_file():
            client.load_host_keys(str(known_hosts))
        policy = paramiko.AutoAddPolicy() if unchecked else paramiko.RejectPolicy()
        client.set_missing_host_key_policy(policy)
        key = conn.get("ansible_ssh_private_key_file")
        client.connect(address, port=port, username=conn.get("ansible_user") or getpass.getuser(),
                       key_filename=str(Path(key).expanduser()) if key else None,
                       look_for_keys=not key, allow_agent=not key, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout)
        return result(OK, "connected, host key verified")
    except paramiko.BadHostKeyException as exc:
        return result(HOSTKEY_MISMATCH, f"host key differs from {known_hosts}: got "
                      f"{exc.key.get_name()} {exc.key.fingerprint}")
    except paramiko.AuthenticationException as exc:
        return result(AUTH_FAILED, f"authentication failed: {exc}")
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            return result(HOSTKEY_UNKNOWN, f"host key not in {known_hosts}")
        return result(UNREACHABLE, f"ssh: {exc}")
    except (socket.timeout, TimeoutError):
        return result(UNREACHABLE, f"no answer within {timeout}s")
    except OSError as exc:
        return result(UNREACHABLE, exc.strerror or str(exc))
    finally:
        client.close()


def check_hosts(inventory, settings) -> list[HostCheck]:
    """Check every SSH target of ``inventory`` in parallel; targets not over SSH, and those
    the run itself creates (VMs), are left out."""
    targets = [t for t in inventory.targets.values() if t.is_ssh and not t.created_by_run]
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        return list(pool.map(lambda t: check_target(t, settings.known_hosts,
                                                    settings.preflight_timeout), targets))
