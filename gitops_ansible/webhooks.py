"""Webhook receivers: is a request really from the forge, and which sources does its push concern.

    github   X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body), X-GitHub-Event: push
    gitlab   X-Gitlab-Token: secret, X-Gitlab-Event: Push Hook or Tag Push Hook
    generic  X-Signature: sha256=HMAC-SHA256(secret, body), {"ref": ..., "repository": ...}

The signature is checked with a constant-time comparison before the payload is read; a
bad or missing one starts nothing. A push names its repository in several spellings
(``org/estate``, its clone URLs): a source matches when one of them ends its URL's path.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

from .config import Source
from .notify import read_secret
from .source import SHA_RE

# The [agent] key that holds each receiver's secret file.
SECRET_KEYS = {"github": "github_secret_file", "gitlab": "gitlab_token_file",
               "generic": "hmac_secret_file"}


@dataclass(frozen=True)
class Delivery:
    """What one webhook request comes to: the HTTP answer, the result counted in
    ``gitops_ansible_webhooks_total`` (None: not counted) and the sources to cycle."""
    code: int
    answer: dict
    result: str | None = None
    sources: tuple[Source, ...] = ()


def receive(receiver: str, agent_options: dict, headers, body: bytes, sources, log) -> Delivery:
    """Check a request to ``/hooks/RECEIVER`` and find the sources its push concerns;
    ``log(message, level)`` gets what an operator must see."""
    key = SECRET_KEYS.get(receiver)
    try:
        path = agent_options.get(key) if key else None
        secret = read_secret(path) if path else None
    except OSError as exc:
        log(f"webhook {receiver}: cannot read its secret: {exc.strerror}", "error")
        return Delivery(503, {"error": f"the {receiver} receiver's secret cannot be read"})
    if not secret:
        return Delivery(404, {"error": f"no {receiver} receiver configured"})
    if not verify(receiver, secret, headers, body):
        log(f"webhook {receiver}: bad or missing signature: refused (401)", "warning")
        return Delivery(401, {"error": "bad or missing signature"}, "unauthorized")
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return Delivery(400, {"error": "body is not JSON"})
    ref, names, default = push_of(receiver, headers, payload)
    hits = tuple(s for s in sources if ref and _matches(s, ref, names, default))
    if not hits:
        return Delivery(200, {"ignored": "not a push to a tracked ref"}, "ignored")
    return Delivery(202, {"triggered": [s.name for s in hits]}, "triggered", hits)


def _hmac_ok(secret: str, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), (header or "").strip().encode())


def verify(receiver: str, secret: str, headers, body: bytes) -> bool:
    if receiver == "github":
        return _hmac_ok(secret, body, headers.get("X-Hub-Signature-256"))
    if receiver == "gitlab":
        return hmac.compare_digest(secret.encode(), (headers.get("X-Gitlab-Token") or "").encode())
    return _hmac_ok(secret, body, headers.get("X-Signature"))


def push_of(receiver: str, headers, payload) -> tuple[str | None, set[str], str | None]:
    """(pushed ref, repository names, default branch) of a push event; ref None: not a push.

    A signed payload is still read defensively: a value of the wrong type counts as absent.
    """
    payload = payload if isinstance(payload, dict) else {}
    if receiver == "github":
        if headers.get("X-GitHub-Event") != "push":
            return None, set(), None
        return _push(payload, "repository", ("full_name", "clone_url", "ssh_url", "html_url"))
    if receiver == "gitlab":
        if headers.get("X-Gitlab-Event") not in ("Push Hook", "Tag Push Hook"):
            return None, set(), None
        return _push(payload, "project", ("path_with_namespace", "git_http_url", "git_ssh_url"))
    repo = _text(payload.get("repository"))
    return _text(payload.get("ref")), {repo} if repo else set(), None


def _push(payload: dict, key: str, name_keys) -> tuple[str | None, set[str], str | None]:
    repo = payload.get(key) if isinstance(payload.get(key), dict) else {}
    names = {_text(repo.get(k)) for k in name_keys}
    return _text(payload.get("ref")), {n for n in names if n}, _text(repo.get("default_branch"))


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _matches(src: Source, ref: str, names: set[str], default: str | None) -> bool:
    """Does a push of ``ref`` in a repository called ``names`` concern this source?

    A false match only costs a cheap ``git ls-remote``; a missed one costs an interval.
    """
    wanted = src.settings.ref
    if SHA_RE.match(wanted):
        return False
    if wanted == "HEAD":
        ref_ok = default is None or ref == f"refs/heads/{default}"
    else:
        ref_ok = ref in (wanted, f"refs/heads/{wanted}", f"refs/tags/{wanted}")
    if not ref_ok:
        return False
    if not names:
        return True
    url = _repo_path(src.settings.repo)
    return any(url.endswith(_repo_path(name)) or _repo_path(name).endswith(url) for name in names)


def _repo_path(url: str) -> str:
    """'/org/estate' from https://host/org/estate.git, git@host:org/estate, org/estate."""
    text = url.strip().lower()
    if "://" in text:
        rest = text.split("://", 1)[1]
        text = rest.split("/", 1)[1] if "/" in rest else ""
    elif ":" in text and not text.startswith("/"):
        text = text.split(":", 1)[1]
    return "/" + text.strip("/").removesuffix(".git")
