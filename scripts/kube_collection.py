"""Install collections without Galaxy: extract them from the `ansible` wheel on PyPI.

    python scripts/kube_collection.py [--version 14.5.0] [--cache-dir DIR] [COLLECTION ...]

COLLECTION defaults to kubernetes.core (Kubernetes platform) and community.libvirt (VM
platform). The `ansible` package (PyPI) bundles both; the full package is ~545 MB installed,
so only the named collections are taken from its wheel (downloaded once per call, only when
one is missing) and placed in this interpreter's site-packages/ansible_collections/, where
ansible-core finds collections on sys.path (as it does for the full package). Idempotent:
a collection already there is left alone. With --cache-dir the wheel is kept there (and
taken from there: downloaded once per machine), also when no collection is missing: the
lab's tests take the collections they install from it (lab/collections.py). (The file keeps
its first name: the Makefile and older notes call it.)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

DEFAULT_COLLECTIONS = ["kubernetes.core", "community.libvirt"]


def prefix(collection: str) -> str:
    namespace, name = collection.split(".")
    return f"ansible_collections/{namespace}/{name}/"


def installed_version(site: Path, collection: str) -> str | None:
    manifest = site / prefix(collection) / "MANIFEST.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text())["collection_info"]["version"]


def wheel(version: str, cache_dir: Path | None, tmp: Path) -> Path:
    """The `ansible` wheel: the one in ``cache_dir`` when there, else downloaded (and moved
    into ``cache_dir`` when given: a killed download never looks complete)."""
    name = f"ansible-{version}-py3-none-any.whl"
    if cache_dir and (cache_dir / name).is_file():
        return cache_dir / name
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp),
                    f"ansible=={version}"], check=True)
    if not cache_dir:
        return tmp / name
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f".{name}.partial"  # a copy first: /tmp may be another file system
    shutil.copyfile(tmp / name, partial)
    os.replace(partial, cache_dir / name)
    return cache_dir / name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="14.5.0", help="version of the ansible package")
    parser.add_argument("collections", nargs="*", default=DEFAULT_COLLECTIONS,
                        help="namespace.name of each collection (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, help="keep the wheel here (and reuse it)")
    args = parser.parse_args()
    site = Path(sysconfig.get_paths()["purelib"])
    missing = []
    for collection in args.collections:
        version = installed_version(site, collection)
        if version:
            print(f"{collection} {version} already in {site}")
        else:
            missing.append(collection)
    if not missing and not args.cache_dir:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = wheel(args.version, args.cache_dir, Path(tmp))
        if args.cache_dir:
            print(f"ansible {args.version} wheel in {args.cache_dir}")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for collection in missing:
                members = [m for m in names if m.startswith(prefix(collection))]
                if not members:
                    print(f"{collection}: not in ansible {args.version}", file=sys.stderr)
                    return 1
                archive.extractall(site, members)
    for collection in missing:
        print(f"{collection} {installed_version(site, collection)} installed in {site} "
              f"(from ansible {args.version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
