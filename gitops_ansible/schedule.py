"""Scheduling of the pull cycle: systemd service + timer units, or a crontab line.

The generated command runs ``gitops-ansible run`` with ``--lock fail``: a timer that
fires while the last cycle still works is skipped (exit 6), not queued. Exit codes 2
(changed), 3 (nothing to do) and 6 (busy) count as success for systemd.

Every value that goes into a unit or a crontab line is checked first (names against
``names``, no control characters anywhere) and quoted: one flag can never add a line, a
unit directive or a crontab entry, nor write a unit outside the output directory.
"""
from __future__ import annotations

import re
import shlex
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import names

SUCCESS_CODES = "2 3 6"
SYSTEMD_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


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

    def __post_init__(self):
        with _refusal():
            names.env_name(self.env, "--env")
            if self.name is not None:
                names.unit_name(self.name, "--name")
            if self.user is not None:
                names.user_name(self.user, "--user")
        _count(self.interval_minutes, "--interval", 1)
        _count(self.randomized_delay, "--randomized-delay", 0)

    @property
    def unit(self) -> str:
        return self.name or f"gitops-ansible-{self.env}"


@contextmanager
def _refusal():
    """A bad name or path as a ScheduleError, the error install-* report."""
    try:
        yield
    except (names.InvalidName, names.Outside) as exc:
        raise ScheduleError(str(exc)) from None


def _count(value, flag: str, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ScheduleError(f"{flag} {value!r}: expected a whole number >= {least}")
    return value


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


def _one_line(value: str) -> str:
    with _refusal():
        return names.one_line(str(value), "value for a unit or crontab line")


def _systemd_text(value: str) -> str:
    """A plain setting such as Description=: systemd expands %-specifiers in it."""
    return _one_line(value).replace("%", "%%")


def _systemd_word(word: str) -> str:
    """One ExecStart= word: bare when plain, else double-quoted. systemd unescapes \\ and
    \" in it, expands %-specifiers before and $VARIABLES after splitting the line ("%%"
    and "$$" are the literals), and takes a lone ; as the start of another command."""
    text = _systemd_text(word)
    if SYSTEMD_PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def _systemd_quote(command: list[str]) -> str:
    return " ".join(map(_systemd_word, command))


def _cron_word(word: str) -> str:
    """One shell word for a crontab command. Cron turns every unescaped % into a newline
    (and what follows into the command's stdin) before the shell sees the line, and drops
    the backslash of \\%: so % goes between the shell-quoted pieces as \\%."""
    return "\\%".join(shlex.quote(piece) for piece in _one_line(word).split("%"))


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


def write_units(directory: Path, units: dict[str, str]) -> list[Path]:
    """Write {file name: text} into ``directory``, refusing a file that resolves outside
    it (a symlink left there): every text is built before the first file is written."""
    directory.mkdir(parents=True, exist_ok=True)
    with _refusal():
        paths = {names.inside(directory / name, directory): text for name, text in units.items()}
    for path, text in paths.items():
        path.write_text(text)
    return list(paths)


def write_systemd(schedule: Schedule, directory: Path) -> list[Path]:
    return write_units(directory, {f"{schedule.unit}.service": service_unit(schedule),
                                   f"{schedule.unit}.timer": timer_unit(schedule)})


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
    return f"{when} {' '.join(map(_cron_word, command))} >>{_cron_word(log)} 2>&1"


def parse_interval(text: str) -> int:
    """Minutes from '5', '5m', '5min', '2h'."""
    match = re.fullmatch(r"(\d+)\s*(m|min|h)?", text.strip())
    if not match or int(match.group(1)) == 0:
        raise ScheduleError(f"--interval {text!r}: expected minutes like 5, 5m or 2h")
    value = int(match.group(1))
    return value * 60 if match.group(2) == "h" else value


def agent_unit(name: str, config: str, user: str | None = None) -> str:
    """The agent as a service: restarted on failure; SIGTERM lets the running cycle finish
    within the config's grace (TimeoutStopSec leaves room for it); reload sends SIGHUP."""
    with _refusal():
        names.unit_name(name, "--name")
        if user is not None:
            names.user_name(user, "--user")
    command = _systemd_quote([executable(), "agent", "--config", config])
    account = (f"User={user}\nGroup={user}\n" if user else
               "# Run it as a dedicated user: see the README (User=gitops-ansible)\n")
    return f"""[Unit]
Description=gitops-ansible agent ({_systemd_text(config)})
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
EnvironmentFile=-/etc/gitops-ansible/env
ExecStart={command}
ExecReload=/bin/kill -HUP $MAINPID
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=15min
Restart=on-failure
RestartSec=10s
{account}StateDirectory=gitops-ansible
Nice=5

[Install]
WantedBy=multi-user.target
"""


def write_agent_unit(directory: Path, name: str, config: str, user: str | None = None) -> Path:
    return write_units(directory, {f"{name}.service": agent_unit(name, config, user)})[0]


def check_agent_config(path: str) -> str:
    """The agent file as an absolute path, once it loads as the agent would load it: a unit
    whose agent refuses its file would only fail and restart, every 10 s."""
    from .config import ConfigError, load_agent

    try:
        load_agent(path)
    except ConfigError as exc:
        raise ScheduleError(f"--config {path}: the agent cannot start with it: {exc}") from None
    return str(Path(path).resolve())

# -- maintenance windows (the agent) --------------------------------------------------
CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
               ("day of week", 0, 7))


