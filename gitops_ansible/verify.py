"""What gets applied: a revision passes the source's signature policy before it is exported.

Policies (the setting ``verify``):

- ``none``: no check (the default, as with ansible-pull without ``--verify-commit``);
- ``head``: the commit to converge is signed by a trusted key;
- ``tag``: an annotated tag that points at the commit is signed by a trusted key;
- ``tag-and-head``: both;
- ``strict``: every commit from the last revision applied under ``strict`` (the base) to
  the new one is signed by a trusted key. Without a base (the first strict converge, or a
  base no longer in the history), every commit back to the root. A commit signed by a
  trusted key that carries the seal trailer (``seal_trailer``, default ``GitOps-Seal``)
  ends the walk: what is behind it is not checked. This is how a repository adopts
  signing late, and how a key is rotated.

Trusted keys live outside the repository: ``trusted_gpg_keys`` (an armored OpenPGP public
key file, or a directory of ``*.asc`` files) and ``trusted_ssh_signers`` (an SSH
``allowed_signers`` file). The kind of each signature is detected by git; both are checked
by the real tools (gpg in a private keyring under the state directory, ssh-keygen through
git's ``gpg.ssh.allowedSignersFile``), never by Python code of ours.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .problems import text_lines
from .report import plural

MODES = ("none", "head", "tag", "tag-and-head", "strict")
SEAL_TRAILER = "GitOps-Seal"
TIMEOUT = 60  # seconds for one git or gpg command
TRAILER_RE = re.compile(r"[A-Za-z0-9-]+\Z")  # git's trailer token
# git's own reading of gpg's status lines (gpg-interface.c), in %G? letters.
GPG_RESULTS = {"GOODSIG": "G", "BADSIG": "B", "ERRSIG": "E", "EXPSIG": "X",
               "EXPKEYSIG": "Y", "REVKEYSIG": "R"}
# ssh-keygen's verdicts as git shows them (`--raw`): a signer listed in allowed_signers,
# and a valid signature by a key that is not listed (or not valid there at that date).
SSH_GOOD_RE = re.compile(r'Good "git" signature for (.+) with \S+ key (SHA256:\S+)')
SSH_UNLISTED_RE = re.compile(r'Good "git" signature with \S+ key (SHA256:\S+)')
# What a key setting must name (Policy.of's errors).
ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
EXPECTED = {"trusted_gpg_keys": "a readable armored OpenPGP public key file or a directory "
                                "of *.asc files",
            "trusted_ssh_signers": "a readable SSH allowed_signers file"}


class KeyringError(Exception):
    """The trusted OpenPGP keys at ``path`` cannot be imported: ``text`` says why."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text
        super().__init__(f"{path}: {text}")


class Unverified(Exception):
    """The revision does not pass the policy. The message names the commit (or tag), the
    signer found (or "unsigned") and the policy; it is one line."""


@dataclass(frozen=True)
class Signature:
    """Who signed: ``kind`` openpgp or ssh, the key's ``fingerprint`` (OpenPGP: the
    primary key's, 40 hex digits; SSH: ``SHA256:...``), and ``signer`` (the OpenPGP user id
    or the SSH principal)."""
    kind: str
    fingerprint: str
    signer: str

    def __str__(self) -> str:
        return f"{self.kind} {self.fingerprint} ({self.signer})"


