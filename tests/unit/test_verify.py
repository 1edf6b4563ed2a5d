"""The signature policy against real signatures: commits and tags signed with gpg and with
SSH keys (git's gpg.format ssh), verified by git, gpg and ssh-keygen in tmp_path."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitops_ansible import config
from gitops_ansible.verify import Policy, Signature, Unverified, check
from tests.conftest import make_settings, require

SEAL = "GitOps-Seal: signing starts here"


@dataclass(frozen=True)
class Key:
    """A key that signs in the tests: ``config`` the git options that sign with it, and
    what ``check`` must report for it."""
    kind: str
    config: tuple
    fingerprint: str
    signer: str
    key_id: str = ""  # what git names an OpenPGP key by when it cannot check it

    @property
    def signature(self) -> Signature:
        return Signature(self.kind, self.fingerprint, self.signer)


class Keys:
    """Signing keys in a throwaway GnuPG home, their public files, and SSH keys with an
    allowed_signers file that lists Alice's."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "gnupg"
        self.home.mkdir(mode=0o700)
        self.alice = self._openpgp("Alice <alice@example.com>", subkey=True)
        self.mallory = self._openpgp("Mallory <mallory@example.com>")
        self.carol = self._openpgp("Carol <carol@example.com>")
        self.expired = self._expired("Old <old@example.com>")
        self.alice_ssh = self._ssh("alice")
        self.mallory_ssh = self._ssh("mallory")
        self.allowed_signers = root / "allowed_signers"
        self.allowed_signers.write_text(f"alice@example.com {self.public_ssh('alice')}\n")

    def gpg(self, *args: str, now: str | None = None) -> str:
        faked = ["--faked-system-time", now] if now else []
        return subprocess.run(["gpg", "--batch", "--homedir", str(self.home), *faked, *args],
                              check=True, capture_output=True, text=True).stdout

    def _fingerprints(self, uid: str) -> list[str]:
        listing = self.gpg("--with-colons", "--list-keys", uid)
        return [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")]

    def _openpgp(self, uid: str, subkey: bool = False, now: str | None = None,
                 expires: str = "never") -> Key:
        self.gpg("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", expires, now=now)
        primary = self._fingerprints(uid)[0]
        if subkey:  # git then signs with the subkey: check must report the primary key
            self.gpg("--passphrase", "", "--quick-add-key", primary, "ed25519", "sign")
        signing = self._fingerprints(uid)[-1]
        (self.root / f"{uid.split()[0].lower()}.asc").write_text(
            self.gpg("--armor", "--export", primary))
        return Key("openpgp", ("-c", f"user.signingkey={primary}"), primary, uid, signing[-16:])

    def _expired(self, uid: str) -> Key:
        """A key made in 2020 for a year, that signed in 2020 (gpg with a faked clock)."""
        key = self._openpgp(uid, now="20200101T000000", expires="1y")
        program = self.root / "gpg-in-2020"
        program.write_text('#!/bin/sh\nexec gpg --faked-system-time 20200601T000000 "$@"\n')
        program.chmod(0o755)
        return Key(key.kind, (*key.config, "-c", f"gpg.program={program}"), key.fingerprint,
                   key.signer, key.key_id)

    def _ssh(self, name: str) -> Key:
        path = self.root / f"{name}_ssh"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                        str(path)], check=True)
        listed = subprocess.run(["ssh-keygen", "-l", "-f", f"{path}.pub"], check=True,
                                capture_output=True, text=True).stdout.split()[1]
        return Key("ssh", ("-c", "gpg.format=ssh", "-c", f"user.signingkey={path}"), listed,
                   f"{name}@example.com")

    def public_ssh(self, name: str) -> str:
        return (self.root / f"{name}_ssh.pub").read_text().strip()

    def file(self, name: str) -> Path:
        return self.root / f"{name}.asc"

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"])


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    for tool in ("git", "gpg", "gpgconf", "ssh-keygen"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    made = Keys(tmp_path_factory.mktemp("keys"))
    yield made
    made.close()


@pytest.fixture(autouse=True)
def plain_git(tmp_path, monkeypatch):
    """A git config of the tests' own: no user's commit.gpgsign signs what must not be."""
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n\tname = tests\n\temail = tests@example.invalid\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return gitconfig


class Tree:
    """A work tree where the tests commit and tag, signed or not."""

    def __init__(self, path: Path, keys: Keys):
        self.path, self.keys = path, keys
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, data: str | None = None) -> str:
        return subprocess.run(["git", "-C", str(self.path), *args], input=data, check=True,
                              capture_output=True, text=True,
                              env=dict(os.environ, GNUPGHOME=str(self.keys.home))).stdout

    def commit(self, key: Key | None = None, message: str = "change", *trailers: str) -> str:
        signing = [*key.config, "commit", "-S"] if key else ["commit", "--no-gpg-sign"]
        paragraphs = [arg for text in (message, *trailers) for arg in ("-m", text)]
        self.git(*signing, "-q", "--allow-empty", *paragraphs)
        return self.rev("HEAD")

    def tag(self, name: str, key: Key | None = None, annotated: bool = True) -> None:
        if key:
            self.git(*key.config, "tag", "-s", "-m", name, name)
        else:
            self.git("tag", *(["-a", "-m", name] if annotated else []), name)

    def rev(self, name: str) -> str:
        return self.git("rev-parse", name).strip()

    def changed(self, kind: str, name: str) -> str:
        """A copy of a signed commit or tag by another author: its signature no longer
        fits."""
        raw = self.git("cat-file", kind, name).replace("tests <", "someone else <")
        return self.git("hash-object", "-t", kind, "-w", "--stdin", data=raw).strip()


