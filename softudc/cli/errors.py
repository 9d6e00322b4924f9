"""The command line's one error type.

Anything the CLI can tell the operator in one sentence (a refused request, a missing file, a lab
that is not up) is raised as a `CliError` whose message says what to do next; `softudc.cli.main`
prints it as `softudc: MESSAGE` and exits with status 1. Library code under `softudc.lab` raises its
own subclass, `LabError`, so callers outside the CLI can still catch lab problems alone.
"""

from __future__ import annotations


class CliError(Exception):
    """A problem the operator can fix; the message names the fix."""
