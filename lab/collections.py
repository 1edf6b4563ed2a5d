"""Collections for the tests, taken from the `ansible` wheel in the lab cache, so that a
test installs real collections from real sources (a tarball that ansible-galaxy built, a
Git repository, a directory) and never downloads anything.

    wheel(cache_dir=None) -> Path          # CACHE/wheels/ansible-*-py3-none-any.whl
    source(name, cache_dir=None) -> Path   # CACHE/collections/NAME-VERSION: its source tree
    build(name, dest) -> Path              # `ansible-galaxy collection build`: DEST/NS-NAME-V.tar.gz
    python -m lab.collections [NAME ...]   # prepare them (make collections)

The wheel is put in CACHE/wheels by `scripts/kube_collection.py --cache-dir` (the Makefile's
`collections` target). A source tree is what a collection's own repository holds: its
files and a galaxy.yml (made from the MANIFEST.json of the wheel's copy, which is dropped,
as is FILES.json), ready for `ansible-galaxy collection build`, a `type: dir` requirement
or a Git repository.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from .cache import build_once, cache_root

# Small ones (unpacked 478 KiB in 51 files and 2.0 MiB in 136 files; built 109 KiB and
# 392 KiB), whose modules run on a bare host with nothing but Python.
COLLECTIONS = ("ansible.posix", "community.crypto")


class Missing(RuntimeError):
    """The wheel is not in the cache: `make collections` puts it there."""


def wheel(cache_dir=None) -> Path:
    found = sorted((cache_root(cache_dir) / "wheels").glob("ansible-*-py3-none-any.whl"))
    if not found:
        raise Missing(f"no ansible wheel in {cache_root(cache_dir) / 'wheels'}: run "
                      "`make collections`")
    return found[-1]


def _prefix(name: str) -> str:
    namespace, collection = name.split(".")
    return f"ansible_collections/{namespace}/{collection}/"


def source(name: str, cache_dir=None) -> Path:
    """The source tree of collection ``name`` (namespace.collection), extracted once per
    machine."""
    path = wheel(cache_dir)
    with zipfile.ZipFile(path) as archive:
        try:
            info = json.loads(archive.read(_prefix(name) + "MANIFEST.json"))["collection_info"]
        except KeyError:
            raise Missing(f"{name} is not in {path.name}") from None

    def extract(tmp: Path, _run) -> None:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.startswith(_prefix(name)) and not member.is_dir():
                    relative = member.filename[len(_prefix(name)):]
                    if relative not in ("MANIFEST.json", "FILES.json"):
                        target = tmp / relative
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(member))
        galaxy = {key: value for key, value in info.items() if value not in (None, [], "")}
        (tmp / "galaxy.yml").write_text(yaml.safe_dump(galaxy, sort_keys=False))

    return build_once(cache_root(cache_dir) / "collections", f"{name}-{info['version']}",
                      lambda done: (done / "galaxy.yml").is_file(), extract)


def version(name: str, cache_dir=None) -> str:
    return yaml.safe_load((source(name, cache_dir) / "galaxy.yml").read_text())["version"]


def build(name: str, dest: Path, cache_dir=None) -> Path:
    """A tarball of ``name``, built by ansible-galaxy from its source tree into ``dest``."""
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    subprocess.run([str(galaxy), "collection", "build", str(source(name, cache_dir)),
                    "--output-path", str(dest)], check=True, capture_output=True)
    return dest / f"{name.replace('.', '-')}-{version(name, cache_dir)}.tar.gz"


def main(argv: list[str]) -> int:
    for name in argv or COLLECTIONS:
        try:
            print(f"{name}: {source(name)}")
        except Missing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
