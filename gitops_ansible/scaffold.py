"""`gitops-ansible init`: write a new GitOps repository from the files in `skeleton/`.

`skeleton/` holds layers, each laid out as the new repository: `common/` for every
repository, then those of the kind of platform. `hosts/` (every platform name but
kubernetes): targets reached over SSH, a new role of the platform's own, its molecule
scenario, and `playbooks/local.yml`, which applies that role to the controller.
`kubernetes/`: one cluster target and its manifests (a kustomization), with
`project/kubernetes/`: links to this project's playbooks/kubernetes.yml and
roles/k8s_manifests (one copy in the repository; the wheel carries them as files), so that
a new repository converges clusters as this one does. A Kubernetes repository has no
local.yml (no role of its own for the controller) and no molecule scenario (molecule tests
roles on hosts; this role's tests run real API servers).

A file ending in `.j2` is rendered with Jinja2 and written without that suffix; its
delimiters are `[[ ]]`, `[% %]` and `[# #]`, so that Ansible's own `{{ }}` and `{% %}`
pass through untouched. Any other file is copied as it is, and so is every file of a layer
under `project/` (the project's own, whatever its name). In paths, `__platform__`,
`__role__` and `__env__` stand for the names; a path with `__env__` is written once per
environment. ``commit`` makes the new directory a Git repository with a first commit (pull
mode converges commits, not files). Where a new repository holds the same file as this
project's own repository (ansible.cfg, the lint settings, playbooks/site.yml, ...), the
skeleton's copy is identical to it (tests/unit/test_scaffold.py compares them).
"""
from __future__ import annotations

import re
import subprocess
from importlib import resources
from pathlib import Path, PurePath

import jinja2
import yaml

NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Platform names that would collide with a file or group the repository already has.
RESERVED_PLATFORMS = {
    "local": "the built-in platform of the controller itself",
    "site": "playbooks/site.yml is the entry point",
    "all": "a group Ansible defines itself",
    "ungrouped": "a group Ansible defines itself",
}
ENVIRONMENTS = ("dev", "staging", "prod")
# The platform init writes with this project's playbook and role instead of a new role.
KUBERNETES, KUBERNETES_ROLE = "kubernetes", "k8s_manifests"
# The layers below it hold the project's own files: copied as they are, never rendered.
PROJECT_DIR = "project/"
SKELETON = resources.files(__package__) / "skeleton"
JINJA = jinja2.Environment(
    variable_start_string="[[", variable_end_string="]]",
    block_start_string="[%", block_end_string="%]",
    comment_start_string="[#", comment_end_string="#]",
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
    trim_blocks=True, lstrip_blocks=True, autoescape=False)


class ScaffoldError(Exception):
    """Bad names, or a destination that is not empty (without force)."""


def check_name(what: str, name: str) -> None:
    if not NAME.fullmatch(name):
        raise ScaffoldError(f"{what} name {name!r}: expected lowercase letters, digits and "
                            "'_', starting with a letter, at most 40 characters")
    if yaml.safe_load(name) != name:  # yes, on, null, ... would not stay names in YAML
        raise ScaffoldError(f"{what} name {name!r}: YAML reads it as "
                            f"{yaml.safe_load(name)!r}; choose another name")
    if what == "platform" and name in RESERVED_PLATFORMS:
        raise ScaffoldError(f"platform name {name!r} is taken: {RESERVED_PLATFORMS[name]}")


def values(platform: str = "baremetal", role: str | None = None) -> dict:
    """The checked names and what the templates derive from them. ``platforms``: (playbook,
    play name) in import order, for playbooks/site.yml; ``layers``: the skeleton's folders
    written, in order."""
    check_name("platform", platform)
    if platform == KUBERNETES:
        return kubernetes_values(role)
    role = role or f"{platform}_base"
    check_name("role", role)
    platforms = [(platform, f"Platform {platform}"), ("local", "The controller itself")]
    return {"platform": platform, "role": role, "platforms": platforms,
            "layers": ("common", "hosts")}


