from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.volumes.daemon import StorageDaemon
from gatekeeper.volumes.qmp import QmpClient, QmpConnectionError, QmpError, parse_line, reply_value


@given(st.binary(max_size=200))
def test_parse_line_garbage_is_a_connection_error_or_an_object(line: bytes) -> None:
    with contextlib.suppress(QmpConnectionError):
        assert isinstance(parse_line(line), dict)


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_reply_value_returns_the_return(value: dict[str, int]) -> None:
    assert reply_value("x", parse_line(json.dumps({"return": value}).encode())) == value


def test_error_reply_raises_with_class_and_desc() -> None:
    with pytest.raises(QmpError, match="no such thing") as e:
        reply_value("x", {"error": {"class": "GenericError", "desc": "no such thing"}})
    assert e.value.klass == "GenericError"
    with pytest.raises(QmpConnectionError):
        reply_value("x", {"neither": 1})


def test_against_a_real_qsd(tmp_path: Path) -> None:
    d = StorageDaemon(tmp_path / "qsd")
    d.start()
    try:
        with d.qmp() as q:
            assert "qemu" in q.greeting["version"]
            assert q.execute("query-block-exports") == []
            with pytest.raises(QmpError, match="not-a-command"):
                q.execute("not-a-command")
            assert q.execute("query-named-block-nodes") == []  # the connection survives an error
    finally:
        d.stop()


def test_no_socket_is_a_connection_error(tmp_path: Path) -> None:
    with pytest.raises(QmpConnectionError, match=r"nothing\.sock"):
        QmpClient(str(tmp_path / "nothing.sock")).connect()
