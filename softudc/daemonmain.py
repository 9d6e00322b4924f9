"""The one `main()` of the host daemons (gatekeeper, vnetd): `--config FILE`, logging to stderr,
the daemon's asyncio `run(config_path)`, and a configuration problem printed as `PROG: MESSAGE`
with exit status 2 (the message names the file and the field; a traceback would hide it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from softudc.configfile import ConfigError

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def daemon_main(prog: str, description: str, run: Callable[[str], Coroutine[Any, Any, None]],
                argv: Sequence[str] | None = None, config_help: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help=config_help)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        asyncio.run(run(args.config))
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)
