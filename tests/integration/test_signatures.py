"""The signature policy as a user meets it: pull cycles, push and the agent against a real
Git server, with commits and tags signed by gpg and by SSH keys (git's gpg.format ssh).

Someone holding a leaked Git token pushes unsigned commits, or commits signed by a key of
their own: those are applied nowhere. The targets are `local` targets (tests/conftest.py
local_estate) that write `hello NAME` into files: the files are what a user checks.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lab.gitserver import git
from lab.recorder import Recorder
from tests.conftest import local_estate
from tests.integration.test_agent import agents, greeting, runs, source  # noqa: F401
from tests.unit.test_verify import Key, Keys, keys  # noqa: F401 (the tests' signing keys)

pytestmark = pytest.mark.git


# -- signing in the estate's work tree -------------------------------------------------
def git_in(estate, keys: Keys, *args: str) -> str:
    """git in the work tree, with the GnuPG home that holds the tests' secret keys."""
    return git(*args, cwd=estate.path, env=dict(os.environ, GNUPGHOME=str(keys.home)))


def commit(estate, keys: Keys, key: Key | None, message: str, *trailers: str,
           greet: str | None = None, push: bool = True) -> str:
    """A commit (signed by ``key``, or unsigned), greeting ``greet`` on beta; pushed."""
    if greet:
        estate.write("inventories/dev/host_vars/beta.yml", f"---\ngreet_name: {greet}\n")
    git_in(estate, keys, "add", "-A")
    signing = [*key.config, "commit", "-S"] if key else ["commit", "--no-gpg-sign"]
    git_in(estate, keys, *signing, "-q", "--allow-empty", "-m", message,
           *[f"--trailer={trailer}" for trailer in trailers])
    if push:
        git_in(estate, keys, "push", "-q", "origin", "HEAD:main")
    return git_in(estate, keys, "rev-parse", "HEAD")


def sign_root(estate, keys: Keys, key: Key) -> str:
    """The estate's one (unsigned) commit, signed again and force-pushed: a history that
    is signed to the root, as strict wants without a seal."""
    git_in(estate, keys, *key.config, "commit", "-q", "--amend", "-S", "--no-edit")
    git_in(estate, keys, "push", "-q", "-f", "origin", "HEAD:main")
    estate.revision = git_in(estate, keys, "rev-parse", "HEAD")
    return estate.revision


def trust(tmp_path: Path, keys: Keys, gpg=("alice",), ssh=("alice",)) -> list:
    """The trusted keys, outside the repository: a directory of *.asc files and an
    allowed_signers file (written again on each call: a key removed is gone)."""
    folder, signers = tmp_path / "trusted", tmp_path / "allowed_signers"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name in gpg:
        shutil.copy(keys.file(name), folder / f"{name}.asc")
    signers.write_text("".join(f"{name}@example.com {keys.public_ssh(name)}\n" for name in ssh))
    return [*(["--trusted-gpg-keys", folder] if gpg else []),
            *(["--trusted-ssh-signers", signers] if ssh else [])]


# -- what a user checks ----------------------------------------------------------------
def status(cli) -> dict:
    [state] = json.loads(cli("status", "--env", "dev", "--json", check_code=0).stdout)
    return state


def checkouts(cli) -> Path:
    return cli.state_dir / "work/dev/checkouts"


def refused(cli, args, revision: str, mode: str, applied: str | None) -> str:
    """A cycle that must refuse ``revision`` (exit 5, nothing exported or run, the last
    verified revision ``applied`` still in use); returns its message."""
    done = cli(*args, check_code=5)
    message = done.stdout + done.stderr
    assert revision[:12] in message and f"(verify = {mode})" in message, message
    assert not (checkouts(cli) / revision).exists()
    state = status(cli)
    assert state["refused_revision"] == revision
    assert f"revision {revision[:12]} refused" in state["attention"]
    assert state["applied_revision"] == applied
    if applied:
        assert (cli.state_dir / "work/dev/current").resolve().name == applied
    return message


def converged(cli, args, revision: str, key: Key) -> dict:
    """A cycle that converges ``revision``, recording ``key`` as its signer; its run."""
    cli(*args, check_code=2)
    state = status(cli)
    assert state["applied_revision"] == revision
    assert key.fingerprint in state["applied_signer"]
    last = [r for r in runs(cli, "--env", "dev") if "action" not in r][0]
    assert last["revision"] == revision and key.fingerprint in last["signer"]
    return last


def pull(git_servers, estate, mode: str, trusted: list, *extra) -> tuple:
    return ("run", "--repo", git_servers.url(estate.name, "file"), "--env", "dev",
            "--verify", mode, *trusted, *extra)


