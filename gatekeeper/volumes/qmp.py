"""A small synchronous QMP client (QEMU Machine Protocol over a unix socket).

QMP is JSON objects, one per line (docs/interop/qmp-spec.rst): the server greets with
``{"QMP": {...}}``; the client must send ``qmp_capabilities`` before anything else; each command
gets ``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}``; ``{"event": ...}`` lines
may arrive at any time in between and are kept aside.

Why not PyPI's ``qemu.qmp``: it is asyncio-only (its legacy sync wrapper runs its own event loop),
while the gatekeeper calls the storage service from the local API's executor threads. One
connection serves one caller at a time (a lock), which is all qemu-storage-daemon needs here.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

MAX_LINE = 16 << 20  # bytes: the largest QMP reply we accept (query-named-block-nodes of a big pool)


class QmpError(RuntimeError):
    """A QMP command that QEMU refused (``klass`` is QEMU's error class, e.g. GenericError)."""

    def __init__(self, command: str, klass: str, desc: str) -> None:
        super().__init__(f"QMP {command}: {desc} ({klass})")
        self.command, self.klass, self.desc = command, klass, desc


class QmpConnectionError(OSError):
    """The monitor socket is gone, closed, or spoke something that is not QMP."""


def parse_line(line: bytes) -> dict[str, Any]:
    """One QMP message; QmpConnectionError if it is not a JSON object."""
    try:
        msg = json.loads(line)
    except ValueError:
        raise QmpConnectionError(f"QMP: not JSON: {line[:80]!r}") from None
    if not isinstance(msg, dict):
        raise QmpConnectionError(f"QMP: expected a JSON object, got {line[:80]!r}")
    return msg


def reply_value(command: str, msg: dict[str, Any]) -> Any:
    """The ``return`` of a reply, or QmpError for an ``error`` reply."""
    if "return" in msg:
        return msg["return"]
    err = msg.get("error")
    if isinstance(err, dict):
        raise QmpError(command, str(err.get("class", "?")), str(err.get("desc", "?")))
    raise QmpConnectionError(f"QMP {command}: reply is neither return nor error: {msg!r:.200}")


class QmpClient:
    """``with QmpClient(path) as qmp: qmp.execute("query-block-exports")``."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()

    def connect(self) -> QmpClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise QmpConnectionError(f"QMP socket {self.path}: {e}") from None
        self._sock, self._buf = sock, b""
        greeting = self._read()
        if "QMP" not in greeting:
            self.close()
            raise QmpConnectionError(f"{self.path} is not a QMP monitor (greeting {greeting!r:.120})")
        self.greeting = greeting["QMP"]
        self.execute("qmp_capabilities")
        return self

    def __enter__(self) -> QmpClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one command; its ``return`` value. Argument names are QMP's (with dashes: pass them
        as a dict, ``execute("x", **{"node-name": "n"})``)."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        with self._lock:
            if self._sock is None:
                raise QmpConnectionError(f"QMP {command}: not connected to {self.path}")
            try:
                self._sock.sendall(json.dumps(msg).encode() + b"\n")
            except OSError as e:
                raise QmpConnectionError(f"QMP {command} on {self.path}: {e}") from None
            while True:
                reply = self._read()
                if "event" in reply:
                    self.events.append(reply)
                    continue
                return reply_value(command, reply)

    def _read(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except OSError as e:
                raise QmpConnectionError(f"QMP socket {self.path}: {e}") from None
            if not chunk:
                raise QmpConnectionError(f"QMP socket {self.path} closed by QEMU")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise QmpConnectionError(f"QMP socket {self.path}: a message over {MAX_LINE} bytes")
        line, self._buf = self._buf.split(b"\n", 1)
        return parse_line(line)
