"""Bad and hostile input, one data file per case in tests/cases/bad_input/NNN-name.yml.

Each case runs `python -m gitops_ansible` as a real process in a directory of its own and
passes when the exit code is the expected one, the output holds the expected words and
no "Traceback", nothing outside the places the tool may write changed, and the canary
target (a `local` host whose converge writes a file) was not touched.

A case file::

    description: what is wrong and what must happen
    argv: [push, --env, "../../etc", --path, "{repo}"]   # after `gitops-ansible`
    exit: 5
    expect: ["--env", "expected an environment name"]  # words stdout+stderr must contain
    repo:      # optional: changes to the case's repository (the base example with two
               # local targets, alpha and beta, committed): path -> text, !!binary bytes,
               # {symlink: target} or null (remove the file)
    files:     # optional: other files, relative to the case directory, same values
    environment: {GITOPS_ANSIBLE_CHECK: "perhaps"}     # optional: more variables
    no_stdout: true      # optional: nothing at all may be printed on stdout
    absent: ["{out}/*"]  # optional: globs that must match nothing afterwards
    unchanged: ["{state}/runs.db"]  # optional: files the tool may not rewrite
    written: {"{out}/x.service": ["words"]}  # optional: files that must hold these words
    pending: "who fixes it"  # optional: a known bug: expected to fail until the fix lands
    timeout: 30          # optional: seconds (default 30)

Placeholders in argv, file contents, link targets, environment values and paths:
{case} the case directory (also the working directory), {repo} the repository,
{repo_url} file://{repo}, {state} the state directory (GITOPS_ANSIBLE_STATE_DIR),
{out} an output directory for install-*, {home} HOME, {canary} the canary's directory,
{outside} a directory tree beside the case that nothing may change.

The tool may write only under {state}, {out} and {home}; everything else under
the test's directory (the case directory four levels deep, so that `../../..` lands in
what is watched, and {outside} beside it) is compared before and after the run.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CASES, copy_base, require

CASE_FILES = sorted((CASES / "bad_input").glob("*.yml"))
WRITABLE = ("state", "out", "home")
GIT_USER = ["-c", "user.name=corpus", "-c", "user.email=corpus@example.com"]
KEYS = {"description", "argv", "exit", "expect", "repo", "files", "environment", "no_stdout",
        "absent", "unchanged", "written", "pending", "timeout"}


def load_case(path: Path):
    """One case as a test parameter; a file that cannot be a case fails as its own test."""
    try:
        case = yaml.safe_load(path.read_text())
        unknown = set(case) - KEYS
        missing = {"description", "argv", "exit"} - set(case)
    except (yaml.YAMLError, TypeError) as exc:
        case, unknown, missing = {}, {f"(not a YAML mapping: {exc})"}, set()
    if unknown or missing:
        case = {"broken": f"{path.name}: unknown keys {sorted(unknown)}, missing {sorted(missing)}"}
    if case.get("pending"):
        return pytest.param(case, id=path.stem, marks=pytest.mark.xfail(
            strict=True, reason=f"pending: {case['pending']}"))
    return pytest.param(case, id=path.stem)


class Place:
    """The directories of one case."""

    def __init__(self, root: Path):
        self.root = root
        self.case = root / "a" / "b" / "c" / "case"
        self.outside = root / "outside"
        self.repo = self.case / "repo"
        self.canary = self.case / "canary"
        self.values = {"case": self.case, "repo": self.repo, "repo_url": f"file://{self.repo}",
                       "state": self.case / "state", "out": self.case / "out",
                       "home": self.case / "home", "canary": self.canary,
                       "outside": self.outside}

    def fill(self, text: str) -> str:
        for name, value in self.values.items():
            text = text.replace("{" + name + "}", str(value))
        return text

    def writable(self) -> list[Path]:
        return [self.case / name for name in WRITABLE]

    def unwatched(self) -> list[Path]:
        """Not in the snapshot: the tool's places, and the canary (checked on its own)."""
        return [*self.writable(), self.canary]


def write_tree(base: Path, tree: dict, place: Place) -> None:
    for relative, content in (tree or {}).items():
        target = base / place.fill(relative)
        if content is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            target.symlink_to(place.fill(content["symlink"]))
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(place.fill(content))


# a playbook outside the checkout: if it is ever imported, it converges the canary
EVIL_PLAYBOOK = """---
- name: From outside the checkout
  hosts: all
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Leave a mark
      ansible.builtin.copy:
        dest: "{canary}/{{ inventory_hostname }}-evil.txt"
        content: "ran\\n"
        mode: "0644"
"""


def make_outside(place: Place) -> None:
    """Files a hostile input would like to read or overwrite."""
    write_tree(place.outside, {"secret.yml": "---\nstolen: the controller's secret\n",
                               "etc/shadow": "root:$6$salt$hash:19000:0:99999:7:::\n",
                               # an inventory that converges the canary if it is followed
                               "inventories/dev/hosts.yml": "---\nall:\n  hosts:\n    intruder:\n"
                               "      platform: local\n      ansible_connection: local\n"
                               "      greet_dir: {canary}\n",
                               "playbooks/evil.yml": EVIL_PLAYBOOK,
                               "deep/er/still/.keep": ""}, place)


