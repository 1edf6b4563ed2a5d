"""The command line: parse, call the library, print. Nothing else lives here."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import shlex
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from . import __version__
from . import config as config_mod
from . import records
from .report import ConsoleReporter, ExitCode, save_traceback, table
from .records import short, short_signer, when
from .store import Mode, StoreError

CYCLE_FLAGS = ["env", "state_dir", "playbook", "inventory_dir", "vault_password_file", "check",
               "diff", "limit", "tags", "skip_tags", "lock", "lock_timeout", "timeout",
               "preflight", "preflight_timeout", "known_hosts", "keep_runs", "galaxy_timeout",
               "idle_timeout", "task_timeout", "ssh_keepalive", "min_free_mb", "scope", "slicing",
               "json"]
GIT_FLAGS = ["repo", "ref", "workdir", "ssh_key", "accept_host_key", "git_token_file",
             "git_token_user", "git_timeout", "keep_checkouts"]
# rollback ENV, promote ENV: a complete pull cycle of ENV (no --env, no partial run)
HAND_FLAGS = [f for f in CYCLE_FLAGS if f not in ("env", "check", "limit", "tags", "skip_tags")]
POLICY_FLAGS = ["verify", "trusted_gpg_keys", "trusted_ssh_signers", "seal_trailer",
                "promote_from", "soak"]
COMMAND_FLAGS = {
    "run": CYCLE_FLAGS + GIT_FLAGS + POLICY_FLAGS + ["splay", "force"],
    "push": CYCLE_FLAGS + POLICY_FLAGS + ["path"],
    "plan": CYCLE_FLAGS + GIT_FLAGS + POLICY_FLAGS + ["path", "base"],
    "rollback": HAND_FLAGS + GIT_FLAGS + POLICY_FLAGS,
    "promote": HAND_FLAGS + GIT_FLAGS + POLICY_FLAGS,
    "check-hosts": ["env", "path", "state_dir", "workdir", "inventory_dir", "playbook",
                    "vault_password_file", "known_hosts", "preflight_timeout", "json"],
    "status": ["env", "state_dir", "json"],
    "history": ["env", "state_dir", "json"],
    "agent": ["state_dir", "json"],
    "suspend": ["state_dir"],
    "resume": ["state_dir"],
    "unpin": ["state_dir"],
    "events": ["state_dir", "json"],
}
DEFAULT_AGENT_CONFIG = "/etc/gitops-ansible/agent.toml"


class Parser(argparse.ArgumentParser):
    """Usage errors exit 5 (refused): argparse's 2 is this tool's "changed"."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.REFUSED), f"{self.prog}: error: {message}\n")