@pytest.fixture
def estate(git_servers, tmp_path, request):
    return local_estate(git_servers, tmp_path, request.node.name)


# -- each mode -------------------------------------------------------------------------
@pytest.mark.parametrize("mode, kind", [("head", "openpgp"), ("head", "ssh"),
                                        ("tag", "openpgp"), ("tag-and-head", "ssh"),
                                        ("strict", "openpgp")])
def test_each_mode_applies_a_signed_revision(cli, estate, git_servers, keys, tmp_path, mode,
                                             kind):
    key = keys.alice if kind == "openpgp" else keys.alice_ssh
    if mode == "strict":
        sign_root(estate, keys, key)
    commit_key = None if mode == "tag" else key  # tag: the tag is what counts
    revision = commit(estate, keys, commit_key, "a signed greeting", greet="signed")
    if mode.startswith("tag"):
        git_in(estate, keys, *key.config, "tag", "-s", "-m", "release 1", "v1")
        git_in(estate, keys, "push", "-q", "origin", "v1")
    run = converged(cli, pull(git_servers, estate, mode, trust(tmp_path, keys)), revision, key)
    assert greeting(estate) == "hello signed\n" and greeting(estate, "alpha") == "hello world\n"
    table = cli("history", "--env", "dev", check_code=0).stdout
    shown = key.fingerprint[-16:] if kind == "openpgp" else key.fingerprint[:19]
    assert f"{kind} {shown}" in table
    assert f"{kind} {shown}" in cli("status", "--env", "dev", check_code=0).stdout
    assert run["verify"] == mode


# -- a leaked Git token ----------------------------------------------------------------
def test_unsigned_and_unknown_key_commits_on_top_are_applied_nowhere(cli, estate, git_servers,
                                                                    keys, tmp_path):
    args = pull(git_servers, estate, "head", trust(tmp_path, keys))
    good = commit(estate, keys, keys.alice, "a signed greeting", greet="signed")
    converged(cli, args, good, keys.alice)
    written = (estate.out / "beta.txt").stat().st_mtime_ns

    unsigned = commit(estate, keys, None, "pushed with a leaked token", greet="leaked")
    message = refused(cli, args, unsigned, "head", good)
    assert f"commit {unsigned[:12]}: unsigned (verify = head)" in message
    forced = refused(cli, (*args, "--force"), unsigned, "head", good)
    assert f"commit {unsigned[:12]}: unsigned" in forced

    for key, found in ((keys.mallory, f"signed by openpgp key {keys.mallory.key_id} which is "
                                      "not trusted"),
                       (keys.mallory_ssh, f"signed by ssh key {keys.mallory_ssh.fingerprint} "
                                          "which is not in trusted_ssh_signers")):
        foreign = commit(estate, keys, key, "signed by a key of their own", greet="mallory")
        message = refused(cli, args, foreign, "head", good)
        assert f"commit {foreign[:12]}: {found}" in message
        refused(cli, (*args, "--force"), foreign, "head", good)

    assert greeting(estate) == "hello signed\n"
    assert (estate.out / "beta.txt").stat().st_mtime_ns == written
    assert sorted(p.name for p in checkouts(cli).iterdir()) == [good]

    # Mallory's key becomes trusted: the refused revision is checked again when forced.
    trust(tmp_path, keys, ssh=("alice", "mallory"))  # the files the runs read
    cli(*args, check_code=5)  # refused stays refused...
    converged(cli, (*args, "--force"), foreign, keys.mallory_ssh)  # ...until --force
    assert greeting(estate) == "hello mallory\n"
    history = [r for r in runs(cli, "--env", "dev") if "action" not in r]
    assert [r["status"] for r in history] == ["changed"] + ["refused"] * 6 + ["changed"]
    assert all(r["signer"] is None and r["verify"] == "head" for r in history[1:7])


