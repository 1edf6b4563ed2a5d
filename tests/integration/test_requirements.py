"""Collections and roles from the repository's requirements files, installed before the run
from real sources: tarballs that `ansible-galaxy collection build` made and directories in
the repository, Git repositories served by the lab's Git server; a Galaxy server that is
down. The collections come from the `ansible` wheel in the lab cache (lab/collections.py,
`make collections`): nothing is downloaded.

The targets are `local` platform targets (tests/conftest.py local_estate): the tasks that
use a collection's modules write into the test's own directory.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from gitops_ansible import requirements
from gitops_ansible.problems import Refused
from lab import collections as lab_collections
from lab import galaxy as lab_galaxy
from lab.gitserver import WorkTree
from lab.system import free_port
from tests.conftest import CASES, local_estate, make_settings, require

pytestmark = pytest.mark.git
KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
       "deploy@example")
TRUST = f"""---
- name: Trust the deploy key
  ansible.posix.authorized_key:
    user: root
    key: "{KEY}"
    path: "{{{{ greet_dir }}}}/{{{{ inventory_hostname }}}}.keys"
    manage_dir: false
"""
KEYPAIR = """---
- name: Make the host's own key pair
  community.crypto.openssh_keypair:
    path: "{{ greet_dir }}/{{ inventory_hostname }}_id"
    type: ed25519
"""


@pytest.fixture(scope="module")
def sources():
    """The source trees of the collections the tests install."""
    try:
        return {name: lab_collections.source(name) for name in lab_collections.COLLECTIONS}
    except lab_collections.Missing as exc:
        require(False, str(exc))


@pytest.fixture
def estate(git_servers, tmp_path, request, sources):
    return local_estate(git_servers, tmp_path, request.node.name)


def use_role(tree: WorkTree, role: str, tasks: str) -> None:
    """A role of the estate's local play whose tasks use a collection."""
    tree.write(f"roles/{role}/tasks/main.yml", tasks)
    local = tree.path / "playbooks/local.yml"
    local.write_text(local.read_text().replace("    - greet\n", f"    - greet\n    - {role}\n"))


def served_collection(git_servers, tmp_path: Path, name: str, source: Path) -> str:
    """A collection's source tree as a Git repository of its own on the lab's Git server
    (as collections are developed); its git:// URL."""
    repo = f"{name}-{tmp_path.name}"
    tree = WorkTree(git_servers.create(repo), tmp_path / repo)
    tree.copy_tree(source, ".")
    tree.commit(f"{name} from the ansible wheel")
    return git_servers.url(repo, "git")


def run(cli, estate, git_servers, *extra, code):
    return cli("run", "--repo", git_servers.url(estate.name, "file"), "--env", "dev", *extra,
               check_code=code)


def caches(cli) -> list[Path]:
    root = cli.state_dir / "requirements"
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []


def said(done) -> str:
    return done.stdout + done.stderr


def test_collection_from_git_server_installed_then_reused_then_installed_again(
        cli, estate, git_servers, tmp_path, sources):
    url = served_collection(git_servers, tmp_path, "posix", sources["ansible.posix"])
    estate.write("collections/requirements.yml", f"---\ncollections:\n  - name: {url}\n"
                                                 "    type: git\n    version: main\n")
    use_role(estate, "trust", TRUST)
    estate.commit("the deploy key, with ansible.posix from Git")
    first = run(cli, estate, git_servers, code=2)
    assert "requirements: installing the collections of collections/requirements.yml" \
        in said(first)
    assert (estate.out / "alpha.keys").read_text().strip() == KEY
    [cache] = caches(cli)
    assert (cache / "collections/ansible_collections/ansible/posix/MANIFEST.json").is_file()
    before = cache.stat()

    again = run(cli, estate, git_servers, "--force", code=0)
    assert "collections/requirements.yml unchanged, reused" in said(again)
    assert "installing" not in said(again)
    assert caches(cli) == [cache]
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    estate.write("collections/requirements.yml", f"---\ncollections:\n  - name: git+{url},main\n")
    estate.commit("the same collection, written as one git+ URL")
    third = run(cli, estate, git_servers, code=0)
    assert "requirements: installing the collections" in said(third)
    assert len(caches(cli)) == 2


