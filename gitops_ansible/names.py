"""Names the tool turns into file names, unit files and crontab lines, checked against one
documented pattern each before any file is touched; and the check that a path the tool is
about to write stays under its directory.

- environment name: 1 to 63 characters of ``a-z 0-9 . _ -``, starting with a letter or a
  digit, without ``..`` (``[a-z0-9][a-z0-9._-]{0,62}``). It names a directory under the
  inventory root, the lock file, the mirror and the checkouts under the state directory.
- unit name: systemd's characters ``A-Z a-z 0-9 : _ . -``, starting with a letter or a
  digit, at most 247 characters, so that NAME.service fits systemd's 255; without a suffix
  (the tool adds .service and .timer) and without ``@`` (templates are not generated).
- user name: a systemd ``User=`` value: a name of ``A-Z a-z 0-9 _ . -`` starting with a
  letter or ``_``, at most 31 characters, or a numeric id.
"""
from __future__ import annotations

import re
from pathlib import Path

ENV_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ENV_EXPECTED = ("an environment name: 1 to 63 characters of a-z, 0-9, '.', '_' and '-', "
                "starting with a letter or a digit, without '..'")
UNIT_MAX = 255 - len(".service")
UNIT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.-]*")
UNIT_EXPECTED = (f"a systemd unit name: 1 to {UNIT_MAX} characters of A-Z, a-z, 0-9, ':', "
                 "'_', '.' and '-', starting with a letter or a digit, without .service or "
                 ".timer (they are added)")
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,30}|[0-9]{1,10}")
USER_EXPECTED = ("a user name: up to 31 characters of A-Z, a-z, 0-9, '_', '.' and '-', "
                 "starting with a letter or '_', or a numeric id")
# C0 controls, DEL and C1 controls: a newline or a carriage return ends a line of a unit
# file or a crontab; the others have no business in a command line either.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidName(ValueError):
    """A value that does not match its documented pattern; ``expected`` says what would."""

    def __init__(self, what: str, value, expected: str):
        self.what, self.value, self.expected = what, value, expected
        super().__init__(f"{what} {shown(value)}: expected {expected}")


class Outside(ValueError):
    """A path the tool would write resolves outside the directory it belongs to."""


def shown(value) -> str:
    """A value for a message: quoted, control characters visible; a long one keeps its
    start and its end (where a path has its file name)."""
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:30]!r}...{value[-40:]!r} ({len(value)} characters)"
    return repr(value)


def env_name(value, what: str = "environment name") -> str:
    if not isinstance(value, str) or not ENV_RE.fullmatch(value) or ".." in value:
        raise InvalidName(what, value, ENV_EXPECTED)
    return value


def unit_name(value, what: str = "unit name") -> str:
    if (not isinstance(value, str) or not UNIT_RE.fullmatch(value) or len(value) > UNIT_MAX
            or value.endswith((".service", ".timer"))):
        raise InvalidName(what, value, UNIT_EXPECTED)
    return value


def user_name(value, what: str = "user") -> str:
    if not isinstance(value, str) or not USER_RE.fullmatch(value):
        raise InvalidName(what, value, USER_EXPECTED)
    return value


def one_line(value: str, what: str = "value") -> str:
    """``value`` if it holds no control character (newline, carriage return, NUL, ...)."""
    found = CONTROL_RE.search(value)
    if found:
        raise InvalidName(what, value, f"text without control characters (found "
                                       f"{found.group()!r} at position {found.start()})")
    return value


def inside(path: Path, directory: Path) -> Path:
    """``path`` resolved (symlinks included) if it lies under ``directory`` (resolved too)."""
    try:
        base, resolved = Path(directory).resolve(), Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a NUL in the name
        raise Outside(f"{path}: cannot be resolved ({exc}): refusing to write there") from None
    if not resolved.is_relative_to(base):
        raise Outside(f"{path} resolves to {resolved}, outside {base}: refusing to write there")
    return resolved
