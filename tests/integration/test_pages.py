"""The agent's status pages as a person sees them: the real agent makes real runs (a
success, a drift, a failure) and headless Chromium, with JavaScript off, loads its pages.

The checks read Chromium's rendered DOM; the raw HTML comes from a plain HTTP client.
Screenshots of every page are kept in build/test-artifacts/pages/. The actions (sign-in,
CSRF, bearer token) are driven with urllib, as a script or a forged form would send them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lab.recorder import Recorder
from tests.conftest import ROOT, local_estate, require
from tests.integration.test_agent import AgentProcess, agents, source  # noqa: F401 (fixture)

pytestmark = [pytest.mark.agent, pytest.mark.git]
ARTIFACTS = ROOT / "build/test-artifacts/pages"
EXTERNAL = "https://gitops.example.com/"
MASK = "********"
WHO = f"agent@{socket.gethostname()}"
PNG = b"\x89PNG\r\n\x1a\n"
WINDOW = (1280, 1000)


# -- a browser with JavaScript off -------------------------------------------------------------
class Browser:
    """Headless Chromium in a profile of its own whose content settings block JavaScript.
    (Chromium 156's new headless mode prints no DOM and writes no screenshot at all with
    ``--blink-settings=scriptEnabled=false``; the profile setting is what a person who
    turned JavaScript off has.)"""

    def __init__(self, binary: str, profile: Path):
        self.binary, self.profile = binary, profile
        (profile / "Default").mkdir(parents=True)
        (profile / "Default/Preferences").write_text(json.dumps(
            {"profile": {"default_content_setting_values": {"javascript": 2}}}))

    def _run(self, url: str, *flags: str) -> subprocess.CompletedProcess:
        done = subprocess.run([self.binary, "--headless", "--no-sandbox", "--disable-gpu",
                               f"--user-data-dir={self.profile}", *flags, url],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"chromium {flags} {url}: rc {done.returncode}\n" \
                                     f"{done.stderr[-2000:]}"
        return done

    def dom(self, url: str) -> str:
        dom = self._run(url, "--dump-dom").stdout
        assert "<html" in dom, f"chromium printed no DOM for {url}"
        return dom

    def screenshot(self, url: str, path: Path) -> Path:
        """A PNG of the window, checked to be one: the signature, the size of the window in
        its header, and more bytes than a blank page makes."""
        path.unlink(missing_ok=True)
        self._run(url, f"--screenshot={path}", "--window-size={},{}".format(*WINDOW))
        data = path.read_bytes()
        assert data[:8] == PNG, f"{path} is not a PNG"
        assert struct.unpack(">II", data[16:24]) == WINDOW, f"{path}: not {WINDOW}"  # IHDR
        assert 10_000 < len(data) < 5_000_000, f"{path}: {len(data)} bytes"
        return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = shutil.which("chromium")
    require(binary is not None, "chromium is not installed (Debian: apt-get install chromium)")
    chromium = Browser(binary, tmp_path_factory.mktemp("chromium") / "profile")
    # JavaScript really is off: a script that writes into the page leaves no trace.
    probe = chromium.dom("data:text/html,<p>page<script>document.write('JS-RAN')</script></p>")
    assert "page" in probe and "JS-RAN" not in probe.replace("write('JS-RAN')", "")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return chromium


# -- reading a rendered page --------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
BLOCK = {"br", "div", "h1", "h2", "li", "p", "pre", "table", "td", "th", "tr", "ul"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None" = None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list = []

    def raw(self) -> str:
        """The text as written (for <pre>)."""
        return "".join(c if isinstance(c, str) else f"\n{c.raw()}\n" if c.tag in BLOCK
                       else c.raw() for c in self.children)

    def text(self) -> str:
        return " ".join(self.raw().split())

    def walk(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find(self, tag: str, cls: str | None = None, **attrs) -> list["Node"]:
        return [n for n in self.walk() if n.tag == tag
                and (cls is None or cls in n.attrs.get("class", "").split())
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def rows(self) -> list[list[str]]:
        """Each row of the tables inside, as its cells' texts."""
        return [[cell.text() for cell in row.children if isinstance(cell, Node)
                 and cell.tag in ("td", "th")] for row in self.find("tr")]


