"""The README is the user's manual: every setting and every exit code is in it."""
from gitops_ansible.config import SCHEMA
from gitops_ansible.report import ExitCode
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_with_flag_and_variable():
    for name in SCHEMA:
        row = f"| `{name}` | `--{name.replace('_', '-')}` | `GITOPS_ANSIBLE_{name.upper()}` |"
        assert row in README, name


def test_every_exit_code_is_documented():
    for code in ExitCode:
        assert f"\n| {int(code)} | " in README, code


def test_every_agent_key_is_documented():
    from gitops_ansible.config import AGENT_SCHEMA, SOURCE_SCHEMA

    for name in [*AGENT_SCHEMA, *SOURCE_SCHEMA, "windows", "commit_status"]:
        assert f"\n| `{name}` | " in README, name