# -- strict ----------------------------------------------------------------------------
def test_strict_refuses_a_gap_in_the_range_and_a_seal_rotates_the_key(cli, estate, git_servers,
                                                                      keys, tmp_path):
    """Alice's OpenPGP key signs, then Carol's replaces it, starting with a seal."""
    args = pull(git_servers, estate, "strict", trust(tmp_path, keys, ssh=()))
    sign_root(estate, keys, keys.alice)
    base = commit(estate, keys, keys.alice, "first", greet="first")
    converged(cli, args, base, keys.alice)

    commit(estate, keys, keys.alice, "signed", greet="a", push=False)
    gap = commit(estate, keys, None, "unsigned in the middle", greet="b", push=False)
    tip = commit(estate, keys, keys.alice, "signed again", greet="c")
    message = refused(cli, args, tip, "strict", base)
    assert (f"commit {gap[:12]} (between base {base[:12]} and the new revision {tip[:12]}): "
            f"unsigned (verify = strict)") in message
    assert greeting(estate) == "hello first\n"

    trust(tmp_path, keys, gpg=("carol",), ssh=())  # Alice's key leaves, Carol's comes
    takeover = commit(estate, keys, keys.carol, "carol takes over")
    message = refused(cli, args, takeover, "strict", base)
    assert (f"commit {tip[:12]} (between base {base[:12]} and the new revision "
            f"{takeover[:12]}): signed by openpgp key {keys.alice.key_id} which is not "
            f"trusted") in message, "without a seal, the range behind is checked"
    seal = commit(estate, keys, keys.carol, "rotate to Carol's key", "GitOps-Seal: rotate")
    converged(cli, args, seal, keys.carol)
    assert greeting(estate) == "hello c\n"
    after = commit(estate, keys, keys.carol, "carol's first change", greet="carol")
    converged(cli, args, after, keys.carol)
    assert greeting(estate) == "hello carol\n"

    old = commit(estate, keys, keys.alice, "signed with the removed key", greet="old key")
    message = refused(cli, args, old, "strict", after)
    assert (f"commit {old[:12]} (the new revision): signed by openpgp key "
            f"{keys.alice.key_id} which is not trusted") in message
    assert greeting(estate) == "hello carol\n"


def test_strict_adopted_late_starts_at_a_seal(cli, estate, git_servers, keys, tmp_path):
    """Unsigned history, strict from the first run; the seal trailer is one of our own."""
    args = pull(git_servers, estate, "strict", trust(tmp_path, keys, gpg=()),
                "--seal-trailer", "Signing-Starts")
    unsigned = commit(estate, keys, None, "more unsigned history", greet="unsigned")
    message = refused(cli, args, unsigned, "strict", None)
    assert (f"commit {unsigned[:12]} (the new revision): unsigned; 1 more commit in the "
            f"range fails too (verify = strict)") in message
    other = commit(estate, keys, keys.alice_ssh, "a seal by another name", "GitOps-Seal: adopt")
    message = refused(cli, args, other, "strict", None)
    assert f"commit {unsigned[:12]} (in the history of the new revision {other[:12]}, no " \
           f"base): unsigned" in message
    assert greeting(estate) == ""

    seal = commit(estate, keys, keys.alice_ssh, "Start signing", "Signing-Starts: adopt")
    converged(cli, args, seal, keys.alice_ssh)
    assert greeting(estate) == "hello unsigned\n"


def test_strict_refuses_a_force_push_back_and_the_fallback_is_verified_again(
        cli, estate, git_servers, keys, tmp_path):
    """Someone with the token force-pushes the branch back to an old signed commit; later
    Git is down and `run --force` falls back to the last good checkout."""
    args = pull(git_servers, estate, "strict", trust(tmp_path, keys, ssh=()))
    sign_root(estate, keys, keys.alice)
    old = commit(estate, keys, keys.alice, "old", greet="old")
    converged(cli, args, old, keys.alice)
    new = commit(estate, keys, keys.alice, "new", greet="new")
    converged(cli, args, new, keys.alice)
    git_in(estate, keys, "push", "-q", "-f", "origin", f"{old}:main")
    done = cli(*args, check_code=5)  # (its checkout is there: it was applied before)
    assert f"commit {old[:12]} is behind the last verified revision {new[:12]}" in \
        done.stdout + done.stderr
    assert status(cli)["applied_revision"] == new
    assert greeting(estate) == "hello new\n"
    cli("rollback", "dev", "--to", old, "--reason", "the way back", "--repo", args[2],
        *args[5:], check_code=2)
    assert greeting(estate) == "hello old\n"

    cli("unpin", "dev", check_code=0)
    git_in(estate, keys, "push", "-q", "-f", "origin", f"{new}:main")
    converged(cli, args, new, keys.alice)
    trust(tmp_path, keys, gpg=("carol",), ssh=())  # Alice's key is no longer trusted
    broken = ("run", "--repo", "file:///nonexistent/estate.git", *args[3:], "--force")
    done = cli(*broken, check_code=5)
    assert f"commit {new[:12]}" in done.stdout + done.stderr
    assert "which is not trusted" in done.stdout + done.stderr


def test_a_key_file_gpg_cannot_read_is_a_settings_error(cli, estate, git_servers, keys,
                                                        tmp_path):
    bad = tmp_path / "bad.asc"
    bad.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbm90IGEga2V5\n"
                   "-----END PGP PUBLIC KEY BLOCK-----\n")
    done = cli(*pull(git_servers, estate, "head", ["--trusted-gpg-keys", bad]), check_code=5)
    assert "key 'trusted_gpg_keys'" in done.stderr + done.stdout
    assert "bad.asc: gpg --import" in done.stderr + done.stdout
    assert "converging" not in done.stderr + done.stdout  # refused before any run
    assert json.loads(cli("status", "--json", check_code=0).stdout) == []


