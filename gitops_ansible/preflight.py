"""SSH pre-flight: every SSH target, in parallel, within seconds, with the client Ansible
will use for it (OpenSSH's ``ssh``; paramiko for ``ansible_connection: paramiko``).

Each target is connected to with the connection variables Ansible will use
(ansible_host, ansible_port, ansible_user, ansible_ssh_private_key_file,
ansible_ssh_common_args and ansible_ssh_extra_args), and its host key is checked against
the known_hosts file Ansible will use (``UserKnownHostsFile=`` in those arguments, else the
configured ``known_hosts``, else ~/.ssh/known_hosts). An unknown or changed host key is a
failure, never accepted.

Before a run (``Masters``), the connection is opened as Ansible's ssh connection plugin
opens one: with the run's ssh_args (ControlPersist, keepalives) at the ControlPath Ansible
computes for the host, so that it stays open as the master connection that Ansible's first
task on the host uses. The check then costs no connection of its own.
"""
from __future__ import annotations

import getpass
import hashlib
import re
import shlex
import socket
import subprocess
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


@dataclass(frozen=True)
class Masters:
    """How and where Ansible keeps a run's SSH master connections (execute.masters)."""
    args: str  # Ansible's ssh_args for the run (ControlPersist and the keepalives in them)
    directory: Path  # its control_path_dir, the run's own (execute.control_dir)

    def path(self, host: str, port, user) -> str:
        """The ControlPath Ansible's ssh connection plugin computes for a host: the first
        10 hex digits of sha1("HOST-PORT-USER"), 'None' for a port or user not set."""
        digest = hashlib.sha1(f"{host}-{port}-{user}".encode()).hexdigest()
        return str(self.directory / digest[:10])


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


def _known_hosts(args: str, default: str | None) -> tuple[Path, bool, bool]:
    """The known_hosts file Ansible's ssh will use, whether checking is switched off, and
    whether the file is Ansible's own choice (not the configured ``known_hosts``)."""
    strict = (_ssh_option(args, "StrictHostKeyChecking") or "yes").lower()
    own = _ssh_option(args, "UserKnownHostsFile")
    path = own or default or "~/.ssh/known_hosts"
    return Path(path).expanduser(), strict == "no", bool(own or not default)


def check_target(target, default_known_hosts: str | None, timeout: float,
                 masters: Masters | None = None) -> HostCheck:
    conn = target.vars
    address = conn.get("ansible_host", target.name)
    port = conn.get("ansible_port")
    started = time.monotonic()

    def result(status: str, detail: str) -> HostCheck:
        return HostCheck(target.name, address, int(port or 22), status, detail,
                         round(time.monotonic() - started, 3))

    args = " ".join(conn.get(k, "") for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    known_hosts, unchecked, ansibles = _known_hosts(args, default_known_hosts)
    if conn.get("ansible_connection") == "paramiko":
        return result(*_paramiko(conn, address, int(port or 22), known_hosts, unchecked, timeout))
    command = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}"]
    if not unchecked:
        command += ["-o", "StrictHostKeyChecking=yes"]
    if not ansibles:
        command += ["-o", f"UserKnownHostsFile={known_hosts}"]
        masters = None  # Ansible would check another file: its connection is its own
    # Ansible's order (its ssh connection plugin's _build_command); the first value wins
    command += shlex.split(masters.args) if masters else ["-o", "ControlPath=none"]
    if port:
        command += ["-o", f"Port={port}"]
    if key := conn.get("ansible_ssh_private_key_file"):
        command += ["-o", f"IdentityFile={Path(key).expanduser()}"]
    command += ["-o", "KbdInteractiveAuthentication=no",
                "-o", "PreferredAuthentications=gssapi-with-mic,gssapi-keyex,hostbased,publickey",
                "-o", "PasswordAuthentication=no"]
    if user := conn.get("ansible_user"):
        command += ["-o", f"User={user}"]
    command += shlex.split(args)
    said = " ".join(command).lower()  # as Ansible looks: anywhere in its command
    if masters and "controlpersist" in said and "controlpath" not in said:
        command += ["-o", f"ControlPath={masters.path(address, port, user)}"]
    try:
        done = subprocess.run([*command, "--", address, "true"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=3 * timeout)
    except subprocess.TimeoutExpired:
        return result(UNREACHABLE, f"no answer within {3 * timeout:g}s")
    except OSError as exc:  # no ssh client
        return result(UNREACHABLE, f"cannot run ssh: {exc.strerror or exc}")
    if done.returncode == 0:
        return result(OK, "connected, host key verified")
    return result(*_ssh_failure(done.stderr, done.returncode, known_hosts))


_FINGERPRINT = re.compile(r"fingerprint for the (\S+) key sent by the remote host is\s+(\S+?)\.?$",
                          re.MULTILINE)


def _ssh_failure(stderr: str, rc: int, known_hosts: Path) -> tuple[str, str]:
    """What OpenSSH's messages say went wrong."""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        found = _FINGERPRINT.search(stderr)
        got = f": got {found[1].lower()} {found[2]}" if found else ""
        return HOSTKEY_MISMATCH, f"host key differs from {known_hosts}{got}"
    if "host key is known for" in stderr or "Host key verification failed" in stderr:
        return HOSTKEY_UNKNOWN, f"host key not in {known_hosts}"
    if "Permission denied" in stderr:
        return AUTH_FAILED, f"authentication failed: {_last_line(stderr)}"
    if rc == 255:
        return UNREACHABLE, _last_line(stderr) or "ssh failed"
    return UNREACHABLE, f"connected, but 'true' exited {rc}: {_last_line(stderr)}"


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def _paramiko(conn: dict, address: str, port: int, known_hosts: Path, unchecked: bool,
              timeout: float) -> tuple[str, str]:
    import paramiko

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
        return OK, "connected, host key verified"
    except paramiko.BadHostKeyException as exc:
        return HOSTKEY_MISMATCH, (f"host key differs from {known_hosts}: got "
                                  f"{exc.key.get_name()} {exc.key.fingerprint}")
    except paramiko.AuthenticationException as exc:
        return AUTH_FAILED, f"authentication failed: {exc}"
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            return HOSTKEY_UNKNOWN, f"host key not in {known_hosts}"
        return UNREACHABLE, f"ssh: {exc}"
    except (socket.timeout, TimeoutError):
        return UNREACHABLE, f"no answer within {timeout}s"
    except OSError as exc:
        return UNREACHABLE, exc.strerror or str(exc)
    finally:
        client.close()


def check_hosts(inventory, settings, masters: Masters | None = None) -> list[HostCheck]:
    """Check every SSH target of ``inventory`` in parallel; targets not over SSH, and those
    the run itself creates (VMs), are left out. With ``masters``, the connections stay
    open as the run's master connections."""
    targets = [t for t in inventory.targets.values() if t.is_ssh and not t.created_by_run]
    if not targets:
        return []
    if masters:
        masters.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        return list(pool.map(lambda t: check_target(t, settings.known_hosts,
                                                    settings.preflight_timeout, masters),
                             targets))