def parse_cron_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    """One crontab field: ``*``, ``5``, ``1-5``, ``*/15``, ``0-30/10`` and lists of them."""
    values: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", part.strip())
        if not match:
            raise ScheduleError(f"{name} {part!r}: expected *, N, N-M or */STEP")
        span, step = match.group(1), int(match.group(2) or 1)
        if span == "*":
            first, last = low, high
        else:
            first, _, end = span.partition("-")
            first, last = int(first), int(end or first)
        if not (low <= first <= last <= high) or step == 0:
            raise ScheduleError(f"{name} {part!r}: expected values {low}-{high}")
        values.update(range(first, last + 1, step))
    if name == "day of week" and 7 in values:  # 7 is Sunday too
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A five-field crontab schedule; ``matches`` a wall-clock minute."""
    text: str
    fields: tuple

    @classmethod
    def parse(cls, text: str) -> "Cron":
        parts = text.split()
        if len(parts) != 5:
            raise ScheduleError(f"{text!r}: expected five fields (minute hour day month weekday)")
        return cls(text, tuple(parse_cron_field(p, *spec) for p, spec in zip(parts, CRON_FIELDS)))

    def matches(self, when) -> bool:
        minute, hour, day, month, weekday = self.fields
        return (when.minute in minute and when.hour in hour and when.month in month
                and when.day in day and (when.isoweekday() % 7) in weekday)


def parse_duration(text) -> float:
    """Seconds from 90, '90', '90s', '15m', '2h', '1d' (also '1h30m')."""
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text >= 0:
        return float(text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)", str(text).strip())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", str(text)):
        raise ScheduleError(f"{text!r}: expected a duration such as 30s, 5m, 2h or 1h30m")
    return sum(float(number) * units[unit] for number, unit in parts)


@dataclass(frozen=True)
class Window:
    """A maintenance window: from every minute that ``cron`` matches, for ``duration``,
    in ``timezone``. ``allow`` windows: changing runs only inside one of them; ``deny``
    windows: never inside one."""
    kind: str  # allow | deny
    cron: Cron
    duration: float
    timezone: str

    def active(self, now: float) -> bool:
        from datetime import datetime, timedelta
        from zoneinfo import ZoneInfo

        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone)).replace(second=0,
                                                                             microsecond=0)
        steps = max(1, int(self.duration // 60))
        # Walk back over the window's length: active if a start lies within it.
        return any(self.cron.matches(local - timedelta(minutes=back)) for back in range(steps))

    def describe(self) -> str:
        return f"{self.kind} '{self.cron.text}' for {self.duration / 60:g} min ({self.timezone})"


def parse_window(data: dict) -> Window:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    kinds = [k for k in ("allow", "deny") if k in data]
    if len(kinds) != 1:
        raise ScheduleError("expected exactly one of allow = \"CRON\" or deny = \"CRON\"")
    unknown = set(data) - {"allow", "deny", "duration", "timezone"}
    if unknown:
        raise ScheduleError(f"unknown keys {sorted(unknown)}: expected allow|deny, duration, "
                            "timezone")
    if "timezone" not in data:
        raise ScheduleError("timezone is required (an IANA name such as Europe/Berlin or UTC)")
    try:
        ZoneInfo(str(data["timezone"]))
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"timezone {data['timezone']!r}: expected an IANA time zone name "
                            "such as Europe/Berlin or UTC") from None
    duration = parse_duration(data.get("duration", "1h"))
    if not 60 <= duration <= 7 * 86400:
        raise ScheduleError(f"duration {data.get('duration')!r}: expected 1m to 7d")
    return Window(kinds[0], Cron.parse(str(data[kinds[0]])), duration, str(data["timezone"]))


def blocking_window(windows, now: float) -> str | None:
    """Why a changing run may not start now (None: it may)."""
    for window in windows:
        if window.kind == "deny" and window.active(now):
            return f"inside deny window {window.describe()}"
    allows = [w for w in windows if w.kind == "allow"]
    if allows and not any(w.active(now) for w in allows):
        return "outside every allow window (" + "; ".join(w.describe() for w in allows) + ")"
    return None
