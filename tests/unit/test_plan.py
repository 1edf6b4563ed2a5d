"""The planner, driven by data files in tests/cases/ (one per case); the validator's cases
run in test_inventory.py."""
from pathlib import Path

import pytest
import yaml

from gitops_ansible import plan
from gitops_ansible.store import EnvState
from tests.conftest import CASES

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
