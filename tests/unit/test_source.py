"""Git: only the file, git, ssh and https transports, whatever the user's git config says."""
import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from gitops_ansible import source
from tests.conftest import make_settings, require

EXT_CONFIG = ["config", "--global", "protocol.ext.allow", "always"]


@pytest.mark.parametrize("url, transport", [
    ("file:///srv/estate.git", "file"), ("/srv/estate.git", "file"), ("estate", "file"),
    ("./odd:name.git", "file"), ("git://git.example.com/estate.git", "git"),
    ("ssh://git@git.example.com/estate.git", "ssh"), ("git+ssh://host/estate", "ssh"),
    ("git@git.example.com:estate.git", "ssh"), ("host:estate.git", "ssh"),
    ("https://git.example.com/estate.git", "https"), ("http://git.example.com/e.git", "http"),
    ("ext::sh -c touch% /tmp/x", "ext"), ("fd::3", "fd"), ("ftp://host/e.git", "ftp"),
    ("persistent-https::https://host/e.git", "persistent-https"),
])
def test_transport_is_the_one_git_would_use(url, transport):
    assert source.transport(url) == transport


@pytest.mark.parametrize("url", ["ext::sh -c touch% /tmp/x", "fd::3", "http://host/e.git",
                                 "ftp://host/e.git", "HTTPS://host/e.git", "", "  ", None])
def test_other_transports_are_refused_with_what_is_allowed(url):
    with pytest.raises(source.RefusedRepo) as refused:
        source.check_repo(url)
    assert "expected a file://, git://, ssh:// or https:// URL" in str(refused.value)
    assert refused.value.expected == source.REPO_EXPECTED


def test_refusal_does_not_show_a_password():
    with pytest.raises(source.RefusedRepo) as refused:
        source.check_repo("http://user:hunter22@host/e.git")
    assert "hunter22" not in str(refused.value) and "transport 'http'" in str(refused.value)


def git_home(tmp_path, monkeypatch):
    """A HOME whose git config allows the ext transport, as a careless user's might."""
    require(shutil.which("git") is not None, "git is not installed")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    subprocess.run(["git", *EXT_CONFIG], check=True)
    return home


def test_git_env_overrides_a_config_that_allows_ext(tmp_path, monkeypatch):
    git_home(tmp_path, monkeypatch)
    marker = tmp_path / "ran"
    url = f"ext::sh -c touch% {marker}"
    # Without the tool's environment this user's git runs the command ...
    subprocess.run(["git", "ls-remote", url], capture_output=True, timeout=30)
    assert marker.exists(), "the ext transport did not run: the check below proves nothing"
    marker.unlink()
    # ... with it, git refuses the transport.
    env = source.git_env(make_settings(state_dir=str(tmp_path / "state")))
    done = subprocess.run(["git", "ls-remote", url], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode != 0 and "transport 'ext' not allowed" in done.stderr
    assert not marker.exists()


def test_resolve_refuses_ext_before_git_runs(tmp_path, monkeypatch):
    git_home(tmp_path, monkeypatch)
    marker = tmp_path / "ran"
    settings = make_settings(repo="file:///srv/estate.git", env="dev",
                             state_dir=str(tmp_path / "state"))
    # as if the settings had not checked the URL: resolve and fetch are the last line
    object.__setattr__(settings, "repo", f"ext::sh -c touch% {marker}")
    with pytest.raises(source.RefusedRepo, match="transport 'ext' is not allowed"):
        source.resolve(settings)
    with pytest.raises(source.RefusedRepo):
        source.fetch(settings, "0" * 40)
    assert not marker.exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize("env", ["../../etc", "/abs/dir", "a" * 300])
def test_env_dir_never_becomes_a_path_outside_the_work_dir(tmp_path, env):
    settings = SimpleNamespace(work_path=tmp_path / "work", env=env)  # not checked before
    with pytest.raises(source.SourceError, match="expected an environment name"):
        source.env_dir(settings)


def test_local_revision_does_not_write_the_users_index(tmp_path):
    require(shutil.which("git") is not None, "git is not installed")
    repo = tmp_path / "repo"

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                               "user.email=t@example.com", *args], check=True,
                              capture_output=True, text=True)

    def stale_index():
        os.utime(repo / "site.yml", (1, 1))  # same content, other stat data
        return (repo / ".git" / "index").stat().st_mtime_ns

    repo.mkdir()
    git("init", "-q")
    (repo / "site.yml").write_text("---\n")
    git("add", "site.yml")
    git("commit", "-qm", "one")
    before = stale_index()
    git("status", "--porcelain")
    assert (repo / ".git" / "index").stat().st_mtime_ns != before, \
        "plain git status did not refresh the index: the check below proves nothing"
    before = stale_index()
    assert source.local_revision(repo) == git("rev-parse", "HEAD").stdout.strip()
    assert (repo / ".git" / "index").stat().st_mtime_ns == before


def test_a_fetch_removes_what_an_interrupted_fetch_left(tmp_path, monkeypatch):
    require(shutil.which("git") is not None, "git is not installed")
    git_home(tmp_path, monkeypatch)
    origin = tmp_path / "origin"
    subprocess.run(["git", "init", "-q", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "-C", str(origin), "-c", "user.email=t@example.invalid", "-c",
                    "user.name=t", "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    settings = make_settings(repo=f"file://{origin}", ref="main", env="dev",
                             state_dir=str(tmp_path / "state"))
    revision = source.resolve(settings)
    assert source.fetch(settings, revision) == revision
    pack = source.mirror_path(settings) / "objects" / "pack"
    leftovers = [pack / "tmp_pack_a1B2c3", pack / "tmp_idx_d4E5f6"]
    for path in leftovers:  # what git leaves when it is killed mid-fetch
        path.write_bytes(b"\0" * 4096)
    quarantine = source.mirror_path(settings) / "objects" / "tmp_objdir-incoming-x1"
    quarantine.mkdir()
    (quarantine / "pack").mkdir()
    assert source.fetch(settings, revision) == revision
    assert not any(path.exists() for path in leftovers) and not quarantine.exists()
    assert source._has_commit(source.mirror_path(settings), revision), "the objects stay"