def test_collections_from_a_tarball_and_a_directory_in_the_repository(cli, estate, git_servers,
                                                                     sources):
    tarball = lab_collections.build("ansible.posix", estate.path / "collections")
    shutil.copytree(sources["community.crypto"], estate.path / "collections/src/crypto")
    estate.write("collections/requirements.yml", f"""---
collections:
  - name: collections/{tarball.name}
    type: file
  - name: ./collections/src/crypto
    type: dir
""")
    use_role(estate, "trust", TRUST + KEYPAIR.removeprefix("---\n"))
    estate.commit("ansible.posix as a tarball, community.crypto as a directory")
    run(cli, estate, git_servers, code=2)
    for host in ("alpha", "beta"):
        assert (estate.out / f"{host}.keys").read_text().strip() == KEY
        assert (estate.out / f"{host}_id.pub").read_text().startswith("ssh-ed25519 ")
    [cache] = caches(cli)
    installed = cache / "collections/ansible_collections"
    assert {p.name for p in (installed / "community").iterdir()} == {"crypto"}
    assert "reused" in said(run(cli, estate, git_servers, "--force", code=0))


def test_roles_from_a_tarball_and_a_git_repository(cli, estate, git_servers, tmp_path):
    """Galaxy-style role names (author.role) from roles/requirements.yml."""
    role = tmp_path / "role"
    (role / "tasks").mkdir(parents=True)
    (role / "meta").mkdir()
    (role / "meta/main.yml").write_text("---\ngalaxy_info:\n  author: acme\n  description: "
                                        "a note\n  license: MIT\n  min_ansible_version: '2.15'"
                                        "\n  platforms: []\ndependencies: []\n")
    (role / "tasks/main.yml").write_text(
        "---\n- name: Leave a note\n  ansible.builtin.copy:\n    dest: \"{{ greet_dir }}/"
        "{{ inventory_hostname }}.{{ note_name }}\"\n    content: \"{{ note_name }}\\n\"\n")
    (role / "defaults").mkdir()
    (role / "defaults/main.yml").write_text("---\nnote_name: packed\n")
    with tarfile.open(estate.path / "roles/acme.packed.tar.gz", "w:gz") as tar:
        tar.add(role, arcname="acme.packed")
    (role / "defaults/main.yml").write_text("---\nnote_name: cloned\n")
    repo = f"note-role-{tmp_path.name}"
    tree = WorkTree(git_servers.create(repo), tmp_path / repo)
    tree.copy_tree(role, ".")
    tree.commit("the role")
    estate.write("roles/requirements.yml", f"""---
- src: roles/acme.packed.tar.gz
  name: acme.packed
- src: git+{git_servers.url(repo, "git")}
  version: main
  name: acme.cloned
""")
    local = estate.path / "playbooks/local.yml"
    local.write_text(local.read_text().replace("    - greet\n",
                                               "    - greet\n    - acme.packed\n"
                                               "    - acme.cloned\n"))
    estate.commit("two roles from requirements")
    done = run(cli, estate, git_servers, code=2)
    assert "installing the roles of roles/requirements.yml" in said(done)
    assert (estate.out / "alpha.packed").read_text() == "packed\n"
    assert (estate.out / "beta.cloned").read_text() == "cloned\n"
    [cache] = caches(cli)
    assert {p.name for p in (cache / "roles").iterdir()} == {"acme.packed", "acme.cloned"}


def test_a_requirement_that_cannot_be_installed_is_refused(cli, estate, git_servers):
    missing = git_servers.url("no-such-collection", "git")
    estate.write("collections/requirements.yml", f"---\ncollections:\n"
                                                 f"  - name: git+{missing}\n")
    use_role(estate, "trust", TRUST)
    estate.commit("a collection from a repository that does not exist")
    done = run(cli, estate, git_servers, code=5)
    assert f"collections/requirements.yml:3: collection 'git+{missing}' from Git {missing} " \
           "cannot be installed: ansible-galaxy: Failed to clone a Git repository" in done.stderr
    assert not (estate.out / "alpha.txt").exists()  # nothing was touched
    assert caches(cli) == []
    db = sqlite3.connect(cli.state_dir / "runs.db")
    [(status, message)] = db.execute("SELECT status, message FROM runs").fetchall()
    assert status == "refused" and "Failed to clone a Git repository" in message


