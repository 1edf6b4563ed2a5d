"""Change-scoped runs as Git shapes them (issue 15, docs/scope.md): which targets a commit
puts in the scope, and where each target is recorded afterwards.

The targets are the two `local` targets of tests.conftest.local_estate, alpha and beta
(the controller itself, writing `hello NAME` into a temporary directory): seconds per run,
no SSH hosts. What is asserted is what a user reads: the scope of the `cycle_result` event
of `run --json`, the targets of `status --json`, the scope of `history --json RUN`, and the
files the targets wrote. The Git side is what is tested here: which paths a commit touches,
history rewritten and collected, uncommitted changes, a base named on the command line.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gitops_ansible.report import ExitCode
from lab.gitserver import git
from tests.conftest import events, local_estate

pytestmark = pytest.mark.git

GREETING = "roles/greet/tasks/main.yml"
ALPHA_VARS = "inventories/dev/host_vars/alpha.yml"
BETA_VARS = "inventories/dev/host_vars/beta.yml"
GROUP_VARS = "inventories/dev/group_vars/controllers.yml"
ROLE_REASON = f"{GREETING}: play 'Local targets' (playbooks/local.yml) applies role greet"


@pytest.fixture
def estate(git_servers, tmp_path, request):
    """A served repository holding the base example with two local targets."""
    return local_estate(git_servers, tmp_path, request.node.name)


@pytest.fixture
def url(estate, git_servers):
    return git_servers.url(estate.name, "file")


def cycle(cli, command: str, *flags, code: ExitCode) -> dict:
    """`COMMAND --json` of dev: its cycle_result event, with the hosts Ansible ran on
    (``ran``: their host_result events)."""
    found = events(cli(command, "--env", "dev", "--json", *flags, check_code=int(code)))
    [result] = [e for e in found if e["event"] == "cycle_result"]
    result["ran"] = sorted(e["host"] for e in found if e["event"] == "host_result")
    return result


def run(cli, url: str, *flags, code: ExitCode) -> dict:
    return cycle(cli, "run", "--repo", url, *flags, code=code)


def targets(cli) -> dict[str, tuple[str | None, bool]]:
    """`status --json`'s targets of dev: {host: (clean revision, failed since)}."""
    [env] = json.loads(cli("status", "--json", "--env", "dev", check_code=0).stdout)
    return {h: (r["revision"], r["failed"]) for h, r in env["hosts"].items()}


def greeting(estate, host: str) -> str:
    return (estate.out / f"{host}.txt").read_text()


def test_role_change_scopes_every_target_host_vars_one(cli, estate, url):
    run(cli, url, code=ExitCode.CHANGED)
    role = Path(estate.path, GREETING)
    role.write_text(role.read_text().replace('"hello {{', '"hi {{'))
    changed_role = estate.commit("greet: hi")
    result = run(cli, url, code=ExitCode.CHANGED)
    # every target applies the role: both in the scope, with the play that applies it
    assert result["scope"] == {"full": "every target is affected", "unchanged": [], "left": [],
                               "hosts": {"alpha": ROLE_REASON, "beta": ROLE_REASON}}
    assert result["ran"] == ["alpha", "beta"]
    assert greeting(estate, "alpha") == greeting(estate, "beta") == "hi world\n"
    assert targets(cli) == {"alpha": (changed_role, False), "beta": (changed_role, False)}

    estate.write(ALPHA_VARS, "---\ngreet_name: alpha\n")
    alpha_only = estate.commit("alpha gets its own greeting")
    before = (estate.out / "beta.txt").stat().st_mtime_ns
    result = run(cli, url, code=ExitCode.CHANGED)
    assert result["scope"] == {"full": None, "hosts": {"alpha": ALPHA_VARS},
                               "unchanged": ["beta"], "left": []}
    assert result["ran"] == ["alpha"]
    assert "1 other target unaffected by the revision" in result["message"]
    assert greeting(estate, "alpha") == "hi alpha\n"
    assert (estate.out / "beta.txt").stat().st_mtime_ns == before
    # beta did not run, yet it is at the new revision: nothing it depends on changed
    assert targets(cli) == {"alpha": (alpha_only, False), "beta": (alpha_only, False)}
    record = json.loads(cli("history", "--json", result["run_id"], check_code=0).stdout)
    assert record["scope"] == result["scope"]
    assert record["revision"] == alpha_only


