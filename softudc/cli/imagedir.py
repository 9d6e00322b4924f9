"""Which image store a `softudc image ...` command works on: `--images DIR`, else $SOFTUDC_IMAGES,
else the state directory's images/. A module of its own so that every part of the `image` group
(cli/imagestore.py, imageimport.py, imagesee.py, imagedisk.py) can use it without importing
cli/image.py, which imports them all."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from softudc.cli.errors import CliError
from softudc.images.store import ImageError, ImageStore
from softudc.lab.state import default_state_dir

IMAGES_ENV = "SOFTUDC_IMAGES"


def images_dir(a: argparse.Namespace) -> Path:
    """`--images DIR`, else $SOFTUDC_IMAGES, else the state directory's images/."""
    given = getattr(a, "images", None) or os.environ.get(IMAGES_ENV)
    return Path(given) if given else Path(getattr(a, "state_dir", None) or default_state_dir()) / "images"


def image_store(a: argparse.Namespace) -> ImageStore:
    """The image store the command works on (created on first use)."""
    try:
        return ImageStore.open(images_dir(a))
    except (ImageError, OSError) as e:
        raise CliError(f"{e}; give another directory with --images DIR or ${IMAGES_ENV}") from None
