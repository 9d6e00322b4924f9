"""The local API: the asyncio server and its client, one JSON line each way over a unix socket."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc import localapi
from softudc.localapi import LocalApiClient, LocalApiError, serve


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    """A served local API with an echo op, a refusing op and a crashing op, on its own loop."""
    path = str(tmp_path / "api.sock")

    def refuse(name: str) -> None:
        raise KeyError(f"no VNET {name}; create it first")

    ops: dict[str, Callable[..., Any]] = {"echo": lambda **kw: kw, "refuse": refuse, "crash": lambda: 1 / 0}
    started: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        stop = asyncio.Event()
        started.append((asyncio.get_running_loop(), stop))
        server = asyncio.create_task(serve(path, ops, user_errors=(KeyError,)))
        await stop.wait()
        server.cancel()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)  # asyncio.run cleans up
    thread.start()
    for _ in range(500):  # until the socket is there (bounded: 5 s)
        if Path(path).exists():
            break
        time.sleep(0.01)
    yield path
    loop, stop = started[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)


def test_a_call_returns_the_result(api: str) -> None:
    assert LocalApiClient(api).call("echo", vnet=5, ports=["a"]) == {"vnet": 5, "ports": ["a"]}


def test_a_refusal_carries_the_daemons_message(api: str) -> None:
    with pytest.raises(LocalApiError, match=r"^refuse: 'no VNET x; create it first'$"):
        LocalApiClient(api).call("refuse", name="x")
    with pytest.raises(LocalApiError, match=r"unknown op 'nope'; known: crash, echo, refuse"):
        LocalApiClient(api).call("nope")
    with pytest.raises(LocalApiError, match="internal error"):
        LocalApiClient(api).call("crash")


def _one_shot(path: str, answer: bytes | Callable[[socket.socket], None]) -> threading.Thread:
    """A fake daemon that reads one request and answers `answer` (or runs it on the connection)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.recv(65536)
            if callable(answer):
                answer(conn)
            else:
                conn.sendall(answer)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.adversarial
@pytest.mark.parametrize(("answer", "message"), [(b"", "closed the connection"), (b"<html>\n", "not JSON"),
                                                 (b"[1, 2]\n", "not a reply object"),
                                                 (b'{"ok": false}\n', "unknown error")])
def test_a_broken_answer_is_a_local_api_error(tmp_path: Path, answer: bytes, message: str) -> None:
    path = str(tmp_path / "fake.sock")
    t = _one_shot(path, answer)
    with pytest.raises(LocalApiError, match=message):
        LocalApiClient(path).call("status")
    t.join(5)


@pytest.mark.adversarial
def test_an_endless_answer_is_cut_off_at_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localapi, "MAX_REPLY", 1 << 16)
    path = str(tmp_path / "fake.sock")
    sent = [0]

    def flood(conn: socket.socket) -> None:
        try:
            while sent[0] < 1 << 24:  # 16 MiB at most, should the client never stop reading
                conn.sendall(b" " * 4096)
                sent[0] += 4096
        except OSError:  # the client hung up: what the test wants
            pass

    t = _one_shot(path, flood)
    with pytest.raises(LocalApiError, match="more than"):
        LocalApiClient(path).call("status")
    t.join(5)
    assert sent[0] < 1 << 24