def add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    option = config_mod.SCHEMA[name]
    flag = "--" + name.replace("_", "-")
    kwargs = dict(dest=name, default=argparse.SUPPRESS, help=option.help)
    if option.kind == "bool":
        parser.add_argument(flag, action="store_true", **kwargs)
    elif option.kind == "choice":
        parser.add_argument(flag, choices=option.choices, **kwargs)
    else:
        metavar = {"int": "N", "path": "PATH"}.get(option.kind, name.upper())
        parser.add_argument(flag, metavar=metavar, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gitops-ansible",
        description="Converge Kubernetes clusters, VMs and bare hosts on a Git repository "
                    "through Ansible, by pull (cron, timer) or push (CI).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML settings file (default: $GITOPS_ANSIBLE_CONFIG, "
                             "else /etc/gitops-ansible/config.toml if present)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "run": "one pull cycle (cron, systemd timer): fetch, converge if the revision is new",
        "push": "converge a local checkout now (CI): same plan, records and exit codes",
        "plan": "check mode with diff: show per host what would change; change nothing",
        "check-hosts": "SSH pre-flight: reachability and host keys of every SSH target",
        "status": "last applied and last good revision per environment",
        "history": "past runs with per-host outcome; with RUN_ID, one run's hosts and tasks",
        "install-timer": "write a systemd service+timer pair, or print a crontab line",
        "agent": "run as a long-running service: every source on its interval, webhooks, "
                 "drift checks, health and metrics",
        "sync": "ask a running agent for a cycle of one source or environment now",
        "suspend": "stop changing runs of an environment (pull, agent), with a reason",
        "resume": "let changing runs of a suspended environment start again",
        "rollback": "converge a revision this environment applied before, and pin it there",
        "unpin": "release a pin: the next cycle converges the newest revision again",
        "promote": "approve a revision past the promotion gate by hand (a hotfix), and "
                   "converge it",
        "events": "the per-host, per-task events of one run",
        "install-service": "write a systemd unit for the agent",
        "init": "scaffold a new GitOps repository (playbooks, inventories, a role, molecule)",
    }
    subs = {}
    for name, text in helps.items():
        subs[name] = commands.add_parser(name, help=text, description=text)
        subs[name].add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                                help="TOML settings file")
        for setting in COMMAND_FLAGS.get(name, []):
            add_setting(subs[name], setting)
    subs["history"].add_argument("run_id", nargs="?", help="show one run in detail")
    subs["history"].add_argument("-n", "--count", type=int, default=20, help="runs to show")
    timer = subs["install-timer"]
    kind = timer.add_mutually_exclusive_group(required=True)
    kind.add_argument("--systemd", action="store_true", help="write .service and .timer units")
    kind.add_argument("--cron", action="store_true", help="print a crontab line")
    timer.add_argument("--env", required=True, help="environment the timer converges")
    timer.add_argument("--repo", help="Git URL (else taken from the config file)")
    timer.add_argument("--ref", help="branch, tag or commit")
    timer.add_argument("--interval", default="5", help="minutes between cycles: 5, 15m, 1h")
    timer.add_argument("--randomized-delay", type=int, default=60, metavar="SECONDS",
                       help="random delay per cycle (RandomizedDelaySec, or --splay for cron)")
    timer.add_argument("--name", help="unit name (default gitops-ansible-ENV)")
    timer.add_argument("--user", help="systemd: run as this user")
    timer.add_argument("--output-dir", default="/etc/systemd/system", help="where units go")
    timer.add_argument("--log-file", help="cron: append output here")
    timer.add_argument("run_args", nargs="*", help="more `run` flags, after --")
    subs["agent"].add_argument("--listen", metavar="HOST:PORT", default=argparse.SUPPRESS,
                               help="address of the HTTP endpoint (default 127.0.0.1:9420)")
    subs["sync"].add_argument("name", help="source name or environment")
    subs["sync"].add_argument("--agent", metavar="URL", help="the agent's address (default: "
                              "from the config file's [agent] listen, else 127.0.0.1:9420)")
    for name in ("suspend", "resume", "unpin"):
        subs[name].add_argument("env", type=_env_arg, help="environment")
    subs["suspend"].add_argument("--reason", required=True, help="shown by status and the API")
    subs["unpin"].add_argument("--reason", help="kept in the history")
    back = subs["rollback"]
    back.add_argument("target_env", metavar="ENV", type=_env_arg, help="environment")
    which = back.add_mutually_exclusive_group()
    which.add_argument("--to", metavar="REVISION", help="a revision it applied with no failed "
                       "host (a commit id or its start; default: the one before the applied)")
    which.add_argument("--run", metavar="RUN_ID", help="the revision that run applied")
    back.add_argument("--reason", required=True, help="kept in the history, shown by status")
    promote = subs["promote"]
    promote.add_argument("target_env", metavar="ENV", type=_env_arg, help="environment")
    promote.add_argument("--revision", required=True, help="the commit to let through")
    promote.add_argument("--reason", required=True, help="kept in the history")
    subs["events"].add_argument("run_id", help="the run (see history)")
    service = subs["install-service"]
    service.add_argument("--systemd", action="store_true", required=True,
                         help="write a systemd service unit")
    service.add_argument("--name", default="gitops-ansible-agent", help="unit name")
    service.add_argument("--user", help="run as this (dedicated) user")
    service.add_argument("--output-dir", default="/etc/systemd/system", help="where the unit goes")
    init = subs["init"]
    init.add_argument("dir", help="directory of the new repository (created if missing)")
    init.add_argument("--platform", default="baremetal",
                      help="name of the first platform (kubernetes: a cluster target with "
                           "this project's playbook and role k8s_manifests)")
    init.add_argument("--role", help="name of its role (default PLATFORM_base; not for "
                                     "kubernetes)")
    init.add_argument("--force", action="store_true", help="write into a non-empty directory")
    return parser


