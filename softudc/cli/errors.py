"""The command line's one error type.

Anything the CLI can tell the operator in one sentence (a refused request, a missing file, a lab
that is not up) is raised as a `CliError` whose message says what to do next; `softudc.cli.main`
prints it as `softudc: MESSAGE` and exits with status 1. Library code under `softudc.lab` raises its
own subclass, `LabError`, so callers outside the CLI can still catch lab problems alone.
"""

from __future__ import annotations

import sys
from typing import Any


class CliError(Exception):
    """A problem the operator can fix; the message names the fix."""


def ok(status: int, body: Any) -> Any:
    """The body of a 200; anything else a CliError with the manager's message (its problems printed)."""
    if status != 200:
        message = body.get("error", body) if isinstance(body, dict) else body
        for p in body.get("problems", []) if isinstance(body, dict) else []:
            print(p, file=sys.stderr)
        raise CliError(f"manager: {message}")
    return body
