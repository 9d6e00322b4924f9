"""Following a long operation on the manager with a progress line (drain, rebalance plan, volume move).

Each command says how to fetch the operation, whether it is still under way, its one-line progress
and what to tell the user when the CLI stops waiting (the operation itself goes on).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from softudc.cli.errors import CliError

Progress = dict[str, Any]


def follow_progress(first: Progress, fetch: Callable[[], Progress], busy: Callable[[Progress], bool],
                    line: Callable[[Progress], str], timeout: float, goes_on: Callable[[Progress], str],
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> Progress:
    """Redraw `line(p)` on stderr every second until `busy(p)` is false; a CliError after `timeout` s
    saying `goes_on(p)` (how to follow it again)."""
    p, start = first, clock()
    while busy(p):
        if clock() - start > timeout:
            raise CliError(f"{line(p)} after {timeout:g} s{goes_on(p)}")
        print(f"\r  {line(p)}", end="", file=sys.stderr, flush=True)
        sleep(1.0)
        p = fetch()
    print(file=sys.stderr)
    return p