@pytest.fixture
def tree(tmp_path, keys):
    path = tmp_path / "tree"
    path.mkdir()
    return Tree(path, keys)


def mirror(tree: Tree, how: str, tmp_path: Path) -> Path:
    """The repository check reads: the work tree, or a bare copy made as named."""
    bare = tmp_path / "mirror.git"
    if how == "clone --bare":
        subprocess.run(["git", "clone", "-q", "--bare", str(tree.path), str(bare)], check=True)
    elif how == "fetch":  # as the orchestrator fills WORKDIR/ENV/mirror.git
        subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
        subprocess.run(["git", "-C", str(bare), "fetch", "-q", "--tags", "--", str(tree.path),
                        "+refs/heads/main:refs/gitops/target"], check=True)
    return tree.path if how == "work tree" else bare


REPOS = ("work tree", "clone --bare", "fetch")


def policy(keys: Keys, mode: str, gpg: Path | None = None, ssh: Path | None = None) -> Policy:
    return Policy(mode, gpg or keys.file("alice"), ssh or keys.allowed_signers)


def refused(repo: Path, revision: str, rules: Policy, tmp_path: Path,
            base: str | None = None) -> str:
    with pytest.raises(Unverified) as refusal:
        check(repo, revision, rules, base, tmp_path / "state")
    message = str(refusal.value)
    assert "\n" not in message and message.endswith(f"(verify = {rules.mode})")
    return message


# -- none, head ------------------------------------------------------------------------
def test_none_checks_nothing(tmp_path):
    state = tmp_path / "state"
    assert check(tmp_path / "no-repository", "0" * 40, Policy(), None, state) is None
    assert not state.exists()


@pytest.mark.parametrize("how", REPOS)
@pytest.mark.parametrize("signer", ["alice", "alice_ssh"])
def test_head_accepts_a_commit_signed_by_a_trusted_key(keys, tree, tmp_path, how, signer):
    key = getattr(keys, signer)
    revision = tree.commit(key)
    repo = mirror(tree, how, tmp_path)
    assert check(repo, revision, policy(keys, "head"), None, tmp_path / "state") == \
        key.signature
    if key.kind == "openpgp":
        assert key.key_id not in key.fingerprint, "the subkey signed: the primary is reported"


def test_head_refuses_an_unsigned_commit(keys, tree, tmp_path):
    tree.commit(keys.alice)
    revision = tree.commit()
    message = refused(tree.path, revision, policy(keys, "head"), tmp_path)
    assert message == f"commit {revision[:12]}: unsigned (verify = head)"


@pytest.mark.parametrize("signer, found", [
    ("mallory", "signed by openpgp key {key} which is not trusted"),
    ("mallory_ssh", "signed by ssh key {key} which is not in trusted_ssh_signers"),
])
def test_head_refuses_a_commit_signed_by_an_unknown_key(keys, tree, tmp_path, signer, found):
    key = getattr(keys, signer)
    revision = tree.commit(key)
    message = refused(tree.path, revision, policy(keys, "head"), tmp_path)
    expected = found.format(key=key.key_id or key.fingerprint)
    assert message.startswith(f"commit {revision[:12]}: {expected}")