def test_a_path_out_of_the_checkout_is_refused_before_anything_is_installed(
        cli, estate, git_servers, tmp_path, sources):
    outside = tmp_path / "elsewhere"
    shutil.copytree(sources["ansible.posix"], outside)
    os.symlink(outside, estate.path / "collections-link")
    estate.write("collections/requirements.yml", """---
collections:
  - name: ../elsewhere.tar.gz
    type: file
  - name: collections-link
    type: dir
""")
    estate.commit("collections from outside the repository")
    done = run(cli, estate, git_servers, code=5)
    assert "collections/requirements.yml:3: collections[0]: '../elsewhere.tar.gz' resolves to " \
           in done.stderr
    assert f"collections/requirements.yml:5: collections[1]: 'collections-link' resolves to " \
           f"{outside}, outside the checkout" in done.stderr
    assert not (cli.state_dir / "requirements").exists()


@pytest.fixture(scope="module")
def galaxy_server(tmp_path_factory, sources):
    """Pulp serving ansible.posix and community.crypto, published with ansible-galaxy."""
    require(lab_galaxy.unavailable_reason() is None,
            f"no Galaxy server: {lab_galaxy.unavailable_reason()}")
    built = tmp_path_factory.mktemp("built")
    with lab_galaxy.GalaxyServer(tmp_path_factory.mktemp("galaxy")) as server:
        for name in sources:
            server.publish(lab_collections.build(name, built))
        yield server


def galaxy_config(tmp_path: Path, url: str, token: str, extra: str = "") -> Path:
    token_file = tmp_path / "galaxy.token"
    token_file.write_text(token + "\n")
    config = tmp_path / "config.toml"
    config.write_text(f'{extra}[[galaxy_servers]]\nname = "hub"\nurl = "{url}"\n'
                      f'token_file = "{token_file}"\n')
    return config


def test_collections_from_a_galaxy_server_with_a_token(cli, estate, git_servers, tmp_path,
                                                        galaxy_server):
    wrong = "wrong-" + os.urandom(6).hex()
    config = galaxy_config(tmp_path, galaxy_server.url, wrong)
    estate.write("collections/requirements.yml", "---\ncollections:\n  - name: ansible.posix\n"
                                                 "    version: '>=2.2.0'\n"
                                                 "  - name: community.crypto\n    source: hub\n")
    use_role(estate, "trust", TRUST + KEYPAIR.removeprefix("---\n"))
    estate.commit("collections from the team's Galaxy server")
    refused = run(cli, estate, git_servers, "--config", config, code=5)
    assert f"collections/requirements.yml:3: collection 'ansible.posix' from Galaxy servers " \
           f"'hub' ({galaxy_server.url}) cannot be installed: ansible-galaxy: " in refused.stderr
    assert "HTTP Code: 401, Message: Invalid token" in refused.stderr
    assert wrong not in said(refused)

    galaxy_config(tmp_path, galaxy_server.url, galaxy_server.token)
    done = run(cli, estate, git_servers, "--config", config, "--force", code=2)
    assert (estate.out / "alpha.keys").read_text().strip() == KEY
    assert (estate.out / "beta_id.pub").read_text().startswith("ssh-ed25519 ")
    [cache] = caches(cli)
    for name in ("ansible/posix", "community/crypto"):  # from the server, with its metadata
        assert (cache / f"collections/ansible_collections/{name}/MANIFEST.json").is_file()
    assert galaxy_server.token not in said(done)
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "galaxy.token"
              and galaxy_server.token.encode() in p.read_bytes()]
    assert not leaked


def test_a_galaxy_server_that_is_down_is_refused_and_its_token_never_shown(
        cli, estate, git_servers, tmp_path):
    token = "galaxy-token-" + os.urandom(6).hex()
    token_file = tmp_path / "galaxy.token"
    token_file.write_text(token + "\n")
    server = f"http://127.0.0.1:{free_port()}/api/"  # nothing listens there
    config = tmp_path / "config.toml"
    config.write_text(f'[[galaxy_servers]]\nname = "internal"\nurl = "{server}"\n'
                      f'token_file = "{token_file}"\n')
    estate.write("collections/requirements.yml", "---\ncollections:\n  - name: acme.tools\n"
                                                 "    version: '>=1.0'\n")
    estate.commit("a collection from the team's Galaxy server")
    done = run(cli, estate, git_servers, "--config", config, code=5)
    assert f"collections/requirements.yml:3: collection 'acme.tools' from Galaxy servers " \
           f"'internal' ({server}) cannot be installed: ansible-galaxy: " in done.stderr
    assert f"Unknown error when attempting to call Galaxy at '{server}'" in done.stderr
    assert token not in said(done)
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p != token_file
              and token.encode() in p.read_bytes()]
    assert not leaked
    history = cli("history", "--env", "dev", check_code=0)
    assert "refused" in history.stdout and token not in said(history)
    # the server may only be down: the revision is not marked refused, the next cycle
    # installs again (and would converge once the server is back)
    again = run(cli, estate, git_servers, "--config", config, code=5)
    assert f"Unknown error when attempting to call Galaxy at '{server}'" in again.stderr
    assert "was refused (run" not in said(again)


