from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from softudc.cli.errors import CliError
from softudc.cli.imagedir import image_store, images_dir


def test_flag_then_environment_then_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_IMAGES", str(tmp_path / "env"))
    assert images_dir(argparse.Namespace(images=str(tmp_path / "flag"))) == tmp_path / "flag"
    assert images_dir(argparse.Namespace(images=None)) == tmp_path / "env"
    monkeypatch.delenv("SOFTUDC_IMAGES")
    assert images_dir(argparse.Namespace(images=None, state_dir=str(tmp_path))) == tmp_path / "images"
    store = image_store(argparse.Namespace(images=str(tmp_path / "new")))
    assert (tmp_path / "new" / "refs.db").is_file() and store.tags() == {}


def test_unusable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(CliError, match=r"cannot use .*file.* as an image store.*--images DIR"):
        image_store(argparse.Namespace(images=str(tmp_path / "file")))
