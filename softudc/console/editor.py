"""The descriptor editor's error view: the CLI's `file:line:col: message` problems put at their
lines of the text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PROBLEM = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$", re.S)


@dataclass
class Line:
    number: int
    text: str
    problems: list[str] = field(default_factory=list)


def annotate(text: str, problems: list[str]) -> tuple[list[Line], list[str]]:
    """The lines of `text`, each with the problems at it, and the problems naming no line of it."""
    lines = [Line(n, t) for n, t in enumerate(text.splitlines() or [""], start=1)]
    loose = []
    for p in problems:
        m = PROBLEM.match(p)
        n = int(m.group("line")) if m else 0
        if 1 <= n <= len(lines):
            lines[n - 1].problems.append(p)
        else:
            loose.append(p)
    return lines, loose
