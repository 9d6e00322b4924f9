"""`softudc image ...`: the image store's commands. This module makes the group; each part of the
work adds its own subcommands (cli/imagestore.py: the store and its tags, GC, verify;
cli/imageimport.py: import and build; cli/imagesee.py: inspect, diff, search, patch;
cli/imagedisk.py: materialize and boot). Which store they work on: cli/imagedir.py."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

from softudc.cli.errors import CliError
from softudc.cli.imagedir import IMAGES_ENV


def add_parsers(sub: Any) -> None:
    from softudc.cli import imagedisk, imageimport, imagesee, imagestore

    group = sub.add_parser("image", help="master images: manifests over a shared content store")
    group.add_argument("--images", metavar="DIR", help=f"the image store (default: ${IMAGES_ENV}, else "
                       "the state directory's images/)")
    commands = group.add_subparsers(dest="sub", required=True)
    for part in (imagestore, imageimport, imagesee, imagedisk):
        part.add_subcommands(commands)
    for parser in commands.choices.values():
        if (fn := parser.get_default("fn")) is not None:
            parser.set_defaults(fn=_plain_errors(fn))


def _plain_errors(fn: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    """The image library's errors already say what to do: the CLI prints them as they are."""
    from softudc.images.content import IntegrityError
    from softudc.images.gc import GcError
    from softudc.images.store import ImageError

    @functools.wraps(fn)
    def run(a: argparse.Namespace) -> None:
        try:
            fn(a)
        except (ImageError, IntegrityError, GcError) as e:
            raise CliError(str(e)) from None

    return run
