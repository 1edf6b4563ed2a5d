"""Problems with the input, found before any target is touched.

A ``Problem`` names the file (and line, when known) it comes from; ``Refused`` carries
every problem found, not just the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class Refused(Exception):
    """The revision cannot be converged: bad input, found before touching anything.
    ``retry``: the cause may pass by itself (a Galaxy server that is down), so the revision
    is not marked refused and the next cycle tries it again."""

    def __init__(self, problems: list[Problem], retry: bool = False):
        self.problems, self.retry = problems, retry
        super().__init__("; ".join(str(p) for p in problems))


def refuse(problems: list[Problem]) -> None:
    if problems:
        raise Refused(problems)


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def text_lines(text) -> list[str]:
    """The lines of a message that say something, stripped."""
    return [line.strip() for line in str(text or "").splitlines() if line.strip()]


def first_line(exc: Exception) -> str:
    """The first line of an error (Ansible's carry the source below it)."""
    return (text_lines(exc) or [type(exc).__name__])[0]