def load_settings(args) -> config_mod.Settings:
    flags = {k: v for k, v in vars(args).items() if k in config_mod.SCHEMA}
    return config_mod.load(flags, getattr(args, "config", None), os.environ, system=True)


# An OSError with one of these is the operator's input (a state dir that is a file, not
# writable, a name too long): refused. Others (a full disk, an I/O error) are errors.
REFUSED_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                  errno.ENAMETOOLONG, errno.ENOENT, errno.EEXIST}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settings = None
    try:
        if args.command == "install-timer":
            return cmd_install_timer(args)
        if args.command == "init":
            return cmd_init(args)
        if args.command in ("agent", "sync", "install-service"):
            return {"agent": cmd_agent, "sync": cmd_sync,
                    "install-service": cmd_install_service}[args.command](args)
        settings = load_settings(args)
        handler = {"run": cmd_cycle, "push": cmd_cycle, "plan": cmd_cycle,
                   "check-hosts": cmd_check_hosts, "status": cmd_status,
                   "history": cmd_history, "suspend": cmd_suspend, "resume": cmd_resume,
                   "events": cmd_events, "rollback": cmd_rollback, "unpin": cmd_unpin,
                   "promote": cmd_promote}[args.command]
        return handler(args, settings)
    except records.NotAllowed as exc:
        return fail(str(exc), ExitCode.REFUSED)
    except config_mod.ConfigError as exc:
        return fail(f"config error: {exc}", ExitCode.REFUSED)
    except StoreError as exc:  # a store that cannot be used (5), or not now (1)
        return fail(str(exc), exc.exit_code)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}",
                    ExitCode.REFUSED if exc.errno in REFUSED_ERRNOS else ExitCode.ERROR)
    except Exception as exc:  # a bug: one line for the user, the traceback in a file
        settings = settings or config_mod.Settings(state_dir=getattr(args, "state_dir", None))
        saved = save_traceback(settings.state_path, time.strftime(
            f"{args.command}-%Y%m%dT%H%M%SZ", time.gmtime()))
        return fail(f"internal error: {type(exc).__name__}: {exc}{saved}", ExitCode.ERROR)


def fail(message: str, code: ExitCode) -> int:
    print(f"gitops-ansible: {message}", file=sys.stderr)
    return int(code)


def cmd_cycle(args, settings, trigger: str | None = None) -> int:
    from .reconcile import Cancel, Cancelled, cycle

    if args.command == "plan" and settings.sources["path"] != "default" and settings.repo:
        return fail("plan: --path and --repo exclude each other: plan a local checkout "
                    "(--path) or a revision of the repository (--repo)", ExitCode.REFUSED)
    mode = {"push": Mode.PUSH, "plan": Mode.PLAN}.get(args.command, Mode.PULL)
    cancel = Cancel()

    def stop(signum, _frame):
        print(f"gitops-ansible: {signal.Signals(signum).name}: cancelling the run",
              file=sys.stderr)
        signal.signal(signum, signal.SIG_DFL)
        cancel.request()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    reporter = ConsoleReporter(settings.json, show_diff=settings.diff or mode is Mode.PLAN)
    try:
        result = cycle(settings, mode, reporter, trigger or _trigger(mode), cancel,
                       started_by=_who())
    except Cancelled:
        return fail("cancelled by a signal before the run started; nothing was changed",
                    ExitCode.ERROR)
    if settings.json:
        reporter.emit("cycle_result", **result.as_dict())
    return int(result.exit_code)


