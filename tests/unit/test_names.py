"""Names are names: the documented patterns and lengths, and paths kept under their directory."""
import os

import pytest

from gitops_ansible import names


@pytest.mark.parametrize("name", ["dev", "prod", "eu-west-1", "team_a.staging", "0", "a" * 63])
def test_environment_names_that_are_names(name):
    assert names.env_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../../etc", "/abs/dir", "a/b", "dev..x",
                                  ".hidden", "-dev", "_dev", "Dev", "dev\n[Service]", "dev ",
                                  "a" * 64, "a" * 300, "dév", None, 7])
def test_environment_names_that_are_not(name):
    with pytest.raises(names.InvalidName) as refused:
        names.env_name(name, "--env")
    message = str(refused.value)
    assert message.startswith("--env ") and "1 to 63 characters of a-z" in message
    assert len(message) < 300  # a 300-character name is cut, not echoed whole


@pytest.mark.parametrize("name", ["gitops-ansible-dev", "gitops:dev", "A.b_c-1", "x" * 247])
def test_unit_names_that_systemd_takes(name):
    assert names.unit_name(name) == name


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "", "-x", ".x", "x y", "x@y", "x@",
                                  "x.service", "x.timer", "x\ny", "x" * 248, "é"])
def test_unit_names_that_are_not(name):
    with pytest.raises(names.InvalidName, match="expected a systemd unit name"):
        names.unit_name(name, "--name")


@pytest.mark.parametrize("name", ["gitops", "_svc", "gitops-ansible", "a.b", "0", "1000"])
def test_user_names(name):
    assert names.user_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "root\nExecStartPre=x", "a:b", "-x", "x" * 32])
def test_user_names_that_are_not(name):
    with pytest.raises(names.InvalidName, match="expected a user name"):
        names.user_name(name)


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "a\x00b", "\x1b[31m", "a\tb", "a\x7fb",
                                  "a\x85b"])
def test_control_characters_are_refused_and_shown(text):
    with pytest.raises(names.InvalidName) as refused:
        names.one_line(text, "--ref")
    assert "without control characters" in str(refused.value)
    assert repr(text)[1:-1] in str(refused.value)  # escaped, visible, not a raw newline
    assert "\n" not in str(refused.value)


def test_plain_text_passes():
    assert names.one_line("web%1 $HOME 'q' \"q\" ünï") == "web%1 $HOME 'q' \"q\" ünï"


def test_inside_follows_symlinks(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    assert names.inside(out / "a.service", out) == out.resolve() / "a.service"
    os.symlink(elsewhere / "target", out / "link.service")
    with pytest.raises(names.Outside, match="outside"):
        names.inside(out / "link.service", out)
    with pytest.raises(names.Outside):
        names.inside(out / ".." / "escaped.service", out)
    os.symlink(elsewhere, tmp_path / "linked-out")
    # the directory itself may be a link: what counts is where both resolve
    assert names.inside(tmp_path / "linked-out" / "x", tmp_path / "linked-out") == \
        elsewhere.resolve() / "x"
