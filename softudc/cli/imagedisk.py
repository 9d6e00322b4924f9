"""`softudc image` subcommands (see softudc/cli/image.py)."""

from __future__ import annotations

from typing import Any


def add_subcommands(commands: Any) -> None:
    """Adds this part's subcommands to the `image` group."""
