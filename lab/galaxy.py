"""A real Galaxy-compatible server for the tests: Pulp with pulp_ansible (the server behind
Galaxy NG), on loopback, with a PostgreSQL cluster of its own.

    with GalaxyServer(workdir) as galaxy:   # PostgreSQL, migrations, API, content app, worker
        galaxy.publish(tarball)             # `ansible-galaxy collection publish` into it
        galaxy.url, galaxy.token            # its Galaxy API root; the admin's API token
    python -m lab.galaxy build              # Pulp's virtualenv in the lab cache (make collections)

Pulp runs from a virtualenv of its own, CACHE/pulp-ansible-VERSION, built once per machine
with pip from PyPI (about 50 s: 110 packages). PostgreSQL is Debian's (`postgresql`). Its
cluster lives under /tmp (the postgres user cannot enter pytest's directories) and runs
as postgres, without fsync. The Galaxy API takes API tokens (DRF TokenAuthentication,
Galaxy NG's scheme: `Authorization: Token ...`) and basic auth; anonymous requests are
refused, as on a team's own hub. One repository and distribution, `lab`, hold what is
published. Measured on 2 cores: a start takes 20 s (most of it Pulp's migrations), a
publish 2.5 s, a stop 3 s.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

from .cache import build_once, cache_root
from .system import free_ports, wait_port

PULP_ANSIBLE = "0.30.3"
ADMIN = ("admin", "lab-admin-" + os.urandom(6).hex())
SETTINGS = """\
SECRET_KEY = {secret!r}
DB_ENCRYPTION_KEY = {key_file!r}
DATABASES = {{"default": {{"ENGINE": "django.db.backends.postgresql", "NAME": "pulp",
                         "USER": "postgres", "HOST": "127.0.0.1", "PORT": "{db}"}}}}
MEDIA_ROOT = "{root}/media"
STATIC_ROOT = "{root}/static"
WORKING_DIRECTORY = "{root}/work"
FILE_UPLOAD_TEMP_DIR = "{root}/upload"
CONTENT_ORIGIN = "http://127.0.0.1:{content}"
ANSIBLE_API_HOSTNAME = "http://127.0.0.1:{api}"
ANSIBLE_CONTENT_HOSTNAME = "http://127.0.0.1:{content}/pulp/content"
INSTALLED_APPS = ["dynaconf_merge", "rest_framework.authtoken"]
ANSIBLE_AUTHENTICATION_CLASSES = ["rest_framework.authentication.TokenAuthentication",
                                  "rest_framework.authentication.BasicAuthentication"]
"""
# Pulp's commands, run by the virtualenv's python: its scripts name the directory it was
# built in, before the cache renamed it into place.
COMMANDS = {"manager": "pulpcore.app.manage:manage", "api": "pulpcore.app.entrypoint:main",
            "content": "pulpcore.content.entrypoint:main",
            "worker": "pulpcore.tasking.entrypoint:worker"}


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "root is needed (PostgreSQL runs as the postgres user)"
    if not _pg_bin() or not shutil.which("runuser"):
        return "PostgreSQL (Debian's postgresql) and runuser are needed"
    return None


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else None


def ensure_venv(cache_dir=None) -> Path:
    """Pulp's virtualenv, built once per machine."""
    def build(tmp: Path, run) -> None:
        run(sys.executable, "-m", "venv", str(tmp))
        run(str(tmp / "bin/python"), "-m", "pip", "install", "-q", f"pulp-ansible=={PULP_ANSIBLE}")

    return build_once(cache_root(cache_dir), f"pulp-ansible-{PULP_ANSIBLE}",
                      lambda done: (done / "bin/python").exists(), build)