def test_commit_to_readme_runs_nothing_and_moves_every_target(cli, estate, url):
    run(cli, url, code=ExitCode.CHANGED)
    written = {h: (estate.out / f"{h}.txt").stat().st_mtime_ns for h in ("alpha", "beta")}
    estate.write("README.md", "# The estate\n\nNow with a README.\n")
    readme = estate.commit("a README")
    result = run(cli, url, code=ExitCode.OK)
    assert result["scope"] == {"full": None, "hosts": {}, "unchanged": ["alpha", "beta"],
                               "left": []}
    assert result["ran"] == [] and result["status"] == "unchanged"
    assert f"revision {readme[:12]} affects none of the 2 targets" in result["message"]
    assert {h: (estate.out / f"{h}.txt").stat().st_mtime_ns for h in written} == written
    [env] = json.loads(cli("status", "--json", "--env", "dev", check_code=0).stdout)
    assert env["applied_revision"] == readme == env["good_revision"]
    assert {h: r["revision"] for h, r in env["hosts"].items()} == {"alpha": readme,
                                                                  "beta": readme}


def test_force_push_past_a_collected_revision_is_a_full_run(cli, estate, url, tmp_path):
    run(cli, url, code=ExitCode.CHANGED)
    old = estate.revision
    # a new history whose tree differs from the old one in alpha's variables only
    git("checkout", "-q", "--orphan", "rewritten", cwd=estate.path)
    estate.write(ALPHA_VARS, "---\ngreet_name: rewritten\n")
    git("add", "-A", cwd=estate.path)
    git("commit", "-qm", "history rewritten", cwd=estate.path)
    git("push", "-qf", "origin", "rewritten:main", cwd=estate.path)
    new = git("rev-parse", "HEAD", cwd=estate.path)
    mirror = tmp_path / "state/work/dev/mirror.git"
    # the controller fetched the new history, and git collected the old one
    git("fetch", "-q", url, "+main:refs/gitops/target", cwd=mirror)
    git("reflog", "expire", "--expire=now", "--all", cwd=mirror)
    git("gc", "-q", "--prune=now", cwd=mirror)
    gone = subprocess.run(["git", "-C", str(mirror), "cat-file", "-e", f"{old}^{{commit}}"],
                          capture_output=True)
    assert gone.returncode != 0, "the old revision is still in the mirror"
    (estate.out / "beta.txt").unlink()  # a full run writes it again; a scoped one would not
    result = run(cli, url, code=ExitCode.CHANGED)
    why = f"its revision {old[:12]} is not in the repository"
    assert result["scope"] == {"full": why, "hosts": {"alpha": why, "beta": why},
                               "unchanged": [], "left": []}
    assert result["ran"] == ["alpha", "beta"] and result["revision"] == new
    assert greeting(estate, "alpha") == "hello rewritten\n"
    assert greeting(estate, "beta") == "hello world\n"
    assert targets(cli) == {"alpha": (new, False), "beta": (new, False)}


def test_failed_target_stays_in_scope_until_clean(cli, estate, url):
    first = run(cli, url, code=ExitCode.CHANGED)["revision"]
    # beta's greeting goes to a directory that does not exist: its copy task fails
    estate.write(BETA_VARS, f"---\ngreet_dir: {estate.out}/missing/dir\n")
    estate.commit("beta writes where it cannot")
    broken = run(cli, url, code=ExitCode.FAILED)
    assert broken["scope"]["hosts"] == {"beta": BETA_VARS}
    assert broken["hosts"] == {"beta": "failed"}
    assert targets(cli) == {"alpha": (broken["revision"], False), "beta": (first, True)}

    estate.write(ALPHA_VARS, "---\ngreet_name: alpha\n")
    estate.commit("alpha gets its own greeting")
    again = run(cli, url, code=ExitCode.FAILED)
    # the commit concerns alpha alone; beta is not clean, so it runs again
    assert again["scope"] == {"full": "every target is affected", "left": [], "unchanged": [],
                              "hosts": {"alpha": ALPHA_VARS,
                                        "beta": f"not clean since run {broken['run_id']}"}}
    assert again["hosts"] == {"alpha": "changed", "beta": "failed"}
    assert targets(cli) == {"alpha": (again["revision"], False), "beta": (first, True)}

    estate.write(BETA_VARS, "---\ngreet_name: beta\n")
    fixed = estate.commit("beta writes where alpha does")
    result = run(cli, url, code=ExitCode.CHANGED)
    assert result["scope"]["hosts"] == {"beta": f"not clean since run {again['run_id']}"}
    assert result["scope"]["unchanged"] == ["alpha"] and result["ran"] == ["beta"]
    assert greeting(estate, "beta") == "hello beta\n"
    assert targets(cli) == {"alpha": (fixed, False), "beta": (fixed, False)}


