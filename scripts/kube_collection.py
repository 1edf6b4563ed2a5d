"""Install kubernetes.core without Galaxy: extract it from the `ansible` wheel on PyPI.

    python scripts/kube_collection.py [--version 14.5.0]

The `ansible` package (PyPI) bundles kubernetes.core; the full package is ~545 MB installed,
so only that one collection is taken from its wheel and placed in this interpreter's
site-packages/ansible_collections/, where ansible-core finds collections on sys.path (as it
does for the full package). Idempotent: nothing happens when the collection is there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

PREFIX = "ansible_collections/kubernetes/core/"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="14.5.0", help="version of the ansible package")
    args = parser.parse_args()
    site = Path(sysconfig.get_paths()["purelib"])
    manifest = site / PREFIX / "MANIFEST.json"
    if manifest.is_file():
        version = json.loads(manifest.read_text())["collection_info"]["version"]
        print(f"kubernetes.core {version} already in {site}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        f"ansible=={args.version}"], check=True)
        wheel = next(Path(tmp).glob("ansible-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(PREFIX)]
            archive.extractall(site, members)
    version = json.loads(manifest.read_text())["collection_info"]["version"]
    print(f"kubernetes.core {version} installed in {site} (from ansible {args.version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
