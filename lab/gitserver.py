"""Real Git servers on loopback: bare repositories served over file://, git daemon,
SSH (a private sshd) and HTTPS (git http-backend behind a token check).

    servers = GitServers(tmp_path); servers.start()
    bare = servers.create("estate")         # a bare repository
    url = servers.url("estate", "ssh")      # file | git | ssh | https
"""
from __future__ import annotations

import base64
import http.server
import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

from .system import free_port, wait_port


def git(*args, cwd=None, env=None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


class GitServers:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.repos = self.root / "repos"
        self.repos.mkdir(parents=True, exist_ok=True)
        self.daemon_port = self.ssh_port = self.https_port = None
        self.token = "tok-" + os.urandom(8).hex()
        self._daemon = self._sshd = self._https = None

    # -- repositories -----------------------------------------------------------------
    def create(self, name: str) -> Path:
        path = self.repos / f"{name}.git"
        git("init", "-q", "--bare", "-b", "main", str(path))
        git("config", "http.receivepack", "false", cwd=path)
        return path

    def url(self, name: str, kind: str = "file") -> str:
        path = self.repos / f"{name}.git"
        return {"file": f"file://{path}",
                "git": f"git://127.0.0.1:{self.daemon_port}/{name}.git",
                "ssh": f"ssh://root@127.0.0.1:{self.ssh_port}{path}",
                "https": f"https://127.0.0.1:{self.https_port}/{name}.git"}[kind]

    # -- servers ------------------------------------------------------------------------
    def start(self, ssh: bool = True, https: bool = True) -> None:
        self.start_daemon()
        if ssh:
            self._start_sshd()
        if https:
            self._start_https()

    def start_daemon(self) -> None:
        self.daemon_port = self.daemon_port or free_port()
        self._daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={self.repos}",
             "--listen=127.0.0.1", f"--port={self.daemon_port}", str(self.repos)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.daemon_port)

    def kill_daemon(self) -> None:
        """SIGKILL the git daemon and what it started for its clients (``git daemon --serve``,
        ``upload-pack``, ``pack-objects``), as when the server dies mid-transfer: killing
        the daemon alone would let a transfer under way finish."""
        from .hosts import _processes, _sigkill  # the lab's one walk of /proc

        procs = list(_processes())
        victims, more = set(), {self._daemon.pid}
        while more:
            victims |= more
            more = {pid for pid, ppid, _ in procs if ppid in more} - victims
        _sigkill(victims)
        self._daemon.wait(10)
        self._daemon = None

    def stop_daemon(self) -> None:
        if self._daemon:
            self._daemon.terminate()
            self._daemon.wait(10)
            self._daemon = None

    def _start_sshd(self) -> None:
        etc = self.root / "sshd"
        etc.mkdir(exist_ok=True)
        host_key, self.client_key = etc / "host_ed25519", etc / "client_ed25519"
        for key in (host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                               check=True)
        (etc / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.ssh_port = free_port()
        (etc / "sshd_config").write_text(
            f"Port {self.ssh_port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {etc}/authorized_keys\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nStrictModes no\nPidFile {etc}/sshd.pid\nUsePAM no\n")
        self.known_hosts = etc / "known_hosts"
        key_type, key_data = Path(f"{host_key}.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.ssh_port} {key_type} {key_data}\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        self._sshd = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e",
                                       "-f", str(etc / "sshd_config")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.ssh_port)

    def _start_https(self) -> None:
        etc = self.root / "https"
        etc.mkdir(exist_ok=True)
        self.ca_file = etc / "cert.pem"
        key = etc / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(self.ca_file)],
                       check=True, capture_output=True)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 _handler(self.repos, self.token))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.https_port = server.server_address[1]
        server.requests = self.requests = []
        self._https = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stop_daemon()
        if self._sshd:
            self._sshd.terminate()
            self._sshd.wait(10)
        if self._https:
            self._https.shutdown()
            self._https.server_close()


def _handler(repos: Path, token: str):
    expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        """git http-backend (smart HTTP, read only) behind a token check."""

        def log_message(self, *args):
            pass

        def do_GET(self):
            self._serve()

        def do_POST(self):
            self._serve()

        def _serve(self):
            auth = self.headers.get("Authorization", "")
            self.server.requests.append({"path": self.path, "authorized": auth == expected})
            if auth != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = dict(os.environ, GIT_PROJECT_ROOT=str(repos), GIT_HTTP_EXPORT_ALL="1",
                       PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                       CONTENT_TYPE=self.headers.get("Content-Type", ""),
                       CONTENT_LENGTH=str(len(body)), REMOTE_ADDR="127.0.0.1")
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            done = subprocess.run(["git", "http-backend"], input=body, env=env,
                                  capture_output=True)
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode(errors="replace").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


class WorkTree:
    """A clone of a served repository where tests write files, commit and push."""

    def __init__(self, bare: Path, path: Path):
        self.path = Path(path)
        git("clone", "-q", str(bare), str(self.path))
        git("config", "user.email", "tests@example.invalid", cwd=self.path)
        git("config", "user.name", "tests", cwd=self.path)

    def write(self, relative: str, text: str) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def copy_tree(self, source: Path, relative: str) -> None:
        shutil.copytree(source, self.path / relative, dirs_exist_ok=True)

    def remove(self, relative: str) -> None:
        git("rm", "-rq", relative, cwd=self.path)

    def commit(self, message: str) -> str:
        git("add", "-A", cwd=self.path)
        git("commit", "-qm", message, cwd=self.path)
        git("push", "-q", "origin", "HEAD:main", cwd=self.path)
        return git("rev-parse", "HEAD", cwd=self.path)
