"""Notifications and commit status, sent by one background thread in order.

Alerts (failure, recovery, drift, refused) go to generic JSON webhooks and Slack-compatible
incoming webhooks, at most one per environment and kind within ``alert_interval``;
``alerts`` decides *when* something is worth an alert (on a change of state, not per cycle).
Commit status goes back to GitHub (``POST /repos/OWNER/NAME/statuses/SHA``) or GitLab
(``POST /api/v4/projects/ID/statuses/SHA``) without a link. URLs and tokens are never
logged: Slack URLs carry their own token.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import urllib.parse
from pathlib import Path

GITLAB_STATES = {"pending": "pending", "success": "success", "failure": "failed"}


def _post(url: str, body: dict, headers: dict | None = None, timeout: float = 10) -> int:
    import urllib.request  # with what it brings (email, tempfile): when there is a post

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "gitops-ansible", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


def read_secret(path: str) -> str:
    """A secret kept in a file (a token, a webhook secret, a URL that carries its token)."""
    return Path(path).expanduser().read_text().strip()


def alert_text(alert: dict) -> str:
    revision = (alert.get("revision") or "")[:12]
    where = f"{alert['env']}" + (f" @ {revision}" if revision else "")
    run = f" (run {alert['run_id']})" if alert.get("run_id") else ""
    link = f" {alert['url']}" if alert.get("url") else ""
    return f"gitops-ansible {alert['event']}: {where}: {alert['message']}{run}{link}"


def page_url(base: str | None, env: str, run_id: str | None = None) -> str | None:
    """The status page of a run (or of the environment) under the agent's external URL."""
    if not base:
        return None
    return base.rstrip("/") + (f"/runs/{run_id}" if run_id else f"/env/{env}")


class Notifier:
    def __init__(self, targets: list[dict], alert_interval: float, log,
                 external_url: str | None = None):
        self.targets, self.alert_interval, self.log = targets, alert_interval, log
        self.external_url = external_url  # links to the status pages
        self.last_sent: dict[tuple[str, str], float] = {}
        self.suppressed: dict[tuple[str, str], int] = {}
        self.queue: queue.Queue = queue.Queue()
        self.sent = 0
        self.thread = threading.Thread(target=self._work, name="notify", daemon=True)
        self.thread.start()

    # -- alerts ---------------------------------------------------------------------
    def alert(self, event: str, env: str, message: str, revision: str | None = None,
              run_id: str | None = None) -> bool:
        """Queue an alert unless one of this kind for this env went out too recently."""
        key, now = (env, event), time.monotonic()
        last = self.last_sent.get(key)
        if last is not None and now - last < self.alert_interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            self.log(f"{event} alert for {env} suppressed (rate limit: one per "
                     f"{self.alert_interval:g}s)", "info", env=env)
            return False
        self.last_sent[key] = now
        alert = {"event": event, "env": env, "revision": revision, "run_id": run_id,
                 "message": message, "ts": round(time.time(), 3),
                 "suppressed": self.suppressed.pop(key, 0),
                 "url": page_url(self.external_url, env, run_id)}
        for target in self.targets:
            if event in target["events"]:
                self.queue.put(("alert", target, alert))
        return True

    def _send_alert(self, target: dict, alert: dict) -> None:
        url = target.get("url") or read_secret(target["url_file"])
        body = alert if target["kind"] == "webhook" else {"text": alert_text(alert)}
        _post(url, body)

    # -- commit status --------------------------------------------------------------
    def commit_status(self, config: dict | None, env: str, revision: str | None, state: str,
                      description: str, run_id: str | None = None) -> None:
        """Queue a commit status; it links to the run's page (or the environment's) when
        the agent has an external URL."""
        if config and revision and len(revision) == 40:
            self.queue.put(("status", config, {"env": env, "revision": revision, "state": state,
                                               "description": description[:140],
                                               "url": page_url(self.external_url, env,
                                                               run_id)}))

    def _send_status(self, config: dict, status: dict) -> None:
        token = read_secret(config["token_file"])
        context = config.get("context") or f"gitops-ansible/{status['env']}"
        api = config["api_url"].rstrip("/")
        link = {"target_url": status["url"]} if status["url"] else {}
        if config["kind"] == "github":
            _post(f"{api}/repos/{config['repository']}/statuses/{status['revision']}",
                  {"state": status["state"], "description": status["description"],
                   "context": context, **link},
                  {"Accept": "application/vnd.github+json", "Authorization": f"Bearer {token}",
                   "X-GitHub-Api-Version": "2022-11-28"})
        else:
            project = urllib.parse.quote(config["repository"], safe="")
            _post(f"{api}/api/v4/projects/{project}/statuses/{status['revision']}",
                  {"state": GITLAB_STATES[status["state"]], "name": context,
                   "description": status["description"], **link},
                  {"PRIVATE-TOKEN": token})

    # -- the sender -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                self.queue.task_done()
                return
            kind, target, payload = item
            try:
                if kind == "alert":
                    self._send_alert(target, payload)
                else:
                    self._send_status(target, payload)
                self.sent += 1
            except (OSError, ValueError) as exc:  # urllib's URLError and HTTPError too
                reason = getattr(exc, "code", None) or getattr(exc, "reason", None) or \
                    type(exc).__name__
                self.log(f"{kind} to {target['kind']} for {payload['env']} failed: {reason}",
                         "warning", env=payload["env"])
            finally:
                self.queue.task_done()

    def close(self, timeout: float = 10) -> None:
        """Send what is queued (up to ``timeout``), then stop the sender."""
        self.queue.put(None)
        self.thread.join(timeout)