def test_ssh_signatures_need_trusted_ssh_signers(keys, tree, tmp_path):
    revision = tree.commit(keys.alice_ssh)
    rules = Policy("head", gpg_keys=keys.file("alice"))
    assert "which is not in trusted_ssh_signers" in refused(tree.path, revision, rules, tmp_path)


@pytest.mark.parametrize("signer", ["alice", "alice_ssh"])
def test_a_commit_or_tag_changed_after_signing_is_refused(keys, tree, tmp_path, signer):
    changed = tree.changed("commit", tree.commit(getattr(keys, signer)))
    message = refused(tree.path, changed, policy(keys, "head"), tmp_path)
    assert message.startswith(f"commit {changed[:12]}: bad signature")
    tree.tag("v1", getattr(keys, signer))
    tree.git("update-ref", "refs/tags/v1", tree.changed("tag", "v1"))
    assert refused(tree.path, tree.rev("HEAD"), policy(keys, "tag"), tmp_path).startswith(
        f"no signed tag points at commit {tree.rev('HEAD')[:12]}: tag v1: bad signature")


def test_head_refuses_expired_and_revoked_keys(keys, tree, tmp_path):
    old = tree.commit(keys.expired)
    rules = policy(keys, "head", gpg=keys.file("old"))
    assert f"signed by expired openpgp key {keys.expired.fingerprint}" in refused(
        tree.path, old, rules, tmp_path)
    revocation = (keys.home / "openpgp-revocs.d" / f"{keys.alice.fingerprint}.rev").read_text()
    revoked = tmp_path / "revoked.asc"
    revoked.write_text(keys.file("alice").read_text() + revocation.replace(":-----", "-----"))
    revision = tree.commit(keys.alice)
    assert f"signed by revoked openpgp key {keys.alice.fingerprint}" in refused(
        tree.path, revision, policy(keys, "head", gpg=revoked), tmp_path)


def test_the_users_git_config_does_not_choose_the_verifier(keys, tree, tmp_path, plain_git):
    """A user's gpg program that says yes to everything, allowed signers that list Mallory,
    and log.showSignature: none of them counts."""
    gpg, ssh = tree.commit(keys.mallory), tree.commit(keys.mallory_ssh)
    yes = tmp_path / "yes-gpg"
    yes.write_text("#!/bin/sh\nprintf '[GNUPG:] NEWSIG\\n[GNUPG:] GOODSIG 0123456789ABCDEF M\\n"
                   f"[GNUPG:] VALIDSIG {keys.mallory.fingerprint} 2026-01-01 0 0 4 0 22 8 00 "
                   f"{keys.mallory.fingerprint}\\n[GNUPG:] TRUST_ULTIMATE 0 pgp\\n'\n")
    yes.chmod(0o755)
    listed = tmp_path / "mallory_signers"
    listed.write_text(f"mallory@example.com {keys.public_ssh('mallory')}\n")
    with plain_git.open("a") as gitconfig:
        gitconfig.write(f'[gpg "openpgp"]\n\tprogram = {yes}\n[gpg "ssh"]\n\t'
                        f'allowedSignersFile = {listed}\n[log]\n\tshowSignature = true\n')
    for revision in (gpg, ssh):
        assert tree.git("log", "-1", "--format=%G?", revision).strip().endswith("G"), \
            "the user's config is not used by this git: the check below proves nothing"
        assert refused(tree.path, revision, policy(keys, "head"), tmp_path).startswith(
            f"commit {revision[:12]}: signed by ")


def test_a_replace_ref_does_not_stand_in_for_the_revision(keys, tree, tmp_path):
    """refs/replace/UNSIGNED -> a signed commit: git would show the signed one instead."""
    signed = tree.commit(keys.alice)
    unsigned = tree.commit()
    tree.git("replace", unsigned, signed)
    assert tree.git("log", "-1", "--format=%G?", unsigned).strip() == "G"
    assert refused(tree.path, unsigned, policy(keys, "head"), tmp_path) == \
        f"commit {unsigned[:12]}: unsigned (verify = head)"


