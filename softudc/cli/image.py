"""`softudc image ...`: the image store's commands. This module makes the group and finds the
store directory; each part of the work adds its own subcommands (cli/imagestore.py: the store and
its tags, GC, verify; cli/imageimport.py: import and build; cli/imagesee.py: inspect, diff,
search, patch; cli/imagedisk.py: materialize and boot)."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softudc.cli.errors import CliError
from softudc.lab.state import default_state_dir

if TYPE_CHECKING:
    from softudc.images.store import ImageStore

IMAGES_ENV = "SOFTUDC_IMAGES"


def images_dir(a: argparse.Namespace) -> Path:
    """`--images DIR`, else $SOFTUDC_IMAGES, else the state directory's images/."""
    given = getattr(a, "images", None) or os.environ.get(IMAGES_ENV)
    return Path(given) if given else Path(getattr(a, "state_dir", None) or default_state_dir()) / "images"


def image_store(a: argparse.Namespace) -> ImageStore:
    """The image store the command works on (created on first use)."""
    from softudc.images.store import ImageError, ImageStore

    try:
        return ImageStore.open(images_dir(a))
    except (ImageError, OSError) as e:
        raise CliError(f"{e}; give another directory with --images DIR or ${IMAGES_ENV}") from None


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
