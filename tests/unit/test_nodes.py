"""Execution nodes: their settings (``[[execution_nodes]]``, checked before any run) and
how the targets are sliced over them (gitops_ansible/nodes.py; the runs themselves are in
tests/integration/test_nodes.py)."""
from pathlib import Path

import pytest

from gitops_ansible import config, nodes
from gitops_ansible.inventory import HostView, Inventory, Play, Target

NODES = ('[[execution_nodes]]\nname = "dc1-a"\ndestination = "runner@10.0.0.5"\nport = 2222\n'
         'ssh_key = "/etc/gitops-ansible/node_key"\nrunner = "/opt/ar/bin/ansible-runner"\n'
         'groups = ["dc1"]\n[[execution_nodes]]\nname = "dc2-a"\ndestination = "node2"\n'
         'groups = ["dc2"]\n')


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_nodes_from_the_file_with_their_defaults(tmp_path):
    settings = config.load({}, write(tmp_path, 'slicing = "group"\n' + NODES), {})
    first, second = settings.execution_nodes
    assert (first.name, first.destination, first.port, first.runner, first.groups) == (
        "dc1-a", "runner@10.0.0.5", 2222, "/opt/ar/bin/ansible-runner", ("dc1",))
    assert (second.port, second.runner, second.workdir, second.target_key) == (
        22, "ansible-runner", "/tmp", None)
    assert settings.slicing == "group"
    assert config.load({}, None, {}).execution_nodes == ()


@pytest.mark.parametrize("text, message", [
    ('[[execution_nodes]]\nname = "../x"\ndestination = "h"\n',
     "execution_nodes[0]: key 'name': expected 1 to 63 characters"),
    ('[[execution_nodes]]\nname = "a"\n', "execution_nodes[0]: key 'destination': expected "
                                          "[user@]host"),
    # what reaches ssh's command line is one plain word: no option, no second command
    ('[[execution_nodes]]\nname = "a"\ndestination = "-oProxyCommand=sh"\n',
     "key 'destination': expected [user@]host of the node's sshd, without spaces or options"),
    ('[[execution_nodes]]\nname = "a"\ndestination = "h"\nrunner = "ar; rm -rf /"\n',
     "key 'runner': expected the node's ansible-runner"),
    ('[[execution_nodes]]\nname = "a"\ndestination = "h"\nworkdir = "/tmp/../etc"\n',
     "key 'workdir': expected an absolute directory on the node"),
    ('[[execution_nodes]]\nname = "a"\ndestination = "h"\nport = 0\n',
     "key 'port': expected a TCP port from 1 to 65535, got 0"),
    ('[[execution_nodes]]\nname = "a"\ndestination = "h"\ngroups = "web"\n',
     "key 'groups': expected a list of inventory group names, got 'web'"),
    ('[[execution_nodes]]\nname = "a"\ndestination = "h"\nkey = "k"\n',
     "execution_nodes[0]: key 'key': expected one of name, destination, port"),
    ('[[execution_nodes]]\nname = "a"\ndestination = "h"\n[[execution_nodes]]\nname = "a"\n'
     'destination = "i"\n', "execution_nodes[1]: key 'name': expected a name no other "
                            "execution_nodes entry has, got 'a'"),
    ('slicing = "random"\n', "key 'slicing': expected one of count, group, got 'random'"),
])
def test_bad_nodes_name_the_file_entry_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as err:
        config.load({}, path, {})
    assert str(err.value).startswith(path) and message in str(err.value)


def test_agent_nodes_at_the_top_and_per_source(tmp_path):
    path = write(tmp_path, NODES + '[[sources]]\nrepo = "file:///r"\nenv = "a"\n[[sources]]\n'
                                   'repo = "file:///r"\nenv = "b"\n[[sources.execution_nodes]]\n'
                                   'name = "own"\ndestination = "h"\n')
    loaded = config.load_agent(path, environ={})
    assert [[n.name for n in src.settings.execution_nodes] for src in loaded.sources] == \
        [["dc1-a", "dc2-a"], ["own"]]


def inventory(*plays: Play) -> Inventory:
    ssh = {f"web-{n}": Target(f"web-{n}", "baremetal") for n in range(1, 6)}
    local = {"cluster": Target("cluster", "kubernetes", {"ansible_connection": "local"})}
    views = {name: HostView(frozenset({"dc2"} if name == "web-5" else {"dc1"}), "")
             for name in ssh}
    return Inventory("prod", Path("/x"), {**ssh, **local}, set(), views, list(plays))


def settings(tmp_path, slicing: str) -> config.Settings:
    return config.load({"slicing": slicing}, write(tmp_path, NODES), {})


def test_count_slicing_shares_the_ssh_targets_evenly_in_name_order():
    assert nodes._shares([f"h{n}" for n in range(5)], 2) == [["h0", "h1", "h2"], ["h3", "h4"]]
    assert nodes._shares(["h0"], 3) == [["h0"], [], []]


def test_group_slicing_sends_each_host_to_the_first_node_of_its_groups(tmp_path):
    found = nodes._by_group(settings(tmp_path, "group").execution_nodes,
                            ["web-1", "web-2", "web-5"], inventory(), {"dc2-a": "refused"})
    assert [(s.node.name, s.hosts, s.down) for s in found] == [
        ("dc1-a", ["web-1", "web-2"], None), ("dc2-a", ["web-5"], "refused")]


def test_plays_that_need_their_hosts_together_keep_them_on_the_controller():
    play = Play("playbooks/baremetal.yml", "play 'Roll' (playbooks/baremetal.yml)",
                frozenset({"web-1", "web-2"}), (), together="roles/roll/tasks/main.yml:4")
    held = nodes._held(inventory(play), ["web-2", "web-3"])
    assert held == {"web-2": "play 'Roll' (playbooks/baremetal.yml) uses "
                             "roles/roll/tasks/main.yml:4"}


def test_no_ssh_target_to_move_asks_no_node(tmp_path):
    """Only the Kubernetes cluster is chosen: nothing to slice, no node is contacted (the
    destinations do not exist)."""
    inv = inventory()
    inv.limited = ["cluster"]
    assert nodes.assign(settings(tmp_path, "count"), inv, lambda *a: None) == ([], ["cluster"])


def test_a_node_key_that_cannot_be_read_refuses_the_run_before_any_node_is_asked(tmp_path):
    """The key of the first node (/etc/gitops-ansible/node_key) does not exist here."""
    with pytest.raises(nodes.NodeRefused) as err:
        nodes.assign(settings(tmp_path, "count"), inventory(), lambda *a: None)
    assert str(err.value) == (f"{tmp_path}/config.toml: execution_nodes[0]: key 'ssh_key': "
                              "expected a readable file, got '/etc/gitops-ansible/node_key'")