def test_several_signatures_are_refused_as_git_refuses_them(keys, tree, tmp_path):
    """One signature by Mallory, one by Alice (gpg -u twice): git's %G? is E for such a
    commit, and a tag gets the same."""
    both = tmp_path / "gpg-and-mallory"
    both.write_text(f'#!/bin/sh\nexec gpg -u {keys.mallory.fingerprint} "$@"\n')
    both.chmod(0o755)
    signing = dataclasses.replace(keys.alice, config=(*keys.alice.config, "-c",
                                                      f"gpg.program={both}"))
    revision = tree.commit(signing)
    tree.tag("v1", signing)
    found = "a signature that cannot be checked"
    assert refused(tree.path, revision, policy(keys, "head"), tmp_path) == \
        f"commit {revision[:12]}: {found} (verify = head)"
    assert f"tag v1: {found}" in refused(tree.path, revision, policy(keys, "tag"), tmp_path)


# -- tag, tag-and-head -----------------------------------------------------------------
@pytest.mark.parametrize("how", REPOS)
@pytest.mark.parametrize("signer", ["alice", "alice_ssh"])
def test_tag_accepts_a_signed_tag_and_reports_its_signer(keys, tree, tmp_path, how, signer):
    revision = tree.commit()  # the commit itself is unsigned: the tag is what counts
    tree.tag("v1-unsigned")
    tree.tag("v1", getattr(keys, signer))
    repo = mirror(tree, how, tmp_path)
    assert check(repo, revision, policy(keys, "tag"), None, tmp_path / "state") == \
        getattr(keys, signer).signature


def test_tag_refuses_a_commit_without_a_tag(keys, tree, tmp_path):
    tree.commit(keys.alice)
    tree.tag("v1", keys.alice)
    revision = tree.commit(keys.alice)
    assert refused(tree.path, revision, policy(keys, "tag"), tmp_path) == \
        f"no annotated tag points at commit {revision[:12]} (verify = tag)"


@pytest.mark.parametrize("make, found", [
    (lambda t, k: t.tag("v1", annotated=False), "v1: a lightweight tag"),
    (lambda t, k: t.tag("v1"), "tag v1: unsigned"),
    (lambda t, k: t.tag("v1", k.mallory), "tag v1: signed by openpgp key {mallory} which is "
                                          "not trusted"),
    (lambda t, k: t.tag("v1", k.mallory_ssh), "tag v1: signed by ssh key {mallory_ssh} which "
                                              "is not in trusted_ssh_signers"),
])
def test_tag_refuses_tags_not_signed_by_a_trusted_key(keys, tree, tmp_path, make, found):
    revision = tree.commit(keys.alice)
    make(tree, keys)
    message = refused(tree.path, revision, policy(keys, "tag"), tmp_path)
    expected = found.format(mallory=keys.mallory.key_id,
                            mallory_ssh=keys.mallory_ssh.fingerprint)
    assert message.startswith(f"no signed tag points at commit {revision[:12]}: {expected}")


def test_tag_and_head_needs_both(keys, tree, tmp_path):
    rules = policy(keys, "tag-and-head")
    signed = tree.commit(keys.alice)
    assert "no annotated tag points at" in refused(tree.path, signed, rules, tmp_path)
    tree.tag("v1", keys.alice_ssh)
    assert check(tree.path, signed, rules, None, tmp_path / "state") == keys.alice.signature
    unsigned = tree.commit()
    tree.tag("v2", keys.alice_ssh)
    assert f"commit {unsigned[:12]}: unsigned" in refused(tree.path, unsigned, rules, tmp_path)


# -- strict ----------------------------------------------------------------------------
@pytest.mark.parametrize("how", REPOS)
def test_strict_refuses_an_unsigned_commit_inside_the_range(keys, tree, tmp_path, how):
    tree.commit()  # before the base: not checked
    base = tree.commit(keys.alice)
    signed = tree.commit(keys.alice_ssh)
    unsigned = tree.commit()
    new = tree.commit(keys.alice)
    repo = mirror(tree, how, tmp_path)
    rules = policy(keys, "strict")
    assert check(repo, signed, rules, base, tmp_path / "state") == keys.alice_ssh.signature
    assert refused(repo, new, rules, tmp_path, base) == (
        f"commit {unsigned[:12]} (between base {base[:12]} and the new revision {new[:12]}): "
        f"unsigned (verify = strict)")


