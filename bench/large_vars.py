"""The cost of a large vars file during validation against Ansible's own inventory load.

    cd /work/main && .venv/bin/python bench/large_vars.py [--repeat N] [--mb MIB]

The repository is tests/cases/base (hosts alpha, beta and web-1 in inventories/dev) with a
generated inventories/dev/group_vars/all.yml of MIB MiB (default 50): one mapping,
big_catalogue, of small mappings (a string, a number, a boolean, a list of three strings),
the shape of the file the figures in docs/benchmarks.md were first measured with. Each side
is a fresh Python process started in the repository, the sides interleaved:

    ansible:    InventoryManager(loader=DataLoader(), sources=[REPO/inventories/dev]), then
                VariableManager(...).get_vars(host=h, include_hostvars=False) for every host
    validation: gitops_ansible.inventory.load(REPO, gitops_ansible.config.load(
                    {"env": "dev", "state_dir": TMP/state}, environ={}))

Both sides print the hosts they loaded; the ansible side also prints the number of
big_catalogue entries every host got, checked against the generated file. A side costs
~35-80 s of wall and 2-4 GiB of memory at 50 MiB: --repeat 1 (one warm-up round, one
measured) takes 4-5 minutes.
Goal (issue 12): ratio (validation / ansible; per-round median, see common.ratios) <= 1.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import ROOT, VENV_BIN, alternate, bench_env, expect, measure, report, summarize

GOAL = 1.0
HOSTS = "hosts: alpha beta web-1"
ANSIBLE, VALIDATION = "ansible inventory load", "gitops-ansible validation"

# argv: REPO. Ansible's own load of the inventory and of every host's variables.
ANSIBLE_CODE = """
import sys
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager
loader = DataLoader()
manager = InventoryManager(loader=loader, sources=[sys.argv[1] + "/inventories/dev"])
variables = VariableManager(loader=loader, inventory=manager)
hosts = manager.get_hosts()
entries = {len(variables.get_vars(host=host, include_hostvars=False)["big_catalogue"])
           for host in hosts}
print("hosts:", *sorted(host.name for host in hosts))
print("entries:", *sorted(entries), flush=True)
"""

# argv: REPO STATE_DIR. gitops-ansible's validation of the environment, through its library.
VALIDATION_CODE = """
import sys
from pathlib import Path
from gitops_ansible import config, inventory
settings = config.load({"env": "dev", "state_dir": sys.argv[2]}, environ={})
print("hosts:", *sorted(inventory.load(Path(sys.argv[1]), settings).targets))
"""


def parse_args() -> argparse.Namespace:
    # common.parse_args has --repeat only; this benchmark also sizes its file.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3,
                        help="measured runs per side (default 3), after a warm-up")
    parser.add_argument("--mb", type=float, default=50,
                        help="size of the generated group_vars file in MiB (default 50)")
    return parser.parse_args()


def write_vars(path: Path, mib: float) -> int:
    """Write big_catalogue until the file holds MIB MiB; return its number of entries."""
    limit, size, count = mib * 1024 * 1024, 0, 0
    with path.open("w") as out:
        out.write("---\nbig_catalogue:\n")
        while size < limit:
            entry = (f"  item_{count:07d}:\n"
                     f"    name: \"component number {count} of the catalogue\"\n"
                     f"    size: {count * 7}\n    enabled: true\n"
                     f"    tags: [alpha, beta, gamma-{count % 100}]\n")
            out.write(entry)
            size += len(entry)
            count += 1
    return count


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="gatbench-largevars-") as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        shutil.copytree(ROOT / "tests/cases/base", repo)
        vars_file = repo / "inventories/dev/group_vars/all.yml"
        entries = write_vars(vars_file, args.mb)
        size_mib = vars_file.stat().st_size / 2**20
        print(f"{vars_file.name}: {size_mib:.1f} MiB, {entries} entries", file=sys.stderr)
        env = bench_env(tmp)
        python = VENV_BIN / "python"
        commands = {ANSIBLE: [python, "-c", ANSIBLE_CODE, repo],
                    VALIDATION: [python, "-c", VALIDATION_CODE, repo, tmp / "state"]}
        sides = {
            VALIDATION: lambda: expect(VALIDATION, measure(commands[VALIDATION], repo, env),
                                       (0,), HOSTS),
            ANSIBLE: lambda: expect(ANSIBLE, measure(commands[ANSIBLE], repo, env), (0,),
                                    f"{HOSTS}\nentries: {entries}\n"),
        }
        samples = alternate(sides, args.repeat)
    rows = {name: summarize(s) for name, s in samples.items()}
    report("large_vars", rows, VALIDATION, ANSIBLE, f"<={GOAL:g}", lambda ratio: ratio <= GOAL,
           {name: [str(a) for a in argv] for name, argv in commands.items()}
           | {"cwd": "the repository", "vars_file_mib": round(size_mib, 1), "entries": entries},
           {f"peak RSS {VALIDATION} / {ANSIBLE}": {
               "max": rows[VALIDATION]["peak_rss_mib"] / rows[ANSIBLE]["peak_rss_mib"]}})


if __name__ == "__main__":
    main()
