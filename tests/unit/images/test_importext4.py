from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.images.importext4 import _EA_NAME, Node, _sections, ea_quote, ea_unescape, parse_ls
from softudc.images.importtree import ImportRefused

LS = (b"/2/040755/0/0/.//\n/2/040755/0/0/..//\n/12/020644/0/0/null/0/\n/13/040700/5/7/d//\n"
      b"/17/100644/0/0/sp ace/3/\n/0/000000/0/0//0/\n\n")


def test_parse_ls() -> None:
    nodes = parse_ls(LS, "/", "img")
    assert nodes == [Node("/null", 12, 0o020644, 0, 0, 0), Node("/d", 13, 0o040700, 5, 7, 0),
                     Node("/sp ace", 17, 0o100644, 0, 0, 3)]
    assert [n.kind for n in nodes] == ["device", "dir", "file"]
    assert parse_ls(b"/20/100600/0/0/x/1/\n", "/d", "img")[0].path == "/d/x"


def test_parse_ls_refuses_garbage_and_bad_names() -> None:
    with pytest.raises(ImportRefused, match="cannot parse"):
        parse_ls(b"/2/040755/0/0/.//\nnonsense\n", "/", "img")
    with pytest.raises(ImportRefused, match="not valid UTF-8"):
        parse_ls(b"/20/100600/0/0/\xff/1/\n", "/", "img")


def test_sections() -> None:
    out = b"debugfs: ls -p <2>\n/2/040755/0/0/.//\n\ndebugfs: stat <12>\ndebugfs: ea_list <3>\nx\n"
    assert _sections(out, 3, "img") == [b"/2/040755/0/0/.//\n\n", b"", b"x\n"]
    with pytest.raises(ImportRefused, match="2 answers to 3 commands"):
        _sections(out.split(b"debugfs: ea")[0], 3, "img")


_name = st.binary(min_size=1, max_size=20).filter(lambda b: b"/" not in b and b"\n" not in b and b not in (b".", b".."))


@given(st.lists(st.tuples(_name, st.integers(1, 2**32 - 1), st.sampled_from([0o100644, 0o040755, 0o120777]),
                          st.integers(0, 2**31), st.integers(0, 2**40)), max_size=8))
def test_parse_ls_round_trip(rows: list[tuple[bytes, int, int, int, int]]) -> None:
    text = b"".join(b"/%d/%06o/%d/%d/%s/%s/\n" % (ino, mode, uid, uid, name, b"" if mode == 0o040755 else b"%d" % size)
                    for name, ino, mode, uid, size in rows)
    try:
        nodes = parse_ls(text, "/", "img")
    except ImportRefused as e:
        assert "UTF-8" in str(e)
        return
    assert [n.path for n in nodes] == ["/" + r[0].decode() for r in rows]
    assert [(n.ino, n.mode, n.uid) for n in nodes] == [(r[1], r[2], r[3]) for r in rows]


@given(st.binary(max_size=200))
def test_parse_ls_garbage_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ImportRefused):
        parse_ls(data, "/", "img")


def test_ea_list_names() -> None:
    out = (b'Extended attributes:\n  user.a b (2) = "v1"\n  user.q\\"x (2) = "v2"\n'
           b'  user.o\\\\k\\001 (2) = 00 ff \n  system.data (0)\n  user.(3) x (1) = "y"\n')
    assert [ea_unescape(n) for n in _EA_NAME.findall(out)] == [
        b"user.a b", b'user.q"x', b"user.o\\k\x01", b"system.data", b"user.(3) x"]
    assert ea_quote('user.q"x') == '"user.q""x"'


@given(st.binary(min_size=1, max_size=12))
def test_ea_unescape_inverts_debugfs_printing(name: bytes) -> None:
    printed = b"".join(b"\\" + bytes([c]) if c in b'"\\' else bytes([c]) if 32 <= c < 127 else b"\\%03o" % c
                       for c in name)
    assert ea_unescape(printed) == name