def test_an_install_past_galaxy_timeout_is_stopped_and_refused(cli, estate, git_servers,
                                                                tmp_path):
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/"
        config = galaxy_config(tmp_path, url, "token-" + os.urandom(6).hex(),
                               extra="galaxy_timeout = 3\n")
        estate.write("collections/requirements.yml", "---\ncollections:\n  - acme.tools\n")
        estate.commit("a collection from a server that never answers")
        started = time.monotonic()
        done = run(cli, estate, git_servers, "--config", config, code=5)
    assert time.monotonic() - started < 30
    assert "collections/requirements.yml: installing the collections did not finish within " \
           "3s (galaxy_timeout)" in done.stderr
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()  # ansible-galaxy: killed
                and "ansible-galaxy collection install" in _cmdline(p)
                and _cwd(p).startswith(str(cli.state_dir))]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cwd(proc: Path) -> str:
    try:
        return os.readlink(proc / "cwd")
    except OSError:
        return ""


def test_a_dependency_conflict_is_refused_with_what_could_not_be_satisfied(tmp_path):
    checkout = tmp_path / "repo"
    for name, extra in (("tools", ""), ("other", "dependencies:\n  acme.tools: '>=2.0.0'\n")):
        src = checkout / "collections/src" / name
        src.mkdir(parents=True)
        (src / "README.md").write_text("test\n")
        (src / "galaxy.yml").write_text(f"namespace: acme\nname: {name}\nversion: 1.0.0\n"
                                        f"readme: README.md\nauthors: [lab]\n{extra}")
    (checkout / "collections/requirements.yml").write_text(
        "collections:\n  - name: collections/src/tools\n    type: dir\n"
        "  - name: collections/src/other\n    type: dir\n")
    with pytest.raises(Refused) as refused:
        requirements.install(checkout, make_settings(state_dir=str(tmp_path / "state")))
    message = str(refused.value)
    assert message.startswith("collections/requirements.yml:2: collection "
                              "'collections/src/tools' from collections/src/tools in the "
                              "repository cannot be installed: ansible-galaxy: Failed to "
                              "resolve the requested dependencies map.")
    # the lines below ansible-galaxy's error line say what could not be satisfied
    assert "* acme.tools:1.0.0 * acme.tools:>=2.0.0" in message
    assert not list((tmp_path / "state/requirements").glob("[0-9a-f]*")), "a half cache"


