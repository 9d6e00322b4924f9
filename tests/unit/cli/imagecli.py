"""`softudc image ...` run in-process for the CLI tests of the image commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.cli.main import main


def run(root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`softudc image --images ROOT ARGV...`: its exit status, stdout and stderr."""
    try:
        main(["image", "--images", str(root), *argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