def test_strict_walks_every_parent_of_a_merge(keys, tree, tmp_path):
    base = tree.commit(keys.alice)
    tree.git("switch", "-q", "-c", "side")
    side = tree.commit()
    tree.git("switch", "-q", "main")
    tree.commit(keys.alice)
    tree.git(*keys.alice.config, "merge", "-q", "-S", "--no-ff", "-m", "merge side", "side")
    merge = tree.rev("HEAD")
    message = refused(tree.path, merge, policy(keys, "strict"), tmp_path, base)
    assert message.startswith(f"commit {side[:12]} (between base {base[:12]} and the new "
                              f"revision {merge[:12]}): unsigned")


def test_strict_without_base_walks_to_the_root(keys, tree, tmp_path):
    root = tree.commit()
    tree.commit(keys.alice)
    new = tree.commit(keys.alice)
    gone = "f" * 40  # a base the repository no longer has counts as none
    for base in (None, gone):
        assert refused(tree.path, new, policy(keys, "strict"), tmp_path, base) == (
            f"commit {root[:12]} (in the history of the new revision {new[:12]}, no base): "
            f"unsigned (verify = strict)")


def test_strict_counts_the_other_unverified_commits(keys, tree, tmp_path):
    tree.commit()
    tree.commit(keys.mallory)
    new = tree.commit()
    message = refused(tree.path, new, policy(keys, "strict"), tmp_path)
    assert message == (f"commit {new[:12]} (the new revision): unsigned; 2 more commits in "
                       f"the range fail too (verify = strict)")


def test_a_seal_by_a_new_key_rotates_the_trust(keys, tree, tmp_path):
    """Unsigned history, then Alice's key; Alice's key is dropped for Carol's: a seal
    signed by Carol starts the history that is checked."""
    tree.commit()
    old = tree.commit(keys.alice)
    rules = policy(keys, "strict", gpg=keys.file("carol"))
    not_sealed = tree.commit(keys.carol, "carol takes over")
    assert refused(tree.path, not_sealed, rules, tmp_path).startswith(
        f"commit {old[:12]} (in the history of the new revision {not_sealed[:12]}, no base): "
        f"signed by openpgp key {keys.alice.key_id} which is not trusted")
    tree.commit(None, "unsigned seal", SEAL)
    unsigned_seal = tree.commit(keys.carol)
    assert "unsigned" in refused(tree.path, unsigned_seal, rules, tmp_path)
    tree.commit(keys.carol, "seal", SEAL)
    new = tree.commit(keys.carol)
    for base in (None, old, "f" * 40):
        assert check(tree.path, new, rules, base, tmp_path / "state") == keys.carol.signature


def test_strict_back_behind_the_base_checks_the_revision(keys, tree, tmp_path):
    """A rollback: the revision is in the range verified before; its own signature counts."""
    tree.commit()
    older = tree.commit(keys.alice)
    unsigned = tree.commit()
    base = tree.commit(keys.alice)
    rules = policy(keys, "strict")
    assert check(tree.path, older, rules, base, tmp_path / "state",
                 back=True) == keys.alice.signature
    with pytest.raises(Unverified) as refusal:
        check(tree.path, unsigned, rules, base, tmp_path / "state", back=True)
    assert str(refusal.value) == f"commit {unsigned[:12]}: unsigned (verify = strict)"
    # going back without a pin, the gate or a fallback is a force-push: refused
    assert refused(tree.path, older, rules, tmp_path, base) == (
        f"commit {older[:12]} is behind the last verified revision {base[:12]} (a force-push "
        "back?); `gitops-ansible rollback` goes back (verify = strict)")
    assert check(tree.path, base, rules, base, tmp_path / "state") == keys.alice.signature


def test_strict_refuses_a_shallow_history(keys, tree, tmp_path):
    tree.commit(keys.alice)
    new = tree.commit(keys.alice)
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{tree.path}", str(shallow)],
                   check=True)
    assert check(shallow, new, policy(keys, "head"), None, tmp_path / "state")
    assert "the history behind it is not in the repository (a shallow clone" in refused(
        shallow, new, policy(keys, "strict"), tmp_path)


# -- the private keyring ---------------------------------------------------------------
def keyrings(state: Path) -> list[Path]:
    return sorted((state / "trust").iterdir())