@dataclass(frozen=True)
class Policy:
    mode: str = "none"
    gpg_keys: Path | None = None
    ssh_signers: Path | None = None
    seal_trailer: str = SEAL_TRAILER

    @classmethod
    def of(cls, settings) -> "Policy":
        """The policy of ``settings`` (verify, trusted_gpg_keys, trusted_ssh_signers,
        seal_trailer)."""
        from .config import ConfigError  # config imports this module

        def where(key: str) -> str:
            return settings.sources.get(key, "settings")

        if not TRAILER_RE.match(settings.seal_trailer or ""):
            raise ConfigError(where("seal_trailer"), "seal_trailer", "a trailer name of "
                              "letters, digits and '-' (such as GitOps-Seal)",
                              settings.seal_trailer)
        policy = cls(settings.verify, _path(settings.trusted_gpg_keys),
                     _path(settings.trusted_ssh_signers), settings.seal_trailer)
        if not policy.active:
            return policy
        if not (policy.gpg_keys or policy.ssh_signers):
            raise ConfigError(where("verify"), "verify", "trusted_gpg_keys or "
                              "trusted_ssh_signers set as well (the keys a revision must be "
                              "signed with)", settings.verify)
        for key, path in (("trusted_gpg_keys", policy.gpg_keys),
                          ("trusted_ssh_signers", policy.ssh_signers)):
            try:
                _read_keys(path, key)
            except (OSError, ValueError) as exc:
                raise ConfigError(where(key), key, EXPECTED[key], _why(path, exc)) from None
        return policy

    def prepare(self, state_dir: Path, where: str = "settings") -> None:
        """Build the private keyring now: keys gpg cannot import are the settings' fault
        (a ``ConfigError``), not the revision's."""
        from .config import ConfigError

        if not self.active:
            return
        try:
            _keyring(self, Path(state_dir))
        except KeyringError as exc:
            raise ConfigError(where, "trusted_gpg_keys", EXPECTED["trusted_gpg_keys"],
                              f"{exc.path.name}: {exc.text}") from None

    @property
    def active(self) -> bool:
        return self.mode != "none"


def check(repo: Path, revision: str, policy: Policy, base: str | None,
          state_dir: Path, back: bool = False) -> Signature | None:
    """Verify ``revision`` (a full commit id) in the Git repository ``repo`` (the bare
    mirror, or a work tree in push mode) under ``policy``; ``base`` is the start of a
    strict range. Under ``strict``, a revision behind the base is refused unless going
    ``back`` there is allowed (a pin, the promotion gate, the last good revision): what
    goes back without that is a force-push. Returns the signature recorded with the run
    (the commit's; the tag's for ``tag``), None for ``none``; raises ``Unverified``, also
    when the trusted keys cannot be used."""
    if not policy.active:
        return None
    try:
        home = _keyring(policy, Path(state_dir))
    except KeyringError as exc:  # the key files changed since the policy was prepared
        raise _refused(policy, f"trusted_gpg_keys {exc}") from None
    git = _Git(repo, policy, home)
    if policy.mode == "tag":
        return _tag(git, revision)
    if policy.mode == "strict":
        return _strict(git, revision, base, back)
    signature = _head(git, revision)
    if policy.mode == "tag-and-head":
        _tag(git, revision)
    return signature


# -- what git found for one signature --------------------------------------------------
@dataclass(frozen=True)
class _Found:
    """One signature as git judged it: ``status`` is a %G? letter; ``key`` the primary
    fingerprint (or what identifies the key when that is all git says)."""
    status: str
    kind: str = ""
    key: str = ""
    signer: str = ""

    @property
    def good(self) -> bool:
        return self.status == "G"

    def signature(self) -> Signature:
        return Signature(self.kind, self.key, self.signer)

    def __str__(self) -> str:
        key = f"{self.kind} key {self.key}"
        if self.status == "N":
            return "unsigned"
        if self.status == "B":
            return "bad signature" + (f" (claims {key})" if self.key else "")
        if not self.key:
            return "a signature that cannot be checked"
        if self.status == "U" and self.kind == "ssh":
            return (f"signed by {key} which is not in trusted_ssh_signers (or not valid "
                    f"there at that date)")
        return {"X": f"expired signature by {key}", "Y": f"signed by expired {key}",
                "R": f"signed by revoked {key}"}.get(
            self.status, f"signed by {key} which is not trusted")


def _commit_found(status: str, fpr: str, primary: str, signer: str, key: str) -> _Found:
    """From git log's %G?, %GF, %GP, %GS, %GK: an SSH key shows as SHA256:..."""
    kind = "ssh" if key.startswith("SHA256:") else "openpgp" if key else ""
    return _Found(status, kind, primary or fpr or key, signer)