def make_repo(place: Place, changes: dict) -> None:
    """The base example with only the two local targets, their greetings going to the canary."""
    copy_base(place.repo)
    base = {"inventories/dev/hosts.yml": "---\nall:\n  children:\n    controllers:\n"
                                         "      hosts:\n        alpha:\n        beta:\n",
            "inventories/dev/group_vars/controllers.yml":
                "---\nplatform: local\nansible_connection: local\ngreet_dir: {canary}\n",
            "inventories/dev/group_vars/web.yml": None}
    write_tree(place.repo, base, place)
    write_tree(place.repo, changes, place)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], [*GIT_USER, "commit", "-qm", "c"],
                 ["status", "--porcelain"]):  # status last: a fresh index, nothing to refresh
        subprocess.run(["git", "-C", str(place.repo), *args], check=True, capture_output=True)


def prepare(place: Place, case: dict) -> None:
    make_outside(place)
    place.case.mkdir(parents=True)
    place.canary.mkdir()
    for path in place.writable():
        path.mkdir()
    make_repo(place, case.get("repo") or {})
    write_tree(place.case, case.get("files") or {}, place)


def snapshot(root: Path, skip: list[Path]) -> dict[str, tuple]:
    """Every entry under ``root`` but the ``skip`` trees: type, size, mtime, mode, link."""
    entries = {}
    for dirpath, dirs, files in os.walk(root):
        here = Path(dirpath)
        dirs[:] = [d for d in dirs if here / d not in skip]
        for name in dirs + files:
            path = here / name
            info = path.lstat()
            link = os.readlink(path) if path.is_symlink() else None
            entries[str(path.relative_to(root))] = (info.st_mode, info.st_size,
                                                    info.st_mtime_ns, link)
    return entries


def changes(before: dict, after: dict) -> list[str]:
    return ([f"added {p}" for p in sorted(set(after) - set(before))]
            + [f"removed {p}" for p in sorted(set(before) - set(after))]
            + [f"changed {p}" for p in sorted(set(before) & set(after))
               if before[p] != after[p]])


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def environment(place: Place, case: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITOPS_ANSIBLE_", "GIT_CONFIG"))}
    # TMPDIR stays: Ansible's local RPC socket would not fit a path this deep (108 bytes)
    env.update(HOME=str(place.values["home"]), GITOPS_ANSIBLE_STATE_DIR=str(place.values["state"]))
    env.update({k: place.fill(str(v)) for k, v in (case.get("environment") or {}).items()})
    return env


def run(place: Place, case: dict) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "gitops_ansible", *[place.fill(str(a)) for a in case["argv"]]]
    try:
        return subprocess.run(argv, cwd=place.case, env=environment(place, case),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=case.get("timeout", 30))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"no answer within {exc.timeout}s: {argv}")


def check(place: Place, case: dict, done, before: dict, digests: dict) -> list[str]:
    """What is wrong with the outcome of a case (nothing: it passed)."""
    output = done.stdout + done.stderr
    wrong = []
    if "Traceback" in output:
        wrong.append("a traceback reached the user")
    if done.returncode != case["exit"]:
        wrong.append(f"exit {done.returncode}, expected {case['exit']}")
    wrong += [f"the output lacks {word!r}" for word in case.get("expect", [])
              if place.fill(word) not in output]
    if case.get("no_stdout") and done.stdout:
        wrong.append("something was printed on stdout")
    wrong += [f"written outside its places: {c}" for c in
              changes(before, snapshot(place.root, place.unwatched()))]
    wrong += [f"the canary target was converged: {p.name}" for p in place.canary.iterdir()]
    wrong += [f"{pattern} exists" for pattern in case.get("absent", [])
              if glob.glob(place.fill(pattern))]
    wrong += [f"{path} was rewritten" for path, sha in digests.items() if digest(path) != sha]
    for path, words in (case.get("written") or {}).items():
        file = Path(place.fill(path))
        text = file.read_text() if file.is_file() else ""
        wrong += [f"{path} lacks {word!r}" for word in words if place.fill(word) not in text]
    return wrong


@pytest.mark.parametrize("case", [load_case(p) for p in CASE_FILES])
def test_bad_input(case, tmp_path):
    assert "broken" not in case, case.get("broken")
    require(shutil.which("git") is not None, "git is not installed")
    place = Place(tmp_path)
    prepare(place, case)
    digests = {Path(place.fill(p)): digest(Path(place.fill(p))) for p in case.get("unchanged", [])}
    before = snapshot(place.root, place.unwatched())
    done = run(place, case)
    wrong = check(place, case, done, before, digests)
    assert not wrong, (f"{case['description']}\n  " + "\n  ".join(wrong)
                       + f"\nargv: {case['argv']}\nstdout:\n{done.stdout[-3000:]}"
                       + f"\nstderr:\n{done.stderr[-3000:]}")


def test_the_checks_see_a_write_outside_and_a_converged_canary(tmp_path):
    """A good push converges the canary and writes only where it may; a file planted
    outside is seen: the checks above can fail, and the case setup is a repository the
    tool accepts."""
    require(shutil.which("git") is not None, "git is not installed")
    place = Place(tmp_path)
    case = {"argv": ["push", "--env", "dev", "--path", "{repo}"], "exit": 2}
    prepare(place, case)
    before = snapshot(place.root, place.unwatched())
    done = run(place, case)
    (place.outside / "deep" / "planted").write_text("x\n")
    assert sorted(check(place, case, done, before, {})) == [
        "the canary target was converged: alpha.txt",
        "the canary target was converged: beta.txt",
        "written outside its places: added outside/deep/planted",
        "written outside its places: changed outside/deep"], (done.stdout, done.stderr)