# -- push ------------------------------------------------------------------------------
def test_push_verifies_the_checkout_head(cli, estate, keys, tmp_path):
    args = ("push", "--path", estate.path, "--env", "dev", "--verify", "head",
            *trust(tmp_path, keys))
    done = cli(*args, check_code=5)
    assert f"commit {estate.revision[:12]}: unsigned (verify = head)" in done.stdout + done.stderr
    assert greeting(estate) == "" and greeting(estate, "alpha") == ""
    assert status(cli)["applied_revision"] is None

    signed = commit(estate, keys, keys.alice_ssh, "a signed greeting", greet="pushed")
    cli(*args, check_code=2)
    assert greeting(estate) == "hello pushed\n"
    state = status(cli)
    assert state["applied_revision"] == signed
    assert keys.alice_ssh.fingerprint in state["applied_signer"]

    # Files git does not track are not what was signed: they do not run.
    estate.write("inventories/dev/host_vars/alpha.yml", "---\ngreet_name: untracked\n")
    (estate.path / ".git/info/exclude").write_text("inventories/dev/host_vars/alpha.yml\n")
    cli(*args, check_code=0)
    assert greeting(estate, "alpha") == "hello world\n"

    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: not committed\n")
    done = cli(*args, check_code=5)
    assert "uncommitted changes" in done.stdout + done.stderr
    assert greeting(estate) == "hello pushed\n"
    assert status(cli)["applied_revision"] == signed


# -- the agent -------------------------------------------------------------------------
def test_agent_refuses_an_unsigned_commit_once(agents, cli, estate, git_servers, keys,
                                               tmp_path):
    good = commit(estate, keys, keys.alice, "a signed greeting", greet="signed")
    token = tmp_path / "github-token"
    token.write_text("ghp-" + os.urandom(6).hex() + "\n")
    _, gpg_keys, _, ssh_signers = trust(tmp_path, keys)
    with Recorder() as api:
        status_api = {"kind": "github", "repository": "org/estate", "token_file": str(token),
                      "api_url": api.url("/api")}
        agent = agents(tmp_path, cli.state_dir,
                       [source(estate, git_servers, verify="head",
                               trusted_gpg_keys=str(gpg_keys),
                               trusted_ssh_signers=str(ssh_signers),
                               commit_status=status_api)],
                       agent={"alert_interval": 0},
                       notify=[{"kind": "webhook", "url": api.url("/hooks")}])
        agent.wait_for(lambda: agent.status()["applied_revision"] == good, 120,
                       "the signed commit's converge")
        assert greeting(estate) == "hello signed\n"
        # the converge ran in a child process; its result reaches the scheduler just after
        agent.wait_for(lambda: agent.status()["last"].get("revision") == good, 30,
                       "the converge's result")
        shown = agent.status()
        assert keys.alice.fingerprint in shown["applied_signer"] and shown["verify"] == "head"

        unsigned = commit(estate, keys, None, "pushed with a leaked token", greet="leaked")
        url = f"http://127.0.0.1:{agent.port}"
        for done in (1, 2, 3):
            cli("sync", "dev", "--agent", url, check_code=0)
            agent.wait_for(lambda: agent.metric("gitops_ansible_cycles_total", env="dev",
                                                result="refused") >= done, 60,
                           f"refused cycle {done}")
        assert agent.metric("gitops_ansible_unverified_revisions_total", env="dev") == 1.0
        alerts = [r["json"] for r in api.on("/hooks") if r["json"]["event"] == "refused"]
        assert len(alerts) == 1, alerts
        assert unsigned[:12] in alerts[0]["message"] and "unsigned" in alerts[0]["message"]
        assert "verify = head" in alerts[0]["message"]
        posted = [r["json"] for r in api.on(f"/api/repos/org/estate/statuses/{unsigned}")]
        assert posted and posted[-1]["state"] == "failure", posted
        assert "refused" in posted[-1]["description"]
        # never "converging" on the attacker's commit: one failure, nothing before it
        assert [r["state"] for r in posted] == ["failure"], posted
    assert greeting(estate) == "hello signed\n"
    state = status(cli)
    assert state["applied_revision"] == good and state["refused_revision"] == unsigned
    assert not (checkouts(cli) / unsigned).exists()
    run = json.loads(agent.get(f"/api/v1/runs/{shown['last']['run_id']}")[1])
    assert keys.alice.fingerprint in run["signer"] and run["verify"] == "head"
