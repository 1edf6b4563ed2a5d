"""The pages' parts that need no agent: durations for a person, and the actions' sign-in
and CSRF rules (the pages themselves are loaded in a browser: test_pages.py)."""
from __future__ import annotations

import pytest

from gitops_ansible.pages import ago, took
from gitops_ansible.server import SESSION_COOKIE, Sessions, cross_site_api


@pytest.mark.parametrize("seconds, shown", [(None, "-"), (0, "0s"), (59.9, "59s"), (60, "1m"),
                                            (3599, "59m"), (3600, "1h"), (3720, "1h 2m"),
                                            (86400 * 2 + 3600 * 4, "2d 4h"), (-5, "0s")])
def test_ago(seconds, shown):
    assert ago(seconds) == shown


def test_a_run_takes_tenths_under_a_minute():
    assert (took(1.96), took(59.94), took(61)) == ("2.0s", "59.9s", "1m")


@pytest.fixture
def sessions(tmp_path):
    token = tmp_path / "actions-token"
    token.write_text("s3cret-actions-token\n")
    return Sessions({"actions": True, "actions_token_file": str(token),
                     "external_url": "https://gitops.example.com/"})


def signed_in(sessions) -> tuple[dict, str]:
    session = sessions.sign_in("s3cret-actions-token")
    assert session
    return {"Cookie": f"other=1; {SESSION_COOKIE}={session}", "Host": "127.0.0.1:9420"}, \
        sessions.csrf(session)


def test_actions_are_off_unless_enabled(tmp_path):
    off = Sessions({"actions": False, "actions_token_file": None, "external_url": None})
    assert off.view({}).actions is False
    assert off.sign_in("anything") is None
    assert not off.allowed({"Authorization": "Bearer anything"}, {})


def test_a_wrong_token_gets_no_session(sessions):
    assert sessions.sign_in("s3cret") is None and sessions.sign_in("") is None


def test_a_form_needs_the_session_and_its_csrf_value(sessions):
    headers, csrf = signed_in(sessions)
    assert sessions.view(headers).signed_in and sessions.view(headers).csrf == csrf
    assert sessions.allowed(headers, {"csrf": [csrf]})
    assert not sessions.allowed(headers, {})                          # no CSRF field
    assert not sessions.allowed(headers, {"csrf": ["0" * 64]})       # a forged one
    assert not sessions.allowed({"Host": "127.0.0.1:9420"}, {"csrf": [csrf]})  # no cookie
    other_headers, other_csrf = signed_in(sessions)
    assert not sessions.allowed(headers, {"csrf": [other_csrf]})  # another session's value


def test_a_request_from_another_site_is_refused(sessions):
    headers, csrf = signed_in(sessions)
    assert sessions.allowed({**headers, "Origin": "http://127.0.0.1:9420"}, {"csrf": [csrf]})
    assert not sessions.allowed({**headers, "Origin": "http://evil.example"}, {"csrf": [csrf]})
    # behind a proxy that passes on its own Host, the page's origin is the external URL's
    proxied = {**headers, "Host": "127.0.0.1:9420", "Origin": "https://gitops.example.com"}
    assert sessions.allowed(proxied, {"csrf": [csrf]}) and sessions.secure


@pytest.mark.parametrize("headers, refused", [
    ({}, False), ({"Content-Type": "application/json"}, False),
    ({"Content-Type": "application/x-www-form-urlencoded"}, True),
    ({"Content-Type": "text/plain;charset=UTF-8"}, True),
    ({"Content-Type": "multipart/form-data"}, True),
    ({"Content-Type": "application/json", "Origin": "http://evil.example", "Host": "a:1"}, True),
])
def test_the_sync_api_refuses_what_another_site_could_send(headers, refused):
    assert cross_site_api(headers, "") is refused


def test_scripts_use_the_bearer_token(sessions):
    assert sessions.allowed({"Authorization": "Bearer s3cret-actions-token"}, {})
    assert not sessions.allowed({"Authorization": "Bearer wrong"}, {})


def test_a_new_process_knows_no_old_session(sessions, tmp_path):
    headers, csrf = signed_in(sessions)
    restarted = Sessions({"actions": True, "actions_token_file": str(tmp_path / "actions-token"),
                          "external_url": None})
    assert not restarted.allowed(headers, {"csrf": [csrf]})


def test_a_long_log_keeps_its_start_and_its_end():
    from gitops_ansible.reconcile import LOG_HEAD, LOG_TAIL, kept

    lines = [(float(i), "info", f"line {i}") for i in range(LOG_HEAD + LOG_TAIL + 250)]
    stored = kept(lines)
    assert len(stored) == LOG_HEAD + LOG_TAIL + 1
    assert stored[0] == lines[0] and stored[-1] == lines[-1]
    assert stored[LOG_HEAD][2] == "... 250 lines left out here ..."
    assert kept(lines[:10]) == lines[:10]


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:9420", True), ("localhost:9420", True), ("[::1]:9420", True),
    ("198.51.100.3", True), ("gitops.example.com", True), ("GitOps.Example.com:443", True),
    ("evil.example:9420", False), ("gitops.example.com.evil.example", False), ("", False)])
def test_the_pages_answer_only_to_the_agents_own_host_names(host, allowed):
    from gitops_ansible.server import host_allowed
    assert host_allowed({"Host": host}, "gitops.example.com") is allowed


def test_origin_null_is_another_site():
    from gitops_ansible.server import same_site
    assert not same_site({"Host": "127.0.0.1:9420", "Origin": "null"})
    assert same_site({"Host": "127.0.0.1:9420", "Origin": "http://127.0.0.1:9420"})