def test_plan_base_compares_every_target_with_it(cli, estate, url):
    base = estate.revision
    estate.write(ALPHA_VARS, "---\ngreet_name: alpha\n")
    estate.commit("alpha gets its own greeting")
    git("tag", "reviewed", base, cwd=estate.path)
    result = cycle(cli, "plan", "--path", estate.path, "--base", "reviewed",
                   code=ExitCode.CHANGED)
    # nothing is recorded for either target: without --base, both would be planned
    assert result["scope"] == {"full": None, "hosts": {"alpha": ALPHA_VARS},
                               "unchanged": ["beta"], "left": []}
    assert result["hosts"] == {"alpha": "changed"}
    assert list(estate.out.iterdir()) == []
    assert targets(cli) == {}
    pulled = cli("plan", "--repo", url, "--env", "dev", "--base", "no-such-ref",
                 check_code=int(ExitCode.REFUSED))
    assert "--base no-such-ref: " in pulled.stderr
    assert "couldn't find remote ref no-such-ref" in pulled.stderr
    refused = cli("plan", "--path", estate.path, "--env", "dev", "--base", "no-such-ref",
                  check_code=int(ExitCode.REFUSED))
    # the message says what was not found, and where
    assert "--base no-such-ref: " in refused.stderr
    assert "not found" in refused.stderr and str(estate.path) in refused.stderr, refused.stderr
    assert list(estate.out.iterdir()) == []


def test_scope_full_and_force_converge_every_target(cli, estate, url):
    run(cli, url, code=ExitCode.CHANGED)
    estate.write(ALPHA_VARS, "---\ngreet_name: alpha\n")
    estate.commit("alpha gets its own greeting")
    (estate.out / "beta.txt").unlink()  # only a run on beta writes it again
    result = run(cli, url, "--scope", "full", code=ExitCode.CHANGED)
    assert result["scope"] == {"full": "scope = full", "hosts": {}, "unchanged": [],
                               "left": []}
    assert result["ran"] == ["alpha", "beta"]
    assert greeting(estate, "alpha") == "hello alpha\n"
    assert greeting(estate, "beta") == "hello world\n"
    (estate.out / "alpha.txt").unlink()
    forced = run(cli, url, "--force", code=ExitCode.CHANGED)
    assert forced["scope"]["full"] == "--force" and forced["ran"] == ["alpha", "beta"]
    assert greeting(estate, "alpha") == "hello alpha\n"
    revision = forced["revision"]
    assert targets(cli) == {"alpha": (revision, False), "beta": (revision, False)}


def test_push_of_uncommitted_changes_records_no_clean_revision(cli, estate):
    def push(code: ExitCode) -> dict:
        return cycle(cli, "push", "--path", estate.path, code=code)

    push(ExitCode.CHANGED)
    assert targets(cli) == {"alpha": (estate.revision, False), "beta": (estate.revision, False)}
    group = Path(estate.path, GROUP_VARS)
    committed_vars = group.read_text()
    group.write_text(committed_vars + "greet_name: uncommitted\n")
    dirty = push(ExitCode.CHANGED)
    assert dirty["revision"] == f"{estate.revision}+dirty"
    assert dirty["scope"]["full"] == "the checkout has uncommitted changes"
    assert dirty["hosts"] == {"alpha": "changed", "beta": "changed"}
    assert greeting(estate, "alpha") == greeting(estate, "beta") == "hello uncommitted\n"
    # what ran is no commit: neither target is at a clean revision any more
    assert targets(cli) == {"alpha": (None, False), "beta": (None, False)}

    group.write_text(committed_vars + "greet_name: committed\n")
    committed = estate.commit("the controllers greet as committed")
    clean = push(ExitCode.CHANGED)
    why = "no clean revision recorded for it"
    assert clean["scope"] == {"full": "every target is affected", "unchanged": [], "left": [],
                              "hosts": {"alpha": why, "beta": why}}
    assert clean["hosts"] == {"alpha": "changed", "beta": "changed"}
    assert greeting(estate, "alpha") == greeting(estate, "beta") == "hello committed\n"
    assert targets(cli) == {"alpha": (committed, False), "beta": (committed, False)}