def stamps(keyring: Path) -> dict:
    return {path.name: path.stat().st_mtime_ns for path in keyring.iterdir()}


def test_the_keyring_is_built_once_and_again_when_the_keys_change(keys, tree, tmp_path,
                                                                 monkeypatch):
    state, trusted = tmp_path / "state", tmp_path / "trusted.asc"
    alice, carol = tree.commit(keys.alice), tree.commit(keys.carol)
    alice_ssh = tree.commit(keys.alice_ssh)
    trusted.write_text(keys.file("alice").read_text())
    rules = policy(keys, "head", gpg=trusted)
    check(tree.path, alice, rules, None, state)
    [first] = keyrings(state)
    assert first.stat().st_mode & 0o777 == 0o700
    built = stamps(first)
    with monkeypatch.context() as without_gpg:  # a second build would need gpg
        tools = tmp_path / "bin"
        tools.mkdir()
        for tool in ("git", "ssh-keygen"):
            (tools / tool).symlink_to(shutil.which(tool))
        without_gpg.setenv("PATH", str(tools))
        check(tree.path, alice_ssh, rules, None, state)
    assert keyrings(state) == [first] and stamps(first) == built
    trusted.write_text(keys.file("carol").read_text())
    assert check(tree.path, carol, rules, None, state) == keys.carol.signature
    assert len(keyrings(state)) == 2
    assert "which is not trusted" in refused(tree.path, alice, rules, tmp_path)


def test_no_gpg_agent_is_left_running(keys, tree, tmp_path):
    revision = tree.commit(keys.alice)
    # A short path: under a long one an agent could not start at all (its socket path).
    state = Path(tempfile.mkdtemp(prefix="gat-"))
    try:
        check(tree.path, revision, policy(keys, "head"), None, state)
    finally:
        shutil.rmtree(state)
    trust = str(state / "trust").encode()  # the keyring, or its temporary name
    commands = [path.read_bytes() for path in Path("/proc").glob("[0-9]*/cmdline")
                if path.exists()]
    assert not [c for c in commands if b"gpg-agent" in c and trust in c]


def test_a_key_without_ownertrust_is_not_trusted(keys, tree, tmp_path):
    """A key that reached the private keyring otherwise (git's %G? U), on a commit and a
    tag."""
    trusted = tree.commit(keys.alice)
    check(tree.path, trusted, policy(keys, "head"), None, tmp_path / "state")
    [keyring] = keyrings(tmp_path / "state")
    subprocess.run(["gpg", "--batch", "--no-autostart", "--homedir", str(keyring), "--import",
                    str(keys.file("mallory"))], capture_output=True)  # exit code: see below
    revision = tree.commit(keys.mallory)
    tree.tag("v1", keys.mallory)
    found = f"signed by openpgp key {keys.mallory.fingerprint} which is not trusted"
    assert refused(tree.path, revision, policy(keys, "head"), tmp_path) == \
        f"commit {revision[:12]}: {found} (verify = head)"
    assert refused(tree.path, revision, policy(keys, "tag"), tmp_path) == \
        f"no signed tag points at commit {revision[:12]}: tag v1: {found} (verify = tag)"


def test_a_deep_state_directory_works(keys, tree, tmp_path):
    """gpg --import exits 2 where the agent's socket path would pass 108 characters."""
    state = tmp_path / ("deep" * 20) / "state"
    assert len(str(state / "trust" / "gnupg-0123456789abcdef" / "S.gpg-agent")) > 108
    revision = tree.commit(keys.alice)
    assert check(tree.path, revision, policy(keys, "head"), None, state) == keys.alice.signature


def test_a_directory_of_keys_trusts_its_asc_files(keys, tree, tmp_path):
    folder = tmp_path / "trusted"
    folder.mkdir()
    for name in ("alice", "carol"):
        shutil.copy(keys.file(name), folder / f"{name}.asc")
    shutil.copy(keys.file("mallory"), folder / "mallory.txt")
    rules = policy(keys, "head", gpg=folder)
    for key in (keys.alice, keys.carol):
        assert check(tree.path, tree.commit(key), rules, None, tmp_path / "state") == \
            key.signature
    assert "not trusted" in refused(tree.path, tree.commit(keys.mallory), rules, tmp_path)


