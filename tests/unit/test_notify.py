"""Notifications and commit status against a recording HTTP server (the SaaS stand-in)."""
from gitops_ansible.notify import Notifier
from lab.recorder import Recorder


def test_alerts_are_rate_limited_per_environment_and_kind():
    with Recorder(status=200) as hooks:
        notifier = Notifier([{"kind": "webhook", "url": hooks.url("/hook"),
                              "events": ["failure", "recovery"]}], 60, lambda *a, **k: None)
        assert notifier.alert("failure", "prod", "host web-1 failed", "a" * 40, "run-1")
        assert not notifier.alert("failure", "prod", "host web-1 failed again")
        assert notifier.alert("failure", "dev", "another environment")
        assert notifier.alert("recovery", "prod", "converging again")
        assert notifier.alert("drift", "prod", "no target subscribes to drift: not sent")
        notifier.close()
        sent = [r["json"] for r in hooks.requests]
    assert [(a["event"], a["env"]) for a in sent] == [("failure", "prod"), ("failure", "dev"),
                                                      ("recovery", "prod")]
    assert sent[0]["revision"] == "a" * 40 and sent[0]["run_id"] == "run-1"


def test_gitlab_commit_status(tmp_path):
    token = tmp_path / "token"
    token.write_text("glpat-secret\n")
    with Recorder() as api:
        notifier = Notifier([], 0, lambda *a, **k: None)
        config = {"kind": "gitlab", "api_url": api.url(), "repository": "group/estate",
                  "token_file": str(token)}
        notifier.commit_status(config, "prod", "b" * 40, "pending", "converging prod")
        notifier.commit_status(config, "prod", "b" * 40, "failure", "prod: failed: web-1")
        notifier.commit_status(config, "prod", "local+dirty", "success", "not a commit: skipped")
        notifier.close()
        posted = list(api.requests)
    assert [r["path"] for r in posted] == [f"/api/v4/projects/group%2Festate/statuses/{'b' * 40}"] * 2
    assert [r["json"]["state"] for r in posted] == ["pending", "failed"]
    assert posted[0]["headers"]["private-token"] == "glpat-secret"
    assert posted[1]["json"]["name"] == "gitops-ansible/prod"
