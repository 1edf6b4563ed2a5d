"""Scheduling of the pull cycle: systemd service + timer units, or a crontab line.

The generated command runs ``gitops-ansible run`` with ``--lock fail``: a timer that
fires while the last cycle still works is skipped (exit 6), not queued. Exit codes 2
(changed), 3 (nothing to do) and 6 (busy) count as success for systemd.
"""
from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SUCCESS_CODES = "2 3 6"


class ScheduleError(ValueError):
    pass


@dataclass
class Schedule:
    env: str
    command: list[str]   # the full run command, executable first
    interval_minutes: int = 5
    randomized_delay: int = 60
    name: str | None = None
    user: str | None = None

    @property
    def unit(self) -> str:
        return self.name or f"gitops-ansible-{self.env}"


def executable() -> str:
    """The installed console script next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "gitops-ansible"
    return str(beside) if beside.exists() else (shutil.which("gitops-ansible") or "gitops-ansible")


def run_command(env: str, repo: str | None, ref: str | None, config: str | None,
                extra: list[str]) -> list[str]:
    cmd = [executable(), "run", "--env", env, "--lock", "fail"]
    if repo:
        cmd += ["--repo", repo]
    if ref:
        cmd += ["--ref", ref]
    if config:
        cmd += ["--config", str(Path(config).resolve())]
    return cmd + list(extra)


def _systemd_quote(command: list[str]) -> str:
    return shlex.join(command).replace("%", "%%")


def service_unit(schedule: Schedule) -> str:
    user = f"User={schedule.user}\n" if schedule.user else ""
    return f"""[Unit]
Description=gitops-ansible pull cycle for environment {schedule.env}
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
# Settings and secrets such as GITOPS_ANSIBLE_GIT_TOKEN (optional file)
EnvironmentFile=-/etc/gitops-ansible/env
ExecStart={_systemd_quote(schedule.command)}
SuccessExitStatus={SUCCESS_CODES}
{user}Nice=5
"""


def timer_unit(schedule: Schedule) -> str:
    return f"""[Unit]
Description=Run gitops-ansible for {schedule.env} every {schedule.interval_minutes} min

[Timer]
OnBootSec=1min
OnUnitInactiveSec={schedule.interval_minutes}min
RandomizedDelaySec={schedule.randomized_delay}
Unit={schedule.unit}.service

[Install]
WantedBy=timers.target
"""


def write_systemd(schedule: Schedule, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    service = directory / f"{schedule.unit}.service"
    timer = directory / f"{schedule.unit}.timer"
    service.write_text(service_unit(schedule))
    timer.write_text(timer_unit(schedule))
    return [service, timer]


def cron_line(schedule: Schedule, log_file: str | None = None) -> str:
    minutes = schedule.interval_minutes
    if 0 < minutes < 60 and 60 % minutes == 0:
        when = f"*/{minutes} * * * *" if minutes > 1 else "* * * * *"
    elif minutes % 60 == 0 and 24 % (minutes // 60) == 0:
        when = f"0 */{minutes // 60} * * *"
    else:
        raise ScheduleError(f"--interval {minutes}: cron needs a divisor of 60 minutes or of "
                            "24 hours (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, ...)")
    command = schedule.command + (["--splay", str(schedule.randomized_delay)]
                                  if schedule.randomized_delay else [])
    log = log_file or f"/var/log/{schedule.unit}.log"
    return f"{when} {shlex.join(command)} >>{shlex.quote(log)} 2>&1"


def parse_interval(text: str) -> int:
    """Minutes from '5', '5m', '5min', '2h'."""
    match = re.fullmatch(r"(\d+)\s*(m|min|h)?", text.strip())
    if not match or int(match.group(1)) == 0:
        raise ScheduleError(f"--interval {text!r}: expected minutes like 5, 5m or 2h")
    value = int(match.group(1))
    return value * 60 if match.group(2) == "h" else value
