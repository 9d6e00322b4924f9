"""`softudc volume list`'s rendering and its parser."""

from __future__ import annotations

import argparse
import json

import pytest

from softudc.cli.volume import add_volume_parser, render, size_text

ROWS = [{"id": "shop--db-0--big", "class": "local", "size_bytes": 64 << 40, "from": "empty", "keep": False,
         "host": None, "allowed": [], "state": "unplaced", "reason": "h1's pool has 8 bytes free"},
        {"id": "shop--db-0--data", "class": "remote", "size_bytes": 2 << 30, "from": "gold", "keep": True,
         "host": "h2", "allowed": ["h1", "h3"], "state": "planned", "reason": ""}]


def test_the_table_names_each_volume_and_why_one_is_unplaced() -> None:
    lines = render(ROWS, "table").splitlines()
    assert lines[0].split() == ["ID", "CLASS", "SIZE", "FROM", "KEEP", "HOST", "ALLOWED", "STATE"]
    assert lines[1].split() == ["shop--db-0--big", "local", "64Ti", "empty", "no", "-", "-", "unplaced"]
    assert lines[2].split() == ["shop--db-0--data", "remote", "2Gi", "gold", "yes", "h2", "h1,h3", "planned"]
    assert lines[3] == "shop--db-0--big: h1's pool has 8 bytes free"
    assert json.loads(render(ROWS, "json")) == ROWS


def test_sizes_read_in_the_descriptor_s_units() -> None:
    assert [size_text(n) for n in (1 << 20, 3 << 30, 1 << 40, (1 << 30) + 1)] == ["1Mi", "3Gi", "1Ti", "1073741825"]


def test_the_parser() -> None:
    p = argparse.ArgumentParser()
    add_volume_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["volume", "list", "--farm", "shop", "-o", "json"])
    assert (a.farm, a.output, a.fn.__name__) == ("shop", "json", "cmd_volume_list")


def test_describe_shows_the_export_and_the_parser_takes_describe_and_delete() -> None:
    from softudc.cli.volume import describe_text

    row = {**ROWS[1], "farm": "shop", "instance": "db-0", "volume": "data", "vm_host": "h1", "state": "held",
           "export": {"address": "10.0.0.2", "port": 10810, "allowed": ["h1", "h3"]}}
    text = describe_text(row)
    assert "size:         2Gi" in text and "keep:         yes" in text
    assert "export:       nbds://10.0.0.2:10810/shop--db-0--data (admits h1, h3)" in text
    assert "reason:" not in text and "export:       -" in describe_text({**row, "export": None})
    p = argparse.ArgumentParser()
    add_volume_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["volume", "describe", "shop--db-0--data", "-o", "json"])
    assert (a.id, a.output, a.fn.__name__) == ("shop--db-0--data", "json", "cmd_volume_describe")
    assert p.parse_args(["volume", "delete", "x--y--z"]).fn.__name__ == "cmd_volume_delete"


def test_create_snapshot_and_clone_parse_and_sizes_are_checked() -> None:
    from softudc.cli.errors import CliError
    from softudc.cli.volume_ops import create_body

    p = argparse.ArgumentParser()
    add_volume_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["volume", "create", "gold", "--size", "10Gi", "--master", "--host", "h2"])
    assert create_body(a) == {"name": "gold", "size_bytes": 10 << 30, "master": True, "host": "h2"}
    a = p.parse_args(["volume", "create", "gold", "--size", "10GB"])
    with pytest.raises(CliError, match="--size '10GB'"):
        create_body(a)
    a = p.parse_args(["volume", "clone", "gold@v1", "b1"])
    assert (a.source, a.new) == ("gold@v1", "b1")
    a = p.parse_args(["volume", "snapshot", "shop--db-0--data", "s1"])
    assert (a.volume, a.snapshot) == ("shop--db-0--data", "s1")