def _raw_found(output: str) -> _Found:
    """From ``git verify-tag --raw``: gpg's status lines, or ssh-keygen's verdict."""
    lines = text_lines(output)
    if any("no signature found" in line for line in lines):
        return _Found("N")
    status = [line.split(" ")[1:] for line in lines if line.startswith("[GNUPG:] ")]
    return _gpg_found(status) if status else _ssh_found(lines)


def _gpg_found(status: list[list[str]]) -> _Found:
    if sum(words[0] == "NEWSIG" for words in status) > 1:
        return _Found("E", "openpgp")  # several signatures: git refuses them too
    result, key, signer, trust = "E", "", "", "UNDEFINED"
    for word, *rest in status:
        if word in GPG_RESULTS:
            result, key, signer = GPG_RESULTS[word], (rest or [""])[0], " ".join(rest[1:])
        elif word == "VALIDSIG" and rest:
            key = rest[-1]  # the primary key's fingerprint
        elif word.startswith("TRUST_"):
            trust = word[len("TRUST_"):]
    if result == "G" and trust in ("UNDEFINED", "NEVER"):
        result = "U"
    return _Found(result, "openpgp", key, signer)


def _ssh_found(lines: list[str]) -> _Found:
    for line in lines:
        if match := SSH_GOOD_RE.match(line):
            return _Found("G", "ssh", match.group(2), match.group(1))
        if match := SSH_UNLISTED_RE.match(line):
            return _Found("U", "ssh", match.group(1))
    if any("Signature verification failed" in line for line in lines):
        return _Found("B", "ssh")
    return _Found("E", "ssh")


# -- git, with our signing tools and keys only -----------------------------------------
class _Git:
    def __init__(self, repo: Path, policy: Policy, gnupg_home: Path):
        self.policy = policy
        self.prefix = ["git", "-C", str(repo),
                       # after the config files: these win over gpg.openpgp.program too
                       "-c", "gpg.program=gpg", "-c", "gpg.x509.program=gpgsm",
                       "-c", "gpg.ssh.program=ssh-keygen",
                       # no file at all: git does not check SSH signatures (%G? N)
                       "-c", f"gpg.ssh.allowedSignersFile={policy.ssh_signers or os.devnull}"]
        # Replace refs could stand another commit in for the one that is exported.
        self.env = dict(os.environ, LC_ALL="C", GNUPGHOME=str(gnupg_home),
                        GIT_NO_REPLACE_OBJECTS="1", GIT_TERMINAL_PROMPT="0")

    def run(self, *args: str, check: bool = False) -> _Done:
        return _run(f"git {args[0]}", [*self.prefix, *args], self.env, self.refused,
                    check=check)

    def out(self, *args: str) -> str:
        return self.run(*args, check=True).stdout

    def refused(self, text: str) -> Unverified:
        return _refused(self.policy, text)


@dataclass(frozen=True)
class _Done:
    returncode: int
    stdout: str
    stderr: str