def _who() -> str:
    """Who started a run from the command line: user@host, and the CI job when there is
    one (GitLab's CI_JOB_URL, GitHub's run)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    job = os.environ.get("CI_JOB_URL") or (
        f"{os.environ['GITHUB_SERVER_URL']}/{os.environ.get('GITHUB_REPOSITORY', '')}/actions/"
        f"runs/{os.environ['GITHUB_RUN_ID']}" if os.environ.get("GITHUB_RUN_ID")
        and os.environ.get("GITHUB_SERVER_URL") else None)
    return f"{user}@{socket.gethostname()}" + (f" (CI job {job})" if job else "")


def _trigger(mode: Mode) -> str:
    """schedule (cron, timer: no terminal), ci (CI set) or manual (a person at a terminal)."""
    if mode is Mode.PULL and not sys.stdin.isatty():
        return "schedule"
    return "ci" if os.environ.get("CI") and mode is not Mode.PULL else "manual"


def _checkout_for(settings) -> Path:
    """The checkout to inspect: --path if given, else the pull checkout in use, else '.'."""
    from . import source

    if settings.sources.get("path", "default") == "default" and settings.env:
        current = source.current(settings)
        if current:
            return current[1]
    return Path(settings.path).expanduser().resolve()


def cmd_check_hosts(args, settings) -> int:
    from . import inventory, requirements
    from .preflight import check_hosts

    settings.require("env")
    checkout = _checkout_for(settings)
    try:  # validated as a run validates it: with the collections its requirements install
        inv = inventory.load(checkout, settings, requirements.install(checkout, settings))
    except inventory.Refused as exc:
        for problem in exc.problems:
            print(f"refused: {problem}", file=sys.stderr)
        return ExitCode.REFUSED
    checks = check_hosts(inv, settings)
    if settings.json:
        print(json.dumps([vars(c) for c in checks], indent=2))
    else:
        print(table(("HOST", "ADDRESS", "STATUS", "SECONDS", "DETAIL"),
                    [(c.host, f"{c.address}:{c.port}", c.status, f"{c.seconds:.2f}", c.detail)
                     for c in checks]), end="")
    return ExitCode.OK if all(c.ok for c in checks) else ExitCode.FAILED


def cmd_status(args, settings) -> int:
    envs = records.status(settings.state_path, settings.env)
    if settings.json:
        print(json.dumps([e.as_dict() for e in envs], indent=2, default=str))
        return ExitCode.OK
    if not envs:
        print("no runs recorded yet")
        return ExitCode.OK
    rows = []
    for env in envs:
        state, last = env.state, env.last_run or {}
        rows.append((state.env, short(state.applied_revision), when(state.applied_at),
                     short_signer(state.applied_signer), short(state.good_revision),
                     short(state.candidate_revision), when(state.checked_at),
                     f"{last.get('status', '-')} ({last.get('id', '-')})",
                     "; ".join(env.attention()) or "-"))
    print(table(("ENV", "APPLIED", "APPLIED AT", "SIGNED BY", "LAST GOOD", "CANDIDATE",
                 "LAST CHECK", "LAST RUN", "ATTENTION"), rows), end="")
    return ExitCode.OK


def cmd_history(args, settings) -> int:
    if args.run_id:
        return _show_run(settings, args.run_id)
    runs = records.history(settings.state_path, settings.env, args.count)
    if settings.json:
        print(json.dumps(runs, indent=2, default=str))
        return ExitCode.OK
    rows = []
    for run in runs:
        if "action" in run:  # a rollback, unpin or approval: what, when and why
            done = {"rollback": "pinned", "unpin": "unpinned", "approve": "approved"}
            rows.append((time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(run["at"])), run["env"],
                         run["action"], "manual", short(run["revision"]),
                         done[run["action"]], "-", "-", "-", _why(run)))
            continue
        took = f"{run['finished_at'] - run['started_at']:.1f}s" if run["finished_at"] else "-"
        hosts = " ".join(f"{h}:{o}" for h, o in run["hosts"].items()) or "-"
        mode = run["mode"] + (" (check)" if run["check_mode"] and run["mode"] != "plan" else "")
        rows.append((run["id"], run["env"], mode, run["trigger"], short(run["revision"]),
                     run["status"], str(run["exit_code"] if run["exit_code"] is not None
                                        else "-"), took, short_signer(run["signer"]), hosts))
    print(table(("RUN", "ENV", "MODE", "TRIGGER", "REVISION", "STATUS", "EXIT", "DURATION",
                 "SIGNED BY", "HOSTS"), rows), end="")
    return ExitCode.OK


def _run_or_fail(settings, run_id: str) -> dict | None:
    run = records.run_detail(settings.state_path, run_id)
    if run is None:
        print(f"gitops-ansible: no run {run_id}", file=sys.stderr)
    return run


def _show_run(settings, run_id: str) -> int:
    run = _run_or_fail(settings, run_id)
    if run is None:
        return ExitCode.REFUSED
    if settings.json:
        print(json.dumps(run, indent=2, default=str))
        return ExitCode.OK
    for key in ("id", "env", "mode", "trigger", "started_by", "ref", "revision", "subject",
                "author", "verify", "signer", "status", "exit_code", "message", "artifacts"):
        print(f"{key + ':':<12}{run[key] if run[key] is not None else '-'}")
    print(f"{'started:':<12}{when(run['started_at'])}  finished: {when(run['finished_at'])}")
    if run["hosts"]:
        print(table(("HOST", "PLATFORM", "OUTCOME", "OK", "CHANGED", "FAILED", "UNREACHABLE",
                     "MESSAGE"),
                    [(h["host"], h["platform"] or "-", h["outcome"], h["ok"], h["changed"],
                     h["failed"], h["unreachable"], h["message"] or "") for h in run["hosts"]]),
              end="")
    scope = run["scope"]
    if scope and not scope["full"]:
        print(f"{'scope:':<12}{len(scope['hosts'])} target(s) run, "
              f"{len(scope['unchanged'])} unchanged at this revision")
        for host, why in scope["hosts"].items():
            print(f"  {host:<20} {why}")
    elif scope:
        print(f"{'scope:':<12}every target ({scope['full']})")
    changed = [t for t in run["tasks"] if t["status"] in ("changed", "failed", "unreachable")]
    for task in changed:
        print(f"  {task['host']:<20} {task['status']:<11} {task['task']}"
              + (f"  {task['message']}" if task["message"] else ""))
    return ExitCode.OK


def _agent_config_path(args) -> str:
    return (getattr(args, "config", None) or os.environ.get("GITOPS_ANSIBLE_CONFIG")
            or DEFAULT_AGENT_CONFIG)


def cmd_agent(args) -> int:
    from .agent import Agent

    flags = {k: v for k, v in vars(args).items()
             if k in config_mod.SCHEMA or k in config_mod.AGENT_SCHEMA}
    try:
        agent = Agent(_agent_config_path(args), flags, environ=os.environ)
    except OSError as exc:
        print(f"gitops-ansible: agent: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    try:
        return agent.run()
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        listen = agent.config.agent["listen"]
        return fail(f"agent: cannot listen on {listen} ([agent] listen in {agent.config.path}"
                    f" or --listen): {exc.strerror}", ExitCode.REFUSED)


def cmd_sync(args) -> int:
    import urllib.error
    import urllib.request

    url = args.agent
    if not url:
        listen = "127.0.0.1:9420"
        path = _agent_config_path(args)
        if Path(path).is_file():
            listen = config_mod.load_agent(path).agent["listen"]
        url = "http://" + listen.replace("0.0.0.0", "127.0.0.1")
    if not re.fullmatch(r"https?://[^\s/]+/?", url):
        return fail(f"sync: --agent {url!r}: expected the agent's address as "
                    "http://HOST:PORT", ExitCode.REFUSED)
    request = urllib.request.Request(f"{url.rstrip('/')}/api/v1/sync/{args.name}", method="POST",
                                     data=b"{}", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"gitops-ansible: sync: {args.name}: no such source or environment "
              f"(HTTP {exc.code})", file=sys.stderr)
        return ExitCode.REFUSED
    except (OSError, urllib.error.URLError) as exc:
        print(f"gitops-ansible: sync: no agent answers at {url}: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    print("cycle requested: " + ", ".join(answer["triggered"]))
    return ExitCode.OK


def _env_arg(text: str) -> str:
    from .names import InvalidName, env_name
    try:
        return env_name(text)
    except InvalidName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_suspend(args, settings) -> int:
    records.suspend(settings.state_path, args.env, args.reason)
    print(f"{args.env}: suspended: {args.reason}")
    return ExitCode.OK


def cmd_resume(args, settings) -> int:
    reason = records.resume(settings.state_path, args.env)
    print(f"{args.env}: resumed" + (f" (was suspended: {reason})" if reason else
                                    " (it was not suspended)"))
    return ExitCode.OK


def _for_env(args, settings):
    """The settings of ``rollback ENV`` and ``promote ENV``: a pull cycle of ENV that
    converges now (forced: an earlier refusal of the revision is checked again)."""
    settings = dataclasses.replace(settings, env=args.target_env, force=True)
    settings.require("repo")
    return settings


def _why(action: dict) -> str:
    """An action's reason, and the revision a rollback went back from."""
    back = f" (back from {short(action['from_revision'])})" if action["from_revision"] else ""
    return f"reason: {action['reason'] or '-'}{back}"