def test_no_requirements_file_installs_nothing(tmp_path):
    checkout = tmp_path / "repo"
    (checkout / "roles").mkdir(parents=True)
    (checkout / "ansible.cfg").write_text("[defaults]\ncollections_path = vendor:/opt/c\n"
                                          "roles_path = roles:~/r\n")
    paths = requirements.install(checkout, make_settings(state_dir=str(tmp_path / "state")))
    assert paths.collections == (checkout / "vendor", Path("/opt/c"))
    assert paths.roles == (checkout / "roles", Path.home() / "r")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("text, where", [
    ("collections:\n  - version: '1.0'\n", "collections/requirements.yml:2: collections[0]: "
                                           "key 'name': a collection needs a name"),
    ("collections:\n  - name: a.b\n    verison: '1.0'\n",
     "collections/requirements.yml:3: collections[0]: key 'verison': expected one of name, "
     "version, source, type, signatures"),
    ("collections:\n  - name: a.b\n    type: svn\n", "collections/requirements.yml:2: "
     "collections[0]: key 'type': expected one of galaxy, git, file, dir, subdirs, url, got "
     "'svn'"),
    ("- a.b\n", "collections/requirements.yml:1: expected a mapping with the keys collections "
                "and roles, not a list"),
    ("collection:\n  - a.b\n", "collections/requirements.yml:1: key 'collection': expected "
                               "collections or roles"),
    ("collections: a.b\n", "collections/requirements.yml:1: key 'collections': expected a "
                           "list, not a single value"),
    ("collections:\n  - name: a.b\n    source: nowhere\n",
     "collections/requirements.yml:2: collections[0]: key 'source': expected the name of a "
     "galaxy_servers entry (none configured) or a URL, got 'nowhere'"),
    ("collections:\n  - name: ext::sh -c touch% /tmp/pwned\n    type: git\n",
     "collections/requirements.yml:2: collections[0]: Git URL 'ext::sh -c touch% /tmp/pwned': "
     "transport 'ext' is not allowed"),
    ("collections:\n  - name: file:///etc/hostname\n    type: url\n",
     "collections/requirements.yml:2: collections[0]: 'file:///etc/hostname' resolves to "
     "/etc/hostname, outside the checkout"),
    ("collections:\n  - name: git+file:///srv/estate-of-another-team.git\n",
     "collections/requirements.yml:2: collections[0]: Git URL 'file:///srv/estate-of-another-"
     "team.git': transport 'file' is not allowed"),
    ("collections:\n  - name: " + "x" * 300 + ".tar.gz\n    type: file\n",
     "collections/requirements.yml:2: collections[0]: '" + "x" * 300 + ".tar.gz': expected a "
     "file (a tarball) in the checkout"),
    ("roles:\n  - include: more.yml\n", "collections/requirements.yml:2: roles[0]: key "
                                         "'include': not supported"),
    ("collections:\n  - a.b\n  - a.b\ncollections: []\n",
     "collections/requirements.yml:4: duplicate key 'collections' (first at line 1)"),
])
def test_a_requirements_file_of_the_wrong_shape_is_refused(tmp_path, text, where):
    (tmp_path / "collections").mkdir()
    (tmp_path / "collections/requirements.yml").write_text(text)
    with pytest.raises(Refused) as refused:
        requirements.read(tmp_path)
    assert str(refused.value).startswith(where)


def test_a_role_without_src_or_name_is_refused(tmp_path):
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles/requirements.yml").write_text("- version: v1\n")
    with pytest.raises(Refused) as refused:
        requirements.read(tmp_path)
    assert str(refused.value) == "roles/requirements.yml:1: roles[0]: key 'src': a role " \
                                 "needs src or name"


# -- a repository with roles in the style of public Galaxy roles, on two lab hosts -----------
GALAXY_REPO = CASES / "galaxy_repo"
WEB = ("web-1", "web-2")


def galaxy_estate(git_servers, host_lab, tmp_path: Path, name: str) -> WorkTree:
    """tests/cases/galaxy_repo with ansible.posix vendored as a tarball and an inventory of
    two lab hosts, served by the lab's Git server."""
    tree = WorkTree(git_servers.create(name), tmp_path / "worktree")
    tree.copy_tree(GALAXY_REPO, ".")
    vendor = tree.path / "collections/vendor"
    vendor.mkdir(parents=True)
    lab_collections.build("ansible.posix", vendor).rename(vendor / "ansible-posix.tar.gz")
    hosts = {"all": {"children": {"web": {"hosts": {
        host: {"ansible_host": host_lab.hosts[host].address} for host in WEB}}}}}
    tree.write("inventories/lab/hosts.yml", "---\n" + yaml.safe_dump(hosts))
    web = {"platform": "web", "webserver_server_name": "www.example.test",
           "webserver_deploy_key": KEY, **host_lab.inventory_vars()}
    tree.write("inventories/lab/group_vars/web.yml", "---\n" + yaml.safe_dump(web))
    tree.commit("roles in the style of Galaxy roles, for two lab hosts")
    tree.url = git_servers.url(name, "git")
    return tree


@pytest.fixture
def galaxy(git_servers, host_lab, tmp_path, request, sources):
    for host in WEB:
        host_lab.reset_host(host)
    return galaxy_estate(git_servers, host_lab, tmp_path, request.node.name)


def on_host(lab, host: str, path: str) -> Path:
    return lab.hosts[host].root / path.lstrip("/")


def run_lab(cli, estate, *extra, code):
    return cli("run", "--repo", estate.url, "--env", "lab", *extra, check_code=code)