def _run(what: str, command: list[str], env: dict, refused, data: bytes | None = None,
         check: bool = True) -> _Done:
    """A git or gpg command; a time out, or a failure when ``check``, is ``refused``."""
    try:
        done = subprocess.run(command, input=data, env=env, capture_output=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise refused(f"{what} timed out after {TIMEOUT}s") from None
    result = _Done(done.returncode, done.stdout.decode(errors="replace"),
                   done.stderr.decode(errors="replace"))
    if check and result.returncode != 0:
        raise refused(f"{what}: " + (text_lines(result.stderr)
                                      or [f"exit code {result.returncode}"])[0])
    return result


def _refused(policy: Policy, text: str) -> Unverified:
    return Unverified(f"{text} (verify = {policy.mode})")


# -- the modes -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Commit:
    sha: str
    parents: tuple[str, ...]
    found: _Found
    sealed: bool  # carries the seal trailer (a seal when the signature is good too)


def _log(git: _Git, *revisions: str, options: tuple = ()) -> list[_Commit]:
    """The commits of ``git log REVISIONS``, each with its signature checked by git."""
    fields = ("%H", "%P", "%G?", "%GF", "%GP", "%GS", "%GK",
              f"%(trailers:key={git.policy.seal_trailer})")
    out = git.out("log", "--no-show-signature", "-z", "--format=" + "%x00".join(fields),
                  *options, "--end-of-options", *revisions)
    values = out.split("\0")[:-1]
    records = [values[i:i + len(fields)] for i in range(0, len(values), len(fields))]
    return [_Commit(sha, tuple(parents.split()), _commit_found(*signature), bool(trailer))
            for sha, parents, *signature, trailer in records]


def _head(git: _Git, revision: str) -> Signature:
    commit = _log(git, revision, options=("-1",))[0]
    if not commit.found.good:
        raise git.refused(f"commit {commit.sha[:12]}: {commit.found}")
    return commit.found.signature()


def _tag(git: _Git, revision: str) -> Signature:
    """Any annotated tag pointing at ``revision`` signed by a trusted key."""
    refs = git.out("for-each-ref", f"--points-at={revision}",
                   "--format=%(refname)%00%(refname:strip=2)%00%(objecttype)", "refs/tags")
    failed = []
    for ref, name, kind in (line.split("\0") for line in refs.splitlines()):
        if kind != "tag":
            failed.append(f"{name}: a lightweight tag (it cannot be signed)")
            continue
        done = git.run("verify-tag", "--raw", ref)
        found = _raw_found(done.stderr + done.stdout)
        if found.good:
            return found.signature()
        failed.append(f"tag {name}: {found}")
    if not failed:
        raise git.refused(f"no annotated tag points at commit {revision[:12]}")
    more = f"; {len(failed) - 3} more" if len(failed) > 3 else ""
    raise git.refused(f"no signed tag points at commit {revision[:12]}: "
                      f"{'; '.join(failed[:3])}{more}")


def _strict(git: _Git, revision: str, base: str | None, back: bool) -> Signature:
    """Every commit reachable from ``revision`` and not from ``base``, back to seals."""
    if base and git.run("cat-file", "-e", f"{base}^{{commit}}").returncode != 0:
        base = None  # not in this repository (a new mirror, a force push): walk it all
    commits = _log(git, revision, *([f"^{base}"] if base else []))
    if not commits:  # the revision is the base or behind it: in a verified range
        if base and revision != base and not back:
            raise git.refused(f"commit {revision[:12]} is behind the last verified revision "
                              f"{base[:12]} (a force-push back?); `gitops-ansible rollback` "
                              "goes back")
        return _head(git, revision)
    tip = commits[0]  # git log shows its one starting point first
    problems = _walk(tip, {c.sha: c for c in commits}, _shallow(git))
    if problems:
        sha, what = problems[0]
        where = ("the new revision" if sha == tip.sha else
                 f"between base {base[:12]} and the new revision {tip.sha[:12]}" if base else
                 f"in the history of the new revision {tip.sha[:12]}, no base")
        more = (f"; {plural(len(problems) - 1, 'more commit')} in the range "
                f"{'fails' if len(problems) == 2 else 'fail'} too" if problems[1:] else "")
        raise git.refused(f"commit {sha[:12]} ({where}): {what}{more}")
    return tip.found.signature()


def _walk(tip: _Commit, commits: dict[str, _Commit], shallow: set[str]) -> list[tuple]:
    """(commit, what is wrong) for each commit found from ``tip`` along all parents, not
    past a seal; a parent missing from ``commits`` is reachable from the base."""
    problems, queue, seen = [], deque([tip]), {tip.sha}
    while queue:
        commit = queue.popleft()
        if not commit.found.good:
            problems.append((commit.sha, str(commit.found)))
        elif commit.sealed:
            continue
        elif commit.sha in shallow:
            problems.append((commit.sha, "the history behind it is not in the repository "
                                         "(a shallow clone: fetch it all)"))
        for parent in commit.parents:
            if parent in commits and parent not in seen:
                seen.add(parent)
                queue.append(commits[parent])
    return problems


def _shallow(git: _Git) -> set[str]:
    """The commits of a shallow clone whose parents git hides (they are not there)."""
    path = Path(git.out("rev-parse", "--path-format=absolute", "--git-path", "shallow").strip())
    return set(path.read_text().split()) if path.is_file() else set()


# -- trusted keys ----------------------------------------------------------------------
def _path(value) -> Path | None:
    """A key setting's path: relative to the current directory (git runs elsewhere)."""
    return Path(value).expanduser().absolute() if value else None


def _why(path: Path, exc: Exception) -> str:
    return f"{path}: {exc.strerror if isinstance(exc, OSError) else exc}"


def _read_keys(path: Path | None, key: str) -> list[tuple[Path, bytes]]:
    """(file, content) of a key setting: the file, or a directory's *.asc files, sorted."""
    if path is None:
        return []
    if key == "trusted_gpg_keys" and path.is_dir():
        files = sorted(path.glob("*.asc"))
        if not files:
            raise ValueError("no *.asc file in this directory")
    else:
        files = [path]
    keys = [(file, file.read_bytes()) for file in files]
    for file, content in keys:
        if key == "trusted_gpg_keys" and ARMOR not in content:
            inside = f" ({file.name})" if file != path else ""
            raise ValueError(f"not an armored OpenPGP public key{inside}")
    return keys


def _keyring(policy: Policy, state_dir: Path) -> Path:
    """A private GnuPG home holding the trusted OpenPGP keys, each ultimately trusted (an
    empty one without keys: the user's keyring is never used). Built once per set of keys,
    in a temporary directory renamed into place."""
    try:
        keys = _read_keys(policy.gpg_keys, "trusted_gpg_keys")
    except (OSError, ValueError) as exc:
        raise KeyringError(policy.gpg_keys, exc.strerror if isinstance(exc, OSError)
                           else str(exc)) from None
    digest = hashlib.sha256()
    for file, content in keys:
        digest.update(f"{file}\0".encode() + content + b"\0")
    home = state_dir / "trust" / f"gnupg-{digest.hexdigest()[:16]}"
    if home.is_dir():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # only here: the agent's idle process does not need it

    tmp = Path(tempfile.mkdtemp(prefix=".gnupg-", dir=home.parent))  # mode 0700
    try:
        if keys:
            _trust(tmp, b"".join(content for _, content in keys), policy)
        try:
            tmp.rename(home)
        except OSError:
            if not home.is_dir():
                raise
            # another process built the same keyring meanwhile: use that one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return home


def _trust(home: Path, armored: bytes, policy: Policy) -> None:
    """Import the keys and give every primary key ultimate ownertrust."""
    def gpg(*args: str, data: bytes | None = None, check: bool = True) -> _Done:
        # Importing would start a gpg-agent (verifying does not).
        command = ["gpg", "--batch", "--no-tty", "--no-autostart", "--homedir", str(home),
                   *args]
        return _run(f"gpg {args[0]}", command, dict(os.environ, LC_ALL="C"), refused, data,
                    check)

    def refused(text: str) -> KeyringError:
        return KeyringError(policy.gpg_keys, text)

    # Its exit code is 2 when the agent's socket path would be too long for a deep state
    # directory, although the keys are in: the import's own count says.
    done = gpg("--import", "--status-fd", "1", data=armored, check=False)
    counts = [line.split()[2:] for line in done.stdout.splitlines()
              if line.startswith("[GNUPG:] IMPORT_RES ")]
    if not counts or counts[0][0] == "0" or counts[0][13] != "0":
        said = [line for line in text_lines(done.stderr)
                if "keybox" not in line and "Total number processed" not in line]
        raise refused("gpg --import: " + (said or ["no key imported"])[0])
    listing = gpg("--with-colons", "--list-keys").stdout
    rows = [line.split(":") for line in listing.splitlines()]
    primaries = [row[9] for previous, row in zip(rows, rows[1:])
                 if previous[0] == "pub" and row[0] == "fpr"]
    gpg("--import-ownertrust", data="".join(f"{fpr}:6:\n" for fpr in primaries).encode())