def cmd_rollback(args, settings) -> int:
    from .verify import Policy

    settings = _for_env(args, settings)
    revision = records.rollback_target(settings.state_path, settings.env, args.to, args.run,
                                       verified=Policy.of(settings).active)
    records.pin(settings.state_path, settings.env, revision, args.reason)
    print(f"{settings.env}: pinned at {short(revision)} ({args.reason}); converging it. "
          f"`gitops-ansible unpin {settings.env}` lets newer revisions through again.")
    return cmd_cycle(args, settings, "rollback")


def cmd_unpin(args, settings) -> int:
    held = records.unpin(settings.state_path, args.env, args.reason)
    print(f"{args.env}: unpinned (was at {short(held)}); the next cycle converges the newest "
          "revision" if held else f"{args.env}: it was not pinned")
    return ExitCode.OK


def cmd_promote(args, settings) -> int:
    settings = _for_env(args, settings)
    if not settings.promote_from:
        return fail(f"promote: {settings.env} does not follow another environment (set "
                    "promote_from); `run` converges the newest revision", ExitCode.REFUSED)
    revision = records.promotable(settings.state_path, settings.promote_from, args.revision)
    state = records.approve(settings.state_path, settings.env, revision, args.reason)
    pinned = (f"; {settings.env} is pinned at {short(state.pinned_revision)}, and the pin "
              "wins until `unpin`" if state.pinned else "; converging it")
    print(f"{settings.env}: {short(revision)} approved past the promotion gate "
          f"({args.reason}){pinned}")
    return cmd_cycle(args, settings, "promote")


