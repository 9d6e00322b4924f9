"""Client for the gatekeeper's local API: one JSON object per line over a unix socket."""

from __future__ import annotations

import json
import socket
from typing import Any


class GatekeeperError(RuntimeError):
    """The gatekeeper answered with an error; the message says what to do."""


class GatekeeperClient:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        if not buf:
            raise GatekeeperError(f"gatekeeper at {self.path} closed the connection without answering {op}")
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise GatekeeperError(reply.get("error", "unknown error"))
        return reply.get("result")
