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

from dataclasses import dataclass
from pathlib import Path

MODES = ("none", "head", "tag", "tag-and-head", "strict")
SEAL_TRAILER = "GitOps-Seal"


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
        raise NotImplementedError

    @property
    def active(self) -> bool:
        return self.mode != "none"


def check(repo: Path, revision: str, policy: Policy, base: str | None,
          state_dir: Path) -> Signature | None:
    """Verify ``revision`` (a full commit id) in the Git repository ``repo`` (the bare
    mirror, or a work tree in push mode) under ``policy``; ``base`` is the start of a
    strict range. Returns the signature recorded with the run (the commit's; the tag's
    for ``tag``), None for ``none``; raises ``Unverified``."""
    raise NotImplementedError
