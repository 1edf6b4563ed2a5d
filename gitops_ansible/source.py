"""Git: resolve the ref to a revision, fetch it, materialise it, switch to it atomically.

Layout under the work directory, per environment::

    ENV/mirror.git         bare repository: fetches land here
    ENV/checkouts/SHA/     one exported tree per revision (no .git inside)
    ENV/current -> checkouts/SHA   the revision in use, switched with an atomic rename

``resolve`` is the cheap question asked on every cycle (``git ls-remote``, no heavy
imports); ``materialise`` runs only when there is work. A failed fetch leaves
``current`` as it was.

Git may only use the transports in ``TRANSPORTS``, whatever the user's git config allows:
``ext::`` and other remote helpers run commands, plain http sends the token in the clear.
"""
from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from . import names
from .problems import text_lines
from .report import free_space

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
TRANSPORTS = ("file", "git", "ssh", "https")
REPO_EXPECTED = ("a file://, git://, ssh:// or https:// URL, user@host:path (SSH) or a "
                 "local path")
# How git itself tells the transport of a URL (transport.c, connect.c): NAME::ADDRESS is a
# remote helper, NAME://... a scheme; else a colon before any slash makes it scp-like SSH.
HELPER_OR_SCHEME_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9+.-]*)(::|://)")
SSH_SCHEMES = {"git+ssh": "ssh", "ssh+git": "ssh"}
GC_STAMP = "gitops-ansible-gc"  # in the mirror: its mtime is when the last full gc started
FULL_GC_EVERY = 24 * 3600  # seconds between full gcs of a mirror


class SourceError(Exception):
    """Git could not be reached or the ref does not exist."""


class RefusedRepo(SourceError):
    """A repository URL whose transport is not allowed; ``expected`` says what is."""

    expected = REPO_EXPECTED


def transport(url: str) -> str:
    """The transport git would use for ``url`` (its name in GIT_ALLOW_PROTOCOL)."""
    match = HELPER_OR_SCHEME_RE.match(url)
    if match:
        return SSH_SCHEMES.get(match.group(1), match.group(1))
    colon, slash = url.find(":"), url.find("/")
    return "file" if colon < 0 or 0 <= slash < colon else "ssh"


def check_repo(url) -> str:
    """``url`` if git would reach it over an allowed transport; else ``RefusedRepo``."""
    if not isinstance(url, str) or not url.strip():
        raise RefusedRepo(f"repo {url!r}: expected {REPO_EXPECTED}")
    name = transport(url)
    if name not in TRANSPORTS:
        raise RefusedRepo(f"repo {names.shown(redact_url(url))}: transport '{name}' is not "
                          f"allowed: expected {REPO_EXPECTED}")
    return url


def redact_url(text: str) -> str:
    """Hide credentials embedded in URLs: any user part of http(s), passwords elsewhere."""
    text = re.sub(r"(?<=https://)[^/@\s]+@|(?<=http://)[^/@\s]+@", "***@", text)
    return re.sub(r"(?<=://)[^/@\s:]+:[^/@\s]+@", "***@", text)


def git_env(settings) -> dict:
    """Environment for git: SSH key and known_hosts, HTTPS token (never on the command line),
    the allowed transports (GIT_ALLOW_PROTOCOL overrides any protocol.*.allow config)."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", LC_ALL="C",
               GIT_ALLOW_PROTOCOL=":".join(TRANSPORTS))
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if settings.ssh_key:
        ssh += ["-i", str(Path(settings.ssh_key).expanduser()), "-o", "IdentitiesOnly=yes"]
    if settings.known_hosts:
        ssh += ["-o", f"UserKnownHostsFile={Path(settings.known_hosts).expanduser()}"]
    ssh += ["-o", "StrictHostKeyChecking=" + ("accept-new" if settings.accept_host_key else "yes")]
    env["GIT_SSH_COMMAND"] = shlex.join(ssh)
    token = settings.git_token()
    if token:
        basic = base64.b64encode(f"{settings.git_token_user}:{token}".encode()).decode()
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                   GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}")
    return env


def _git(args: list[str], settings, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=git_env(settings), capture_output=True,
                              text=True, timeout=settings.git_timeout)
    except subprocess.TimeoutExpired:
        raise SourceError(f"git {args[0]} timed out after {settings.git_timeout}s") from None
    if done.returncode != 0:
        detail = " | ".join(text_lines(done.stderr))[-600:] or f"exit code {done.returncode}"
        # git's "unable to write loose object file" names no file system: say which, and
        # how full it is
        room = free_space(cwd or settings.work_path) if "No space left" in done.stderr else ""
        raise SourceError(f"git {args[0]} {redact_url(settings.repo or '')}: "
                          f"{redact_url(detail)}{room}")
    return done.stdout


def resolve(settings) -> str:
    """The commit that ``settings.ref`` names on the remote, without fetching objects."""
    ref = settings.ref
    check_repo(settings.repo)
    if SHA_RE.match(ref):
        return ref
    output = _git(["ls-remote", "--", settings.repo, ref, f"{ref}^{{}}"], settings)
    refs = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        refs[name] = sha
    for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
        if name in refs:
            return refs[name]
    if len(refs) == 1:
        return next(iter(refs.values()))
    # repr: a newline in the ref cannot forge a line of the log
    raise SourceError(f"ref {names.shown(ref)} not found in {redact_url(settings.repo)}")


def env_dir(settings) -> Path:
    """ENV under the work directory; a name that is not an environment name never becomes
    a path (settings check it first: this is the last line)."""
    try:
        return settings.work_path / names.env_name(settings.env)
    except names.InvalidName as exc:
        raise SourceError(str(exc)) from None


def checkout_path(settings, revision: str) -> Path:
    return env_dir(settings) / "checkouts" / revision


def current(settings) -> tuple[str, Path] | None:
    """The revision in use and its checkout, if any."""
    link = env_dir(settings) / "current"
    if not link.is_symlink():
        return None
    target = link.resolve()
    return (target.name, target) if target.is_dir() else None


def mirror_path(settings) -> Path:
    return env_dir(settings) / "mirror.git"


def fetch(settings, revision: str, tags: bool = False,
          warn: Callable[[str], None] | None = None) -> str:
    """Fetch the ref into the mirror; return the fetched commit (normally ``revision``).
    A commit id the mirror holds already is not fetched again; ``tags``: the remote's tags
    too (a signature policy that reads them). After a fetch the mirror is tidied
    (``housekeep``); what went wrong there is passed to ``warn`` and fails nothing."""
    import git  # GitPython: only on the path where there is work to do

    check_repo(settings.repo)
    mirror = mirror_path(settings)
    if not (mirror / "HEAD").exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        _git(["init", "--quiet", "--bare", str(mirror)], settings)
    clean_leftovers(mirror)
    # --prune: a tag deleted on the remote no longer counts for a tag policy;
    # --no-auto-gc: git's own gc would detach and outlive the lock (housekeep runs it)
    fetch = ["fetch", "--quiet", "--no-tags", "--no-auto-gc", *(["--prune"] if tags else []),
             "--", settings.repo]
    extra = ["+refs/tags/*:refs/tags/*"] if tags else []
    if SHA_RE.match(settings.ref):
        if not extra and _has_commit(mirror, settings.ref):
            return settings.ref
        spec, target = "+refs/heads/*:refs/remotes/origin/*", settings.ref
    else:
        spec, target = f"+{settings.ref}:refs/gitops/target", "refs/gitops/target"
    _git([*fetch, spec, *extra], settings, cwd=mirror)
    problem = housekeep(settings)
    if problem and warn:
        warn(problem)
    repo = git.Repo(mirror)
    try:
        fetched = repo.commit(target).hexsha
    except (ValueError, git.BadName) as exc:
        raise SourceError(f"revision {target} not found after fetch: {exc}") from None
    if SHA_RE.match(settings.ref) or fetched != revision:
        # The ref moved between ls-remote and fetch: converge what was fetched.
        return fetched
    return revision


def housekeep(settings) -> str | None:
    """Git's own housekeeping of the mirror, after a fetch and under the environment's lock,
    so that packs and loose objects do not pile up: ``gc --auto`` (about 2 ms when nothing
    is due: it counts loose objects and packs) and, at most once a day, a full ``gc``
    (git's default prune grace of two weeks: an object a reader may still be using stays).
    Never raises: a mirror that could not be tidied (a full disk) still serves the cycle.
    Returns what went wrong, naming the mirror, for the caller to log as a warning."""
    mirror = mirror_path(settings)
    try:
        _gc(mirror, settings, *([] if _full_gc_due(mirror / GC_STAMP) else ["--auto"]))
    except (SourceError, OSError) as exc:
        return f"housekeeping of the mirror {mirror} failed (the cycle goes on): {exc}"
    return None


def _full_gc_due(stamp: Path) -> bool:
    if stamp.exists() and time.time() - stamp.stat().st_mtime < FULL_GC_EVERY:
        return False
    due = stamp.exists()  # no stamp: a new mirror (one fresh pack), whose day starts now
    stamp.touch()  # before the gc: one that fails (a full disk) is retried in a day
    return due


def _gc(mirror: Path, settings, *args: str) -> None:
    # In the foreground (gc.autoDetach=false): a gc still running once the lock is released
    # would race the next fetch, whose clean_leftovers removes temporary packs. In a session
    # of its own, so that a timeout or a stopped cycle stops its repack and pack-objects too
    # (what they leave, clean_leftovers removes; git keeps the old packs until the new one is
    # complete).
    command = ["git", "-c", "gc.autoDetach=false", "--git-dir", str(mirror), "gc", "--quiet",
               *args]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, LC_ALL="C"))
    try:
        _, errors = proc.communicate(timeout=settings.git_timeout)
    except BaseException as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise SourceError(f"git gc timed out after {settings.git_timeout}s") from None
        raise
    if proc.returncode != 0:
        detail = " | ".join(text_lines(errors))[-600:] or f"exit code {proc.returncode}"
        raise SourceError(f"git gc: {detail}")


def clean_leftovers(mirror: Path) -> list[Path]:
    """Remove what an interrupted fetch or gc left in the mirror: git's temporary pack and
    index files (``objects/pack/tmp_*``, ``.tmp-*``), temporary loose objects (``tmp_obj_*``)
    and quarantine directories, which no git command removes and which can be as large as
    the repository. The environment's lock is held: no other fetch or gc writes them now
    (``housekeep`` runs in the foreground). Returns what was removed."""
    objects = mirror / "objects"
    found = [*objects.glob("pack/tmp_*"), *objects.glob("pack/.tmp-*"),
             *objects.glob("tmp_obj_*"), *objects.glob("??/tmp_obj_*"),
             *objects.glob("tmp_objdir-incoming-*"), *objects.glob("incoming-*")]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def _has_commit(repo: Path, revision: str) -> bool:
    """``repo`` (a mirror or a working tree) holds the commit ``revision``."""
    return subprocess.run(["git", "-C", str(repo), "cat-file", "-e",
                           f"{revision}^{{commit}}"], capture_output=True).returncode == 0


def changed_paths(repo: Path, base: str, revision: str, settings) -> list[str] | None:
    """The paths that differ between the trees of ``base`` and ``revision`` in ``repo`` (a
    rename gives both names); None when ``base`` is not a commit ``repo`` holds (a
    force-push that was collected, a shallow clone)."""
    if not _has_commit(repo, base):
        return None
    out = _git(["diff", "--name-only", "--no-renames", "-z", base, revision, "--"], settings,
               cwd=repo)
    return [path for path in out.split("\0") if path]


def commit_of(repo: Path, name: str) -> str:
    """The commit a ref or revision names in ``repo`` (``SourceError``: none)."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                           "--end-of-options", f"{name}^{{commit}}"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SourceError(f"{name!r} not found in {repo} (no such commit, branch or tag)")
    return done.stdout.strip()


def export_base(settings, repo: Path, revision: str) -> Path:
    """The tree of an earlier revision that a change-scoped run compares with: its checkout
    when one is kept, else exported to WORKDIR/ENV/bases/SHA (only the newest is kept)."""
    kept = checkout_path(settings, revision)
    return kept if kept.is_dir() else _export_newest(repo, revision, env_dir(settings) / "bases")


def describe(repo: Path, revision: str) -> tuple[str | None, str | None]:
    """A commit's subject line and author name (None, None when git cannot tell)."""
    done = subprocess.run(["git", "-C", str(repo), "log", "-1", "--no-show-signature",
                           "--format=%s%x00%an", revision, "--"], capture_output=True,
                          text=True, errors="replace")
    subject, _, author = done.stdout.strip().partition("\0")
    return (subject or None, author or None) if done.returncode == 0 else (None, None)


def ahead(settings, base: str, tip: str,
          warn: Callable[[str], None] | None = None) -> int | None:
    """How many commits of ``tip`` are not in ``base`` (the tip is fetched when the mirror
    lacks it; ``warn`` as for ``fetch``); None when Git cannot tell."""
    try:
        if not _has_commit(mirror_path(settings), tip):
            fetch(settings, tip, warn=warn)
        count = _git(["rev-list", "--count", f"{base}..{tip}"], settings,
                     cwd=mirror_path(settings))
    except (SourceError, OSError):
        return None
    return int(count.strip())


def export(settings, revision: str) -> Path:
    """An exported tree of ``revision`` under checkouts/ (reused when it exists)."""
    return _archive(mirror_path(settings), revision, checkout_path(settings, revision))


def export_commit(settings, repo: Path, revision: str) -> Path:
    """Push under a signature policy: the tree of the verified commit of the checkout at
    ``repo``, exported to WORKDIR/ENV/push/SHA (only the newest is kept), so that what
    runs is what was signed, not files git does not track."""
    return _export_newest(repo, revision, env_dir(settings) / "push")


def _export_newest(repo: Path, revision: str, base: Path) -> Path:
    """``revision`` exported to BASE/SHA, the only export kept there."""
    if base.is_dir():
        for old in base.iterdir():
            if old.name != revision:
                shutil.rmtree(old, ignore_errors=True)
    return _archive(repo, revision, base / revision)


def _archive(repo: Path, revision: str, dest: Path) -> Path:
    import tarfile
    import tempfile

    import git

    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    repo = git.Repo(repo)
    tmp = Path(tempfile.mkdtemp(prefix=f".{revision[:12]}-", dir=dest.parent))
    try:
        with tempfile.TemporaryFile() as archive:
            repo.archive(archive, revision, format="tar")
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(tmp, filter="tar")
        tmp.rename(dest)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def switch(settings, revision: str) -> None:
    """Point ``current`` at the checkout of ``revision`` with one atomic rename."""
    base = env_dir(settings)
    tmp = base / f".current-{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(Path("checkouts") / revision)
    os.replace(tmp, base / "current")


def prune_checkouts(settings, keep: int, protect: set[str]) -> None:
    """Remove old checkouts, keeping the newest ``keep`` and every protected revision."""
    base = env_dir(settings) / "checkouts"
    if not base.is_dir():
        return
    dirs = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for path in dirs[keep:]:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)
    for path in base.glob(".*-*"):  # exports a killed process left half done
        shutil.rmtree(path, ignore_errors=True)


def local_revision(path: Path) -> str:
    """Revision of a local checkout (push mode); ``+dirty`` when it has local changes,
    files git does not track (and does not ignore) included: they are converged too."""
    def git(*args):
        # GIT_OPTIONAL_LOCKS=0: status does not refresh (write) the index of the user's checkout
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                              env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"))

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "local"
    dirty = git("status", "--porcelain", "--untracked-files=normal").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
