"""The documents follow the code: every setting, exit code and agent key is where a user
looks for it, and every relative link of the README and docs/ leads to a file."""
import re
from pathlib import Path

from gitops_ansible.config import AGENT_SCHEMA, SCHEMA, SOURCE_SCHEMA
from gitops_ansible.report import ExitCode
from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
# [text](target) with an optional #anchor; images ![..](..) match too.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def text(path: Path) -> str:
    return path.read_text()


def test_every_setting_is_documented_with_flag_and_variable():
    doc = text(DOCS / "configuration.md")
    for name in SCHEMA:
        row = f"| `{name}` | `--{name.replace('_', '-')}` | `GITOPS_ANSIBLE_{name.upper()}` |"
        assert row in doc, f"docs/configuration.md: no row {row}"


def test_every_exit_code_is_documented():
    readme = text(README)
    for code in ExitCode:
        assert f"\n| {int(code)} | " in readme, f"README.md: exit code {int(code)} ({code.name})"


def test_every_agent_key_is_documented():
    doc = text(DOCS / "agent.md")
    for name in [*AGENT_SCHEMA, *SOURCE_SCHEMA, "windows", "commit_status"]:
        assert f"\n| `{name}` | " in doc, f"docs/agent.md: no row for key {name}"


def relative_links(path: Path) -> list[str]:
    """Link targets of a Markdown file that point into the repository (no URL, no bare
    anchor), without their anchor. Code blocks are skipped: they hold examples, not links."""
    prose = re.sub(r"^```.*?^```", "", text(path), flags=re.S | re.M)
    targets = (m.group(1) for m in LINK.finditer(prose))
    return [t.split("#")[0] for t in targets
            if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def broken_links(pages: list[Path], root: Path) -> list[str]:
    return [f"{page.relative_to(root)}: {target}" for page in pages
            for target in relative_links(page) if not (page.parent / target).exists()]


def test_every_relative_link_points_to_an_existing_file():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    assert len(pages) > 1, "docs/ holds no page"
    assert not broken_links(pages, ROOT), "links to missing files"


def test_the_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [the agent](agent.md#signals) and [the web](https://example.com),\n"
                    "[here](#top) and [gone](missing.md).\n```\n[in code](nowhere.md)\n```\n")
    (tmp_path / "agent.md").write_text("# agent\n")
    assert broken_links([page], tmp_path) == ["page.md: missing.md"]