def kubernetes_values(role: str | None) -> dict:
    """Clusters are converged by this project's playbook and role, not by a new role."""
    if role not in (None, KUBERNETES_ROLE):
        raise ScaffoldError(f"role name {role!r}: the platform {KUBERNETES} applies this "
                            f"project's role {KUBERNETES_ROLE}; no other role is written")
    return {"platform": KUBERNETES, "role": KUBERNETES_ROLE,
            "platforms": [(KUBERNETES, "Kubernetes clusters")],
            "layers": ("common", KUBERNETES, PROJECT_DIR + KUBERNETES)}


def skeleton_files(folder=SKELETON, prefix: str = ""):
    """(path relative to ``folder``, resource) of every file below it."""
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":  # Python's, beside the role's plugins
            continue
        if entry.is_dir():
            yield from skeleton_files(entry, f"{prefix}{entry.name}/")
        else:
            yield f"{prefix}{entry.name}", entry


def render(rel: str, entry, names: dict) -> tuple[str, bytes]:
    """The output path and content of one skeleton file."""
    out = rel.removesuffix(".j2")
    for key in ("platform", "role", "env"):
        if key in names:
            out = out.replace(f"__{key}__", names[key])
    if rel.endswith(".j2"):
        return out, JINJA.from_string(entry.read_text(encoding="utf-8")).render(names).encode()
    return out, entry.read_bytes()


def files(names: dict) -> dict[str, bytes]:
    """Relative path -> content of every file of a new repository."""
    out = {}
    for layer in names["layers"]:
        for rel, entry in skeleton_files(SKELETON / layer):
            if layer.startswith(PROJECT_DIR):
                out[rel] = entry.read_bytes()
                continue
            for env in ENVIRONMENTS if "__env__" in rel else [None]:
                path, content = render(rel, entry, names if env is None else {**names, "env": env})
                out[path] = content
    return out


def check_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise ScaffoldError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise ScaffoldError(f"{dest} is not empty: use --force to write into it "
                            "(files of the same name are overwritten)")


def target(dest: Path, rel: str) -> Path:
    """DEST/REL, refused if writing it would leave DEST or needs a directory where a file is."""
    path = dest / rel
    if not path.resolve().is_relative_to(dest.resolve()):
        raise ScaffoldError(f"{path}: a symbolic link leads outside {dest}; nothing written")
    for blocker in [dest / p for p in PurePath(rel).parents[:-1]]:
        if blocker.exists() and not blocker.is_dir():
            raise ScaffoldError(f"{blocker} is not a directory; nothing written")
    if path.is_dir():
        raise ScaffoldError(f"{path} is a directory; nothing written")
    return path


def init(dest: Path, platform: str = "baremetal", role: str | None = None,
         force: bool = False) -> list[Path]:
    """Write a new repository into DEST; return the files written."""
    names = values(platform, role)
    dest = Path(dest)
    check_destination(dest, force)
    content = {target(dest, rel): text for rel, text in files(names).items()}
    for path, text in content.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    return list(content)


# The first commit's author where the user has no Git identity yet (a fresh machine, CI).
INIT_IDENTITY = {"user.name": "gitops-ansible init", "user.email": "init@gitops-ansible"}


def commit(dest: Path, paths: list[Path]) -> str | None:
    """Make DEST a Git repository (branch main) and commit ``paths`` (what init wrote, not
    what else --force wrote beside); the revision, or None when DEST was inside a
    repository already (its owner commits, not init)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["git", "-C", str(dest), *args], capture_output=True,
                                  text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScaffoldError(f"git: {exc}") from None

    if git("rev-parse", "--is-inside-work-tree").returncode == 0:
        return None
    identity = [arg for key, value in INIT_IDENTITY.items()
                if not git("config", key).stdout.strip() for arg in ("-c", f"{key}={value}")]
    written = [str(path.relative_to(dest)) for path in paths]
    for args in (["init", "-q", "-b", "main"], ["add", "--", *written],
                 [*identity, "commit", "-q", "-m",
                  "A new GitOps repository (gitops-ansible init)"]):
        done = git(*args)
        if done.returncode:
            step = next(a for a in args if a in ("init", "add", "commit"))
            raise ScaffoldError(f"git {step}: {(done.stderr or done.stdout).strip()}")
    return git("rev-parse", "HEAD").stdout.strip()