class Tree(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node.parent and node.tag != tag:
            node = node.parent
        if node.parent:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


@dataclass
class Page:
    path: str
    html: str  # as the agent sent it
    dom: str   # as Chromium rendered it
    root: Node

    @property
    def text(self) -> str:
        return self.root.text()

    def section(self, heading: str) -> Node:
        """What follows the <h2> ``heading`` up to the next <h2>, in one node."""
        body = self.root.find("body")[0]
        part, inside = Node("section", {}), False
        for child in body.children:
            if isinstance(child, Node) and child.tag == "h2":
                inside = child.text() == heading
            elif inside:
                part.children.append(child)
        assert part.children, f"{self.path}: no section {heading!r}; headings: " \
                              f"{[h.text() for h in self.root.find('h2')]}"
        return part

    def links(self) -> dict[str, str]:
        return {a.attrs.get("href"): a.text() for a in self.root.find("a")}

    def refresh(self) -> str | None:
        metas = self.root.find("meta", http_equiv="refresh")
        return metas[0].attrs["content"] if metas else None


def parse(dom: str) -> Node:
    tree = Tree()
    tree.feed(dom)
    return tree.root


def visit(agent: AgentProcess, browser: Browser, path: str, shot: str) -> Page:
    code, html = agent.get(path)
    assert code == 200, f"GET {path}: {code} {html[:500]}"
    url = f"http://127.0.0.1:{agent.port}{path}"
    dom = browser.dom(url)
    browser.screenshot(url, ARTIFACTS / f"{shot}.png")
    return Page(path, html, dom, parse(dom))


def fields(table: Node) -> dict[str, str]:
    """A table of label and value cells (th, td, th, td...) as {label: value}."""
    return {label: value for row in table.rows() for label, value in zip(row[::2], row[1::2])}


def row_of(node: Node, first: str) -> list[str]:
    found = [row for row in node.rows() if row and row[0] == first]
    assert found, f"no row for {first!r} in {node.rows()}"
    return found[0]


# -- the story: a success, a drift, a failure ---------------------------------------------------
def vault_encrypt(password_file: Path, name: str, value: str) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt_string",
                           "--vault-password-file", str(password_file), "--stdin-name", name],
                          input=value, capture_output=True, text=True, cwd=password_file.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Story:
    agent: AgentProcess
    canary: str
    good: str             # the first revision: converged, then drifted
    broken: str           # the second: fails on alpha, changes beta
    runs: dict            # success, drift, failed: run ids
    pages: dict           # name: Page
    hooks: list           # what the generic webhook and the commit status API got


