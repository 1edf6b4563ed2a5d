"""The HTTP proxy through which apt inside the lab hosts reaches the Debian mirror.

Stdlib only, so it also runs as a plain script (detached from the lab process for demos):

    python aptproxy.py --listen 198.18.0.1:3142 --cache DIR --allow deb.debian.org [--tag X]

In a thread instead: `server = AptProxy(("198.18.0.1", 3142), cache_dir, ["deb.debian.org"])`,
then `server.serve_forever()` / `server.shutdown()`.

Not an open proxy: only plain-HTTP GETs to the allowed mirror hosts (port 80) pass; anything
else gets 403. Files under /pool/ (the .deb packages, immutable by name) are cached on disk in
CACHE/HOST/PATH, so repeated test runs do not download them again; indices pass through.
`--tag` is ignored: it marks the process's command line so that a lab can find its own proxy.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

FORWARD_HEADERS = ("If-Modified-Since", "If-None-Match", "Range", "If-Range")
RETURN_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Last-Modified", "ETag")


class AptProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, cache_dir, allowed_hosts):
        self.cache_dir = Path(cache_dir)
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: apt pipelines its requests
    server: AptProxy

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        host = (url.hostname or "").lower()
        if (url.scheme != "http" or host not in self.server.allowed_hosts
                or url.port not in (None, 80) or "/../" in url.path + "/"):
            return self.send_error(403, "only GETs to the Debian mirror pass")
        if "/pool/" not in url.path:
            return self.forward(host, url.path, None)
        cached = self.server.cache_dir / host / url.path.lstrip("/")
        if cached.is_file():
            self.log_message("HIT %s", self.path)
            return self.send_file(cached)
        self.forward(host, url.path, cached)

    def forward(self, host: str, path: str, cache_to: Path | None) -> None:
        headers = {k: self.headers[k] for k in FORWARD_HEADERS if self.headers[k]}
        if cache_to:  # fetch whole files only, to cache them
            headers.pop("Range", None)
            headers.pop("If-Range", None)
        upstream = http.client.HTTPConnection(host, 80, timeout=60)
        try:
            upstream.request("GET", path, headers=headers)
            resp = upstream.getresponse()
        except OSError as exc:
            upstream.close()
            return self.send_error(502, f"mirror unreachable: {exc}")
        try:
            self.send_response(resp.status, resp.reason)
            for name in RETURN_HEADERS:
                if resp.getheader(name):
                    self.send_header(name, resp.getheader(name))
            length = resp.getheader("Content-Length")
            if length is None and resp.status not in (204, 304):
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if cache_to and resp.status == 200 and length is not None:
                self.copy_and_cache(resp, cache_to, int(length))
            else:
                shutil.copyfileobj(resp, self.wfile)
        finally:
            upstream.close()

    def copy_and_cache(self, resp, cache_to: Path, length: int) -> None:
        cache_to.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_to.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := resp.read(65536):
                    out.write(chunk)
                    self.wfile.write(chunk)
            if os.path.getsize(tmp) == length:
                os.replace(tmp, cache_to)
                self.log_message("STORED %s", cache_to)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def send_file(self, path: Path) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.debian.binary-package")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with open(path, "rb") as f:
            shutil.copyfileobj(f, self.wfile)

    def do_CONNECT(self) -> None:
        self.send_error(403, "no CONNECT: plain HTTP to the Debian mirror only")

    do_POST = do_PUT = do_DELETE = do_HEAD = do_CONNECT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--allow", action="append", required=True, help="mirror host name")
    parser.add_argument("--tag", help="ignored; marks the command line")
    args = parser.parse_args(argv)
    address, port = args.listen.rsplit(":", 1)
    server = AptProxy((address, int(port)), args.cache, args.allow)
    print(f"apt proxy on {args.listen} for {', '.join(args.allow)}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
