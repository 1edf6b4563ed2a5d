"""The validator and the planner, driven by data files in tests/cases/ (one per case)."""
from pathlib import Path

import pytest
import yaml

from gitops_ansible import inventory, plan
from gitops_ansible.store import EnvState
from tests.conftest import CASES, copy_base, make_settings

VALIDATION = sorted((CASES / "validation").glob("*.yml"))


@pytest.mark.parametrize("case_file", VALIDATION, ids=[p.stem for p in VALIDATION])
def test_validation_case(case_file: Path, tmp_path):
    case = yaml.safe_load(case_file.read_text())
    repo = copy_base(tmp_path / "repo")
    for relative, text in (case.get("files") or {}).items():
        target = repo / relative
        if text is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    settings = make_settings(env=case.get("env", "dev"), state_dir=str(tmp_path / "state"))
    if case.get("expect"):
        with pytest.raises(inventory.Refused) as refused:
            inventory.load(repo, settings)
        problems = [str(p) for p in refused.value.problems]
        for expected in case["expect"]:
            assert any(expected in problem for problem in problems), (expected, problems)
    else:
        loaded = inventory.load(repo, settings)
        assert loaded.by_platform() == case["platforms"]


DECIDE = yaml.safe_load((CASES / "decide.yml").read_text())


@pytest.mark.parametrize("case", DECIDE, ids=[c["name"] for c in DECIDE])
def test_decide_case(case):
    decision = plan.decide(EnvState("dev", **case["state"]), case["revision"],
                           case.get("force", False),
                           case.get("check", False))
    assert decision.converge is case["converge"]
    assert case["reason"] in decision.reason


def test_preflight_exclusions_extend_the_users_limit():
    the_plan = plan.Plan(env="dev", revision="r", checkout=Path("."), playbook="p.yml",
                         inventory=Path("i"), platforms={"baremetal": ["a", "b", "c"]},
                         limit="web")
    assert the_plan.effective_limit() == "web"
    the_plan.excluded = {"b": "unreachable"}
    assert the_plan.effective_limit() == "web:!b"
    the_plan.limit = None
    assert the_plan.effective_limit() == "all:!b"