@pytest.fixture(scope="module")
def story(git_servers, browser, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pages")
    estate = local_estate(git_servers, tmp, "pages")
    subprocess.run(["git", "config", "user.name", "Ana Lima"], cwd=estate.path, check=True)
    password = tmp / "vault-pass"
    password.write_text("pages-vault-" + tmp.name + "\n")
    canary = "canary-" + str(time.time_ns())[-9:] + "-plaintext"
    secret = vault_encrypt(password, "canary", canary)
    estate.write("inventories/dev/host_vars/beta.yml",
                 f"---\n{secret}greet_name: \"{{{{ canary }}}}\"\n")
    good = estate.commit("greeting: beta greets with the canary")
    token = tmp / "github-token"
    token.write_text("ghp-pages\n")
    with Recorder() as api:
        status = {"kind": "github", "repository": "org/estate", "token_file": str(token),
                  "api_url": api.url("/api")}
        agent = AgentProcess(tmp, tmp / "state", [source(
            estate, git_servers, vault_password_file=str(password),
            drift_interval=1, retry_base="1h", retry_max="1h", commit_status=status)],
            agent={"external_url": EXTERNAL, "alert_interval": 0},
            notify=[{"kind": "webhook", "url": api.url("/generic")}]).start()
        try:
            yield make_story(agent, browser, estate, canary, good, api)
        finally:
            agent.stop()


def ended(agent: AgentProcess, revision: str, status: str) -> str | None:
    """The id of the agent's last cycle's run when it ended so with that revision."""
    last = agent.status()["last"]
    return last["run_id"] if (last.get("revision"), last.get("status")) == (revision, status) \
        else None


def make_story(agent, browser, estate, canary, good, api) -> Story:
    runs, pages = {}, {}
    runs["success"] = agent.wait_for(lambda: ended(agent, good, "changed"), 180,
                                     "the first converge")
    assert (estate.out / "beta.txt").read_text() == f"hello {canary}\n"  # the secret is used
    (estate.out / "alpha.txt").write_text("edited by hand on alpha\n")
    agent.wait_for(lambda: agent.status()["drifted_hosts"] == ["alpha"], 120, "drift on alpha")
    runs["drift"] = agent.status()["drift_run"]
    agent.reload(text=agent.config.read_text().replace("drift_interval = 1\n",
                                                       "drift_interval = 0\n"))
    agent.wait_for(lambda: "config reloaded" in agent.log(), 60, "the reload")
    pages["overview-drift"] = visit(agent, browser, "/", "overview-drift")
    pages["env-drift"] = visit(agent, browser, "/env/dev", "env-drift")
    pages["run-success"] = visit(agent, browser, f"/runs/{runs['success']}", "run-success")
    pages["run-drift"] = visit(agent, browser, f"/runs/{runs['drift']}", "run-drift")

    blocker = estate.out / "not-a-directory"
    blocker.write_text("a file where alpha wants a directory\n")
    estate.write("inventories/dev/host_vars/alpha.yml", f"---\ngreet_dir: {blocker}\n")
    beta = estate.path / "inventories/dev/host_vars/beta.yml"
    beta.write_text(beta.read_text().replace('"{{ canary }}"', '"{{ canary }} again"'))
    broken = estate.commit("alpha: greet into a file")
    assert agent.request("POST", "/api/v1/sync/dev")[0] == 202
    runs["failed"] = agent.wait_for(lambda: ended(agent, broken, "failed"), 180,
                                    "the failed run")
    hooks = api.wait_for(lambda reqs: any((r["json"] or {}).get("event") == "failure"
                                          for r in reqs) and
                         len([r for r in reqs if r["path"].endswith(broken)]) >= 2, 60)
    pages["overview-failed"] = visit(agent, browser, "/", "overview-failed")
    pages["env-failed"] = visit(agent, browser, "/env/dev", "env-failed")
    pages["run-failed"] = visit(agent, browser, f"/runs/{runs['failed']}", "run-failed")
    pages["login"] = visit(agent, browser, "/login", "login")
    return Story(agent, canary, good, broken, runs, pages, hooks)


# -- what a person looks for --------------------------------------------------------------------
def test_overview_shows_revision_last_run_and_what_needs_attention(story):
    drift, failed = story.pages["overview-drift"], story.pages["overview-failed"]
    for page in (drift, failed):
        assert page.refresh() == "15"  # reloads itself, no script needed
        assert page.links()["/env/dev"] == "dev"
        assert re.search(r"\b\d+[smh]( \d+[smh])? ago\b", page.text), page.text
    applied = row_of(drift.root, "dev")
    assert story.good[:12] in applied[1]
    assert "greeting: beta greets with the canary" in applied[1] and "(Ana Lima)" in applied[1]
    assert applied[5].startswith("changed") and "schedule" in applied[5]
    assert f"/runs/{story.runs['success']}" in drift.links()
    assert f"drift on alpha (run {story.runs['drift']})" in applied[7]

    applied = row_of(failed.root, "dev")
    assert story.broken[:12] in applied[1] and "alpha: greet into a file" in applied[1]
    assert "(Ana Lima)" in applied[1]
    assert story.good[:12] in applied[3]  # the last good revision
    assert applied[5].startswith("failed") and "sync" in applied[5]
    assert f"/runs/{story.runs['failed']}" in failed.links()
    assert "applied revision has failed hosts" in applied[7]
    assert "drift" not in applied[7]  # the converge after the drift check cleared it


def test_overview_notes_are_told_once_in_plain_english(story):
    drift, failed = story.pages["overview-drift"], story.pages["overview-failed"]
    problems = []
    told = [li.text() for li in drift.root.find("li") if "drift" in li.text()]
    if len(told) != 1:
        problems.append(f"the drift is told {len(told)} times: {told}")
    told = [li.text() for li in failed.root.find("li") if "retry" in li.text()]
    # retry_base is 1h: the next try is due in (a little less than) an hour
    if len(told) != 1 or not re.fullmatch(r"1 failed cycle, retry in (1h|5\dm)", told[0]):
        problems.append(f"the failed cycle: {told}")
    assert not problems, problems


def test_environment_page_shows_targets_drifted_tasks_and_history(story):
    drift, failed = story.pages["env-drift"], story.pages["env-failed"]
    for page in (drift, failed):
        assert page.refresh() == "15"
    targets = drift.section("Targets")
    alpha, beta = row_of(targets, "alpha"), row_of(targets, "beta")
    # target, platform, the revision it is clean at, last outcome, message, drifted tasks
    assert alpha[1] == beta[1] == "local" and alpha[2] == beta[2] == story.good[:12]
    assert alpha[3] == "changed" and alpha[5] == "Write the greeting"
    assert beta[3] == "changed" and beta[5] == "-"
    history = drift.section("History")
    links = {a.attrs["href"]: a.text() for a in history.find("a")}
    for run_id in (story.runs["success"], story.runs["drift"]):
        assert links[f"/runs/{run_id}"] == run_id
    assert row_of(history, story.runs["drift"])[1] == "drift (check)"
    assert row_of(history, story.runs["success"])[2] == "schedule"

    targets = failed.section("Targets")
    alpha, beta = row_of(targets, "alpha"), row_of(targets, "beta")
    assert [alpha[1], alpha[3]] == ["local", "failed"] and "not-a-directory" in alpha[4]
    assert [beta[1], beta[3]] == ["local", "changed"]
    # alpha failed on the broken revision: it stays clean at the good one, beta moved on
    assert (alpha[2], beta[2]) == (story.good[:12], story.broken[:12])
    history = failed.section("History")
    failed_row = row_of(history, story.runs["failed"])
    assert failed_row[1:3] == ["pull", "sync"] and failed_row[4] == "failed"
    assert "alpha: greet into a file" in failed_row[3]
    assert "alpha:failed" in failed_row[6] and "beta:changed" in failed_row[6]
    assert {f"/runs/{story.runs[k]}" for k in ("success", "drift", "failed")} <= {
        a.attrs["href"] for a in history.find("a")}


def test_failed_run_page_shows_cause_tasks_diff_log_and_who(story):
    page, run_id = story.pages["run-failed"], story.runs["failed"]
    detail = json.loads(story.agent.get(f"/api/v1/runs/{run_id}")[1])
    [failure] = [t for t in detail["tasks"] if t["status"] == "failed"]
    assert failure["host"] == "alpha" and failure["task"] == "Write the greeting"
    assert "not-a-directory" in failure["message"]
    assert page.root.find("h1")[0].text() == f"Run {run_id} failed"
    causes = [p.text() for p in page.root.find("p", cls="cause")]
    assert f"alpha: Write the greeting: {failure['message']}" in causes, causes
    summary = fields(page.root.find("table")[0])
    assert summary["Trigger"] == "sync" and summary["Started by"] == WHO
    assert summary["Revision"] == f"{story.broken} alpha: greet into a file (Ana Lima)"
    assert summary["Environment"] == "dev" and re.fullmatch(r"\d+\.\ds", summary["Duration"])
    assert row_of(page.section("Targets"), "alpha")[1:3] == ["local", "failed"]
    assert row_of(page.section("Targets"), "beta")[1:3] == ["local", "changed"]

    alpha = {row[1]: row for row in page.section("Tasks on alpha").rows()[1:]}
    assert alpha["greet : Write the greeting"][2] == "failed"
    assert failure["message"] in alpha["greet : Write the greeting"][4]
    beta = page.section("Tasks on beta")
    assert {row[1]: row[2] for row in beta.rows()[1:]}["greet : Write the greeting"] == "changed"
    [diff] = [pre.raw() for pre in beta.find("pre")]
    assert f"-hello {MASK}\n" in diff and f"+hello {MASK} again\n" in diff

    log = page.section("Log").find("pre")[0].raw()
    assert f"info: dev: converging {story.broken[:12]}" in log
    assert f"error: {detail['message']}" in log  # the verdict, as the agent logged it


def test_run_page_log_has_what_the_agent_logged_for_that_run(story):
    run_id = story.runs["failed"]
    log = " ".join(story.pages["run-failed"].section("Log").find("pre")[0].raw().split())
    tag = f" run_id={run_id} "
    logged = [" ".join(line.split(tag, 1)[1].split()) for line in story.agent.log().splitlines()
              if tag in line]
    assert any(line.startswith("TASK greet : Write the greeting") for line in logged)
    missing = [line for line in logged if line not in log]
    assert not missing, f"{len(missing)} of the agent's {len(logged)} lines of run " \
                        f"{run_id} are not on its page, e.g. {missing[:3]}"


def test_success_and_drift_run_pages(story):
    page = story.pages["run-success"]
    summary = fields(page.root.find("table")[0])
    assert summary["Trigger"] == "schedule" and summary["Started by"] == WHO
    assert "greeting: beta greets with the canary (Ana Lima)" in summary["Revision"]
    assert not page.root.find("p", cls="cause")
    diffs = {host: "".join(pre.raw() for pre in page.section(f"Tasks on {host}").find("pre"))
             for host in ("alpha", "beta")}
    assert "+hello world\n" in diffs["alpha"] and f"+hello {MASK}\n" in diffs["beta"]

    drift = story.pages["run-drift"]
    assert drift.root.find("h1")[0].text() == f"Run {story.runs['drift']} drifted"
    summary = fields(drift.root.find("table")[0])
    assert summary["Trigger"] == "drift" and summary["Started by"] == WHO
    tasks = {row[1]: row[2] for row in drift.section("Tasks on alpha").rows()[1:]}
    assert tasks["greet : Write the greeting"] == "changed"


def test_no_page_carries_the_secret(story):
    seen = 0
    for name, page in story.pages.items():
        assert story.canary not in page.dom, f"{name}: the secret in the rendered page"
        assert story.canary not in page.html, f"{name}: the secret in the HTML sent"
        seen += page.dom.count(MASK)
    assert MASK in story.pages["run-failed"].dom and MASK in story.pages["run-success"].dom
    assert seen >= 3
    assert story.canary not in json.dumps(story.hooks)  # alerts and commit statuses


def test_alerts_and_commit_statuses_link_to_the_run_page(story, browser):
    run_id = story.runs["failed"]
    [alert] = [r["json"] for r in story.hooks if (r["json"] or {}).get("event") == "failure"]
    assert alert["run_id"] == run_id and alert["url"] == f"{EXTERNAL}runs/{run_id}"
    statuses = [r["json"] for r in story.hooks
                if r["path"] == f"/api/repos/org/estate/statuses/{story.broken}"]
    assert [s["state"] for s in statuses] == ["pending", "failure"]
    assert {s["target_url"] for s in statuses} == {alert["url"]}
    drifted = [r["json"] for r in story.hooks if (r["json"] or {}).get("event") == "drift"]
    assert drifted and drifted[0]["url"] == f"{EXTERNAL}runs/{story.runs['drift']}"
    path = urllib.parse.urlsplit(alert["url"]).path
    followed = parse(browser.dom(f"http://127.0.0.1:{story.agent.port}{path}"))
    assert followed.find("h1")[0].text() == f"Run {run_id} failed"


def test_read_only_by_default(story):
    for name, page in story.pages.items():
        assert not page.root.find("form"), f"{name} has a form while actions are off"
        assert "read-only" in page.text
    assert "Actions are off" in story.pages["login"].text
    for path in ("/actions/sync/dev", "/actions/suspend/dev", "/actions/resume/dev"):
        assert story.agent.request("POST", path, b"reason=x")[0] == 404
    assert story.agent.request("POST", "/login", b"token=anything")[0] == 401
    for path in ("/env/nosuchenv", "/runs/20200101T000000Z-000000"):
        code, html = story.agent.get(path)
        assert code == 404 and '<a href="/">All environments</a>' in html
    assert story.agent.status()["suspended"] is None


# -- actions ------------------------------------------------------------------------------------
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 303 is an answer to look at, not to follow


def post(agent: AgentProcess, path: str, fields: dict, **headers) -> tuple[int, dict]:
    """A form POST as a browser or a script sends it; (code, response headers)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{agent.port}{path}", method="POST",
        data=urllib.parse.urlencode(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_actions_need_the_token_a_session_and_the_form_of_this_agent(agents, git_servers, cli,
                                                                       tmp_path, browser):
    estate = local_estate(git_servers, tmp_path, "pages-actions")
    token_file = tmp_path / "actions-token"
    token = "actions-" + os.urandom(8).hex()
    token_file.write_text(token + "\n")
    agent = agents(tmp_path, cli.state_dir, [source(estate, git_servers)],
                   agent={"actions": True, "actions_token_file": str(token_file)})
    agent.wait_for(lambda: agent.status()["applied_revision"] == estate.revision, 180,
                   "the first converge")
    anonymous = visit(agent, browser, "/env/dev", "env-actions-anonymous")
    assert not anonymous.root.find("form") and anonymous.links()["/login"] == \
        "sign in for actions"
    login = visit(agent, browser, "/login", "login-actions")
    assert [f.attrs["action"] for f in login.root.find("form")] == ["/login"]

    assert post(agent, "/actions/suspend/dev", {"reason": "no session"})[0] == 403
    assert post(agent, "/login", {"token": "not-the-token"})[0] == 401
    code, headers = post(agent, "/login", {"token": token})
    assert code == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = {"Cookie": cookie.split(";")[0]}
    code, html = agent.request("GET", "/env/dev", headers=session)
    assert code == 200
    form = parse(html)
    actions = [f.attrs["action"] for f in form.find("form")]
    assert actions == ["/actions/sync/dev", "/actions/suspend/dev"]
    [csrf] = {i.attrs["value"] for i in form.find("input", name="csrf")}

    assert post(agent, "/actions/suspend/dev", {"reason": "no csrf"}, **session)[0] == 403
    assert post(agent, "/actions/suspend/dev", {"reason": "forged", "csrf": csrf},
                Origin="http://evil.example", **session)[0] == 403
    assert post(agent, "/actions/suspend/dev", {"reason": "x", "csrf": "0" * 64},
                **session)[0] == 403
    assert "suspended" not in cli("status", check_code=0).stdout
    code, headers = post(agent, "/actions/suspend/dev",
                         {"reason": "database migration, ask Ana", "csrf": csrf},
                         Origin=f"http://127.0.0.1:{agent.port}", **session)
    assert code == 303 and headers["Location"] == "/env/dev"
    assert "database migration, ask Ana" in cli("status", check_code=0).stdout
    attention = row_of(visit(agent, browser, "/", "overview-suspended").root, "dev")[7]
    assert re.search(r"suspended since .*: database migration, ask Ana", attention), attention
    signed_in = parse(agent.request("GET", "/env/dev", headers=session)[1])
    assert [f.attrs["action"] for f in signed_in.find("form")] == ["/actions/sync/dev",
                                                                    "/actions/resume/dev"]
    assert post(agent, "/actions/resume/dev", {"csrf": csrf}, **session)[0] == 303
    assert "database migration" not in cli("status", check_code=0).stdout
    assert agent.status()["suspended"] is None

    estate.write("inventories/dev/host_vars/beta.yml", "---\ngreet_name: synced\n")
    new = estate.commit("beta: greets after a sync from the page")
    assert post(agent, "/actions/sync/dev", {"csrf": csrf}, **session)[0] == 303
    run_id = agent.wait_for(lambda: ended(agent, new, "changed"), 120,
                            "the cycle the page's sync started")  # the interval is an hour
    assert (estate.out / "beta.txt").read_text() == "hello synced\n"
    run = json.loads(agent.get(f"/api/v1/runs/{run_id}")[1])
    assert run["trigger"] == "sync" and run["started_by"] == WHO

    # a script: the bearer token, no session and no form
    bearer = {"Authorization": f"Bearer {token}"}
    assert post(agent, "/actions/suspend/dev", {"reason": "scripted"},
                Authorization="Bearer not-the-token")[0] == 403
    assert post(agent, "/actions/suspend/dev", {"reason": "scripted"}, **bearer)[0] == 303
    assert agent.status()["suspended"] == "scripted"
    assert post(agent, "/actions/resume/dev", {}, **bearer)[0] == 303
    assert agent.status()["suspended"] is None
    assert "suspended from the status page: database migration, ask Ana" in agent.log()