class GalaxyServer:
    def __init__(self, workdir, cache_dir=None):
        self.workdir = Path(workdir)
        self.venv = ensure_venv(cache_dir)
        self.db_port, self.api_port, self.content_port = free_ports(3)
        self.url = f"http://127.0.0.1:{self.api_port}/pulp_ansible/galaxy/lab/api/"
        self.token: str | None = None
        self.pg_dir: Path | None = None
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> "GalaxyServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- start and stop -----------------------------------------------------------------
    def start(self) -> None:
        self._start_postgres()
        self._write_settings()
        self.manage("migrate", "--noinput")
        self.manage("reset-admin-password", "--password", ADMIN[1])
        said = self.manage("drf_create_token", ADMIN[0])
        self.token = re.search(r"Generated token (\w+)", said).group(1)
        self._serve("api", "--bind", f"127.0.0.1:{self.api_port}", "--workers", "1")
        self._serve("content", "--bind", f"127.0.0.1:{self.content_port}", "--workers", "1")
        self._serve("worker")
        wait_port(self.api_port, timeout=60)
        wait_port(self.content_port, timeout=60)
        repo = self._api("repositories/ansible/ansible/", {"name": "lab"})["pulp_href"]
        self._wait_task(self._api("distributions/ansible/ansible/", {
            "name": "lab", "base_path": "lab", "repository": repo})["task"])

    def stop(self) -> None:
        for proc in self._procs:
            _kill(proc)
        self._procs.clear()
        if self.pg_dir:
            self._postgres("pg_ctl", "stop", "-m", "immediate", "-D", str(self.pg_dir / "data"),
                           check=False)
            shutil.rmtree(self.pg_dir, ignore_errors=True)
            self.pg_dir = None

    def _start_postgres(self) -> None:
        self.pg_dir = Path(tempfile.mkdtemp(prefix="gitops-lab-pg-"))
        shutil.chown(self.pg_dir, "postgres")
        data = str(self.pg_dir / "data")
        self._postgres("initdb", "--no-sync", "-A", "trust", "-U", "postgres", "-D", data)
        self._postgres("pg_ctl", "start", "-w", "-D", data, "-l", str(self.pg_dir / "log"),
                       "-o", f"-p {self.db_port} -k {self.pg_dir} -c listen_addresses=127.0.0.1 "
                             "-c fsync=off -c synchronous_commit=off")
        self._postgres("psql", "-h", "127.0.0.1", "-p", str(self.db_port), "-U", "postgres",
                       "-q", "-c", "CREATE DATABASE pulp")

    def _postgres(self, command: str, *args: str, check: bool = True) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", str(_pg_bin() / command),
                               *args], capture_output=True, text=True, cwd=self.pg_dir)
        if check and done.returncode:
            raise RuntimeError(f"{command} failed: {done.stderr.strip()[-2000:]}")

    def _write_settings(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("media", "static", "work", "upload"):
            (self.workdir / sub).mkdir(exist_ok=True)
        key_file = self.workdir / "db.key"
        key_file.write_text(b64encode(os.urandom(32)).decode() + "\n")
        (self.workdir / "settings.py").write_text(SETTINGS.format(
            secret=os.urandom(16).hex(), key_file=str(key_file), db=self.db_port,
            root=self.workdir, api=self.api_port, content=self.content_port))

    def _argv(self, name: str, *args: str) -> list[str]:
        module, function = COMMANDS[name].split(":")
        return [str(self.venv / "bin/python"), "-c",
                f"import sys; from {module} import {function}; sys.exit({function}())",
                *args]

    def _env(self) -> dict:
        return dict(os.environ, PULP_SETTINGS=str(self.workdir / "settings.py"))

    def manage(self, *args: str) -> str:
        done = subprocess.run(self._argv("manager", *args), env=self._env(), capture_output=True,
                              text=True, cwd=self.workdir)
        if done.returncode:
            raise RuntimeError(f"pulpcore-manager {args[0]} failed: {done.stderr[-2000:]}")
        return done.stdout + done.stderr

    def _serve(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "w")
        self._procs.append(subprocess.Popen(self._argv(name, *args), env=self._env(),
                                            cwd=self.workdir, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))

    # -- Pulp's REST API and publishing -------------------------------------------------
    def _api(self, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/pulp/api/v3/{path.removeprefix('/pulp/api/v3/')}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json",  # Pulp's own API: basic auth only
                     "Authorization": "Basic " + b64encode(":".join(ADMIN).encode()).decode()})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def _wait_task(self, href: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self._api(href)
            if task["state"] == "completed":
                return
            if task["state"] in ("failed", "canceled"):
                raise RuntimeError(f"pulp task {task['name']}: {task.get('error')}")
            time.sleep(0.3)
        raise TimeoutError(f"pulp task {href} did not finish in {timeout}s")

    def publish(self, tarball: Path) -> None:
        """Upload a collection as a user would: `ansible-galaxy collection publish`."""
        galaxy = Path(sys.executable).parent / "ansible-galaxy"
        done = subprocess.run([str(galaxy), "collection", "publish", str(tarball), "--server",
                               self.url, "--token", self.token], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"publish {tarball.name} failed: {done.stdout}{done.stderr}")


def _kill(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m lab.galaxy build")
    print(f"pulp_ansible {PULP_ANSIBLE}: {ensure_venv()}")