def cmd_events(args, settings) -> int:
    run = _run_or_fail(settings, args.run_id)
    if run is None:
        return ExitCode.REFUSED
    context = {"run_id": run["id"], "env": run["env"], "revision": run["revision"]}
    if settings.json:
        for task in run["tasks"]:
            print(json.dumps({**context, **task}, default=str))
        return ExitCode.OK
    print(f"run {run['id']}  env {run['env']}  revision {short(run['revision'])}  "
          f"{run['mode']}  {run['status']}")
    for task in run["tasks"]:
        took = f"{task['duration']:.1f}s" if task["duration"] else "-"
        role = f"{task['role']} : " if task["role"] else ""
        print(f"{task['seq']:>4}  {task['host']:<20} {task['status']:<11} {took:>6}  "
              f"{role}{task['task']}" + (f"  {task['message']}" if task["message"] else ""))
    return ExitCode.OK


def cmd_install_service(args) -> int:
    from . import schedule

    try:
        config = schedule.check_agent_config(_agent_config_path(args))
        path = schedule.write_agent_unit(Path(args.output_dir), args.name, config, args.user)
    except (schedule.ScheduleError, OSError) as exc:
        print(f"gitops-ansible: install-service: {exc}", file=sys.stderr)
        return ExitCode.REFUSED
    print(f"wrote {path}")
    print(f"enable with: systemctl daemon-reload && systemctl enable --now {args.name}.service")
    return ExitCode.OK