def test_processes_building_the_keyring_at_once_share_it(keys, tree, tmp_path):
    revision = tree.commit(keys.alice)
    results = []

    def verify():
        results.append(check(tree.path, revision, policy(keys, "head"), None,
                             tmp_path / "state"))

    threads = [threading.Thread(target=verify) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [keys.alice.signature] * 4
    assert [path.name.startswith("gnupg-") for path in keyrings(tmp_path / "state")] == [True]


def test_a_key_file_gpg_cannot_import_is_the_settings_fault(keys, tree, tmp_path):
    broken = tmp_path / "broken.asc"
    broken.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbm90IGEga2V5\n"
                      "-----END PGP PUBLIC KEY BLOCK-----\n")
    rules = policy(keys, "head", gpg=broken)
    with pytest.raises(config.ConfigError) as error:
        rules.prepare(tmp_path / "state")
    assert error.value.key == "trusted_gpg_keys"
    assert "broken.asc: gpg --import: gpg: " in str(error.value)
    assert "keybox" not in str(error.value)
    message = refused(tree.path, tree.commit(keys.alice), rules, tmp_path)
    assert message.startswith(f"trusted_gpg_keys {broken}: gpg --import: ")


def test_a_file_that_is_no_armored_key_is_refused_by_name(tmp_path):
    garbage = tmp_path / "garbage.asc"
    garbage.write_text("not a key\n")
    with pytest.raises(config.ConfigError) as error:
        Policy.of(make_settings(verify="head", trusted_gpg_keys=str(garbage)))
    assert error.value.key == "trusted_gpg_keys"
    assert "not an armored OpenPGP public key" in str(error.value)


def test_without_openpgp_keys_the_users_keyring_is_not_used(keys, tree, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("GNUPGHOME", str(keys.home))  # where Alice's key is trusted
    revision = tree.commit(keys.alice)
    rules = Policy("head", ssh_signers=keys.allowed_signers)
    assert "which is not trusted" in refused(tree.path, revision, rules, tmp_path)


# -- Policy.of -------------------------------------------------------------------------
def test_policy_of_settings(keys, tmp_path, monkeypatch):
    monkeypatch.chdir(keys.root)
    rules = Policy.of(make_settings(verify="strict", trusted_gpg_keys="alice.asc",
                                    trusted_ssh_signers=str(keys.allowed_signers),
                                    seal_trailer="Key-Rotation"))
    assert rules == Policy("strict", keys.file("alice"), keys.allowed_signers, "Key-Rotation")
    assert rules.active and not Policy.of(make_settings()).active


def test_a_policy_without_keys_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('verify = "head"\n')
    with pytest.raises(config.ConfigError) as error:
        Policy.of(config.load(config_path=str(path)))
    assert str(error.value) == (f"{path}: key 'verify': expected trusted_gpg_keys or "
                                f"trusted_ssh_signers set as well (the keys a revision must "
                                f"be signed with), got 'head'")


@pytest.mark.parametrize("key, make, why", [
    ("trusted_gpg_keys", None, "No such file or directory"),
    ("trusted_ssh_signers", None, "No such file or directory"),
    ("trusted_gpg_keys", Path.mkdir, "no *.asc file in this directory"),
    ("trusted_ssh_signers", Path.mkdir, "Is a directory"),
])
def test_a_key_path_that_cannot_be_read_is_refused(tmp_path, key, make, why):
    path = tmp_path / "keys"
    if make:
        make(path)
    with pytest.raises(config.ConfigError) as error:
        Policy.of(make_settings(verify="head", **{key: str(path)}))
    assert error.value.key == key
    assert f"key '{key}'" in str(error.value) and f"/keys: {why}" in str(error.value)


def test_keys_are_not_read_without_a_policy(tmp_path):
    settings = make_settings(trusted_gpg_keys=str(tmp_path / "missing.asc"))
    assert not Policy.of(settings).active


@pytest.mark.parametrize("trailer", ["GitOps Seal", "Seal:", "seal,valueonly", ""])
def test_a_seal_trailer_must_be_a_trailer_name(keys, trailer):
    with pytest.raises(config.ConfigError) as error:
        Policy.of(make_settings(verify="strict", trusted_gpg_keys=str(keys.file("alice")),
                                seal_trailer=trailer))
    assert error.value.key == "seal_trailer" and "letters, digits and '-'" in str(error.value)
