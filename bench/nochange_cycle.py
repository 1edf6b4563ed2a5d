"""The cost of a pull cycle when nothing changed: gitops-ansible run versus ansible-pull.

    cd /work/main && .venv/bin/python bench/nochange_cycle.py [--repeat N]

A local git repository holds tests/cases/base with two `platform: local` targets (as the
`estate` fixture of tests/integration/test_pull.py makes it) and the project's ansible.cfg
(roles/ beside playbooks/, which ansible-pull needs to find the roles). Each side converges
once, unmeasured; then both are run N times, interleaved, each answering "no change":

    gitops-ansible run --repo file://REPO --env dev --state-dir STATE      (exit 3)
    ansible-pull -U file://REPO -d DIR -i inventories/dev --only-if-changed \
        --limit all playbooks/site.yml                                      (exit 0, skipped)

Both start in an empty directory, so ansible-pull's relative -i names the checkout's
inventory (it changes into DIR before running the playbook; for its git step it falls back
to `-i localhost,`). --limit all: without it ansible-pull limits the playbook to localhost
and this machine's name, and the first converge would match no target. Python bytecode is
cached for every side (common.bench_env); a third row, for information only, runs
gitops-ansible with PYTHONDONTWRITEBYTECODE=1, as the editable checkout runs on this machine.
Goal: ratio (gitops-ansible / ansible-pull; per-round median, see common.ratios) < 0.1.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from common import ROOT, VENV_BIN, alternate, bench_env, expect, measure, parse_args, report, \
    summarize

GOAL = 0.1


def build_repo(repo: Path, out: Path) -> None:
    shutil.copytree(ROOT / "tests/cases/base", repo)
    shutil.copy(ROOT / "ansible.cfg", repo / "ansible.cfg")
    inv = repo / "inventories/dev"
    (inv / "hosts.yml").write_text("---\nall:\n  children:\n    controllers:\n"
                                   "      hosts:\n        alpha:\n        beta:\n")
    (inv / "group_vars/controllers.yml").write_text(
        f"---\nplatform: local\nansible_connection: local\ngreet_dir: {out}\n")
    (inv / "group_vars/web.yml").unlink()
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
           "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench: two local targets"]):
        subprocess.run(git + args, cwd=repo, check=True)


def main() -> None:
    args = parse_args(15, __doc__)
    with tempfile.TemporaryDirectory(prefix="gatbench-nochange-") as tmp:
        tmp = Path(tmp)
        repo, out, cwd = tmp / "repo", tmp / "out", tmp / "cwd"
        out.mkdir()
        cwd.mkdir()
        build_repo(repo, out)
        env = bench_env(tmp)
        no_pyc = dict(env, PYTHONDONTWRITEBYTECODE="1")
        no_pyc.pop("PYTHONPYCACHEPREFIX")
        gitops = [VENV_BIN / "gitops-ansible", "run", "--repo", f"file://{repo}", "--env", "dev",
                  "--state-dir", tmp / "state"]
        pull = [VENV_BIN / "ansible-pull", "-U", f"file://{repo}", "-d", tmp / "pull",
                "-i", "inventories/dev", "--only-if-changed", "--limit", "all",
                "playbooks/site.yml"]

        expect("ansible-pull (first converge)", measure(pull, cwd, env), (0,), "alpha")
        expect("gitops-ansible run (first converge)", measure(gitops, cwd, env), (0, 2), "alpha")
        for name in ("alpha", "beta"):
            assert (out / f"{name}.txt").read_text() == "hello world\n"

        sides = {
            "gitops-ansible run": lambda: expect(
                "gitops-ansible run", measure(gitops, cwd, env), (3,), "nothing to do"),
            "ansible-pull --only-if-changed": lambda: expect(
                "ansible-pull", measure(pull, cwd, env), (0,), "Repository has not changed"),
            # For information: the project's own modules compiled on every start.
            "gitops-ansible run, no .pyc": lambda: expect(
                "gitops-ansible run", measure(gitops, cwd, no_pyc), (3,), "nothing to do"),
        }
        samples = alternate(sides, args.repeat)
    rows = {name: summarize(s) for name, s in samples.items()}
    report("nochange_cycle", rows, "gitops-ansible run", "ansible-pull --only-if-changed",
           f"<{GOAL}", lambda ratio: ratio < GOAL,
           {"gitops-ansible run": [str(a) for a in gitops], "ansible-pull": [str(a) for a in pull],
            "cwd": "an empty temporary directory",
            "environment": "PATH with .venv/bin first; PYTHONPYCACHEPREFIX=TMP/pycache, "
                           "without PYTHONDONTWRITEBYTECODE (the 'no .pyc' row: "
                           "PYTHONDONTWRITEBYTECODE=1, no prefix)"})


if __name__ == "__main__":
    main()