def cmd_install_timer(args) -> int:
    from . import schedule

    if args.systemd and args.log_file:
        return fail("install-timer: --log-file is for --cron (systemd units log to the "
                    "journal)", ExitCode.REFUSED)
    try:
        minutes = schedule.parse_interval(args.interval)
        command = schedule.run_command(args.env, args.repo, args.ref, args.config,
                                       args.run_args)
        plan = schedule.Schedule(args.env, command, minutes, args.randomized_delay,
                                 args.name, args.user)
        if args.cron:
            print(schedule.cron_line(plan, args.log_file))
            return ExitCode.OK
        paths = schedule.write_systemd(plan, Path(args.output_dir))
    except (schedule.ScheduleError, OSError) as exc:
        print(f"gitops-ansible: install-timer: {exc}", file=sys.stderr)
        return ExitCode.REFUSED
    for path in paths:
        print(f"wrote {path}")
    print(f"enable with: systemctl daemon-reload && systemctl enable --now {plan.unit}.timer")
    return ExitCode.OK


def cmd_init(args) -> int:
    from . import scaffold

    dest = Path(args.dir)
    try:
        paths = scaffold.init(dest, args.platform, args.role, args.force)
    except (scaffold.ScaffoldError, OSError) as exc:
        print(f"gitops-ansible: init: {exc}", file=sys.stderr)
        return ExitCode.REFUSED
    try:
        revision = scaffold.commit(dest, paths)
    except scaffold.ScaffoldError as exc:
        print(f"gitops-ansible: init: files written, no commit: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    made = (f"first commit {revision[:12]} on branch main" if revision else
            "inside an existing Git repository: review and commit them")
    print(f"created a GitOps repository in {dest} ({len(paths)} files); {made}")
    # a molecule scenario where init wrote one (not for Kubernetes clusters)
    scenario = any(path.relative_to(dest).parts[0] == "molecule" for path in paths)
    print(INIT_NEXT.format(dir=shlex.quote(str(dest)), url=shlex.quote(
        f"file://{dest.resolve()}"), molecule=" && molecule test" if scenario else ""))
    return ExitCode.OK


INIT_NEXT = """next steps:
  cd {dir}
  $EDITOR inventories/dev/hosts.yml      # your targets, then: git commit -am 'dev targets'
  gitops-ansible plan --path . --env dev # what would change; nothing is changed
  gitops-ansible push --path . --env dev # converge from this checkout (push mode, CI)
  gitops-ansible run --repo {url} --env dev
                                         # pull mode: converge the newest commit; then point
                                         # --repo at your Git server and install-timer
  ansible-lint && yamllint .{molecule}   # check the roles"""


if __name__ == "__main__":
    sys.exit(main())