@pytest.mark.baremetal
def test_galaxy_style_roles_converge_two_hosts_and_a_forced_run_changes_nothing(
        cli, galaxy, host_lab):
    first = run_lab(cli, galaxy, code=2)
    assert "requirements: installing the collections of collections/requirements.yml" \
        in said(first)
    assert "2 of 2 hosts changed" in said(first)
    for host in WEB:
        site = on_host(host_lab, host, "/etc/acme-web/site.conf").read_text()
        assert "server_name www.example.test\n" in site and "user www-data\n" in site
        index = on_host(host_lab, host, "/var/www/acme/index.html").read_text()
        assert "<p>" + host.replace("-", "") in index.replace("-", "") and "(Debian)" in index
        assert on_host(host_lab, host, "/etc/sysctl.d/60-acme-common.conf").read_text() \
            .split() == ["net.ipv4.tcp_syncookies=1", "net.ipv4.conf.all.rp_filter=1"]
        assert on_host(host_lab, host, "/etc/acme-web/deploy_keys").read_text().strip() == KEY
        assert "(Debian), managed by Ansible" in on_host(host_lab, host, "/etc/motd").read_text()
        assert on_host(host_lab, host, "/var/log/acme-web-reloads.log").read_text() == \
            "reloaded www.example.test\n"  # the handler, once
    again = run_lab(cli, galaxy, "--force", code=0)
    assert "2 hosts converged, nothing changed" in said(again)
    # check-hosts validates as the run does: with the collections the requirements install
    checks = cli("check-hosts", "--env", "lab", "--path", galaxy.path, "--json", check_code=0)
    assert {c["host"]: c["status"] for c in json.loads(checks.stdout)} == \
        {host: "ok" for host in WEB}
    assert "unchanged, reused" in said(again)
    for host in WEB:
        assert on_host(host_lab, host, "/var/log/acme-web-reloads.log").read_text() == \
            "reloaded www.example.test\n"


@pytest.mark.baremetal
def test_a_missing_collection_and_a_misspelled_galaxy_role_are_refused(cli, galaxy, host_lab):
    galaxy.write("collections/requirements.yml", "---\ncollections: []\n")
    galaxy.commit("ansible.posix is no longer required")
    missing = run_lab(cli, galaxy, code=5)
    assert "roles/acme.common/tasks/main.yml:3: " in missing.stderr
    assert "ansible.posix" in missing.stderr
    galaxy.write("collections/requirements.yml",
                 (GALAXY_REPO / "collections/requirements.yml").read_text())
    web = galaxy.path / "playbooks/web.yml"
    web.write_text(web.read_text().replace("acme.webserver", "acme.webservr"))
    galaxy.commit("a typo in the role's name")
    typo = run_lab(cli, galaxy, code=5)
    assert "playbooks/web.yml:6: " in typo.stderr and "acme.webservr" in typo.stderr
    for host in WEB:  # refused before any target was touched
        assert not on_host(host_lab, host, "/etc/acme-web").exists()


def test_a_source_without_type_is_taken_as_ansible_galaxy_takes_it(tmp_path):
    (tmp_path / "collections/src/tools").mkdir(parents=True)
    (tmp_path / "collections/acme-web-1.0.0.tar.gz").write_bytes(b"")
    (tmp_path / "collections/requirements.yml").write_text(
        "collections:\n  - collections/acme-web-1.0.0.tar.gz\n  - ./collections/src/tools\n"
        "  - name: acme.db\n    signatures: [https://files.example/acme-db.asc]\n"
        "  - https://files.example/acme-x-1.0.0.tar.gz\n  - git+https://git.example/x.git\n"
        "  - missing/thing\n")
    with pytest.raises(Refused) as refused:
        requirements.read(tmp_path)
    assert str(refused.value) == ("collections/requirements.yml:8: collections[5]: "
                                  "'missing/thing': expected a namespace.collection, a URL, or "
                                  "a tarball or directory in the checkout")
    (tmp_path / "collections/requirements.yml").write_text(
        (tmp_path / "collections/requirements.yml").read_text().replace("  - missing/thing\n", ""))
    [wanted] = requirements.read(tmp_path)
    assert [r.source for r in wanted.collections] == [
        "collections/acme-web-1.0.0.tar.gz in the repository",
        "./collections/src/tools in the repository",
        "the Galaxy servers of ansible-galaxy's own configuration (no galaxy_servers set)",
        "URL https://files.example/acme-x-1.0.0.tar.gz", "Git https://git.example/x.git"]
    # a file:// URL is a path: one in the checkout is taken
    (tmp_path / "collections/requirements.yml").write_text(
        f"collections:\n  - file://{tmp_path}/collections/acme-web-1.0.0.tar.gz\n")
    [wanted] = requirements.read(tmp_path)
    assert wanted.collections[0].local == (tmp_path / "collections/acme-web-1.0.0.tar.gz")
