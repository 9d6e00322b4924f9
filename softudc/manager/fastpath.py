"""The two requests every gatekeeper makes every few seconds, answered before the web framework:

    PUT /v1/hosts/NAME/status   a report that says nothing new (a heartbeat)
    GET /v1/hosts/NAME/desired  its long poll (?since=ETAG&wait=SECONDS)

At thousands of hosts these are nearly all of the API's requests, and FastAPI's layers (routing,
dependencies, validation, middleware) cost several times what the answer itself does. `FastPath`
wraps the application: a request of these two shapes from an authenticated host (the cache says
so: Hosts.host_known) is answered here, with the same bytes the routes in api.py would send and
counted in the same metric. Anything else, or anything unusual about one of them (a query it does
not expect, a body over the bound or not JSON, a report that is news, a host the cache does not
know), goes to the application unchanged, whose routes say what is wrong. So this module decides
nothing of its own: it only skips work when the answer is known.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from softudc.manager.api import MAX_BODY, PEER_KEY, Peer
from softudc.manager.apimodels import NAME_PATTERN
from softudc.manager.service import Manager

_NAME = re.compile(NAME_PATTERN)
_PREFIX = "/v1/hosts/"
_JSON = [(b"content-type", b"application/json")]
MAX_SINCE = 64  # as the route's `since` (api.py)


def _dumps(obj: Any) -> bytes:
    """As starlette's JSONResponse renders (so both paths send the same bytes)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def _poll_query(raw: bytes) -> tuple[str, float] | None:
    """`since` and `wait` of a long poll's query, or None when it holds anything else or a value the
    route would refuse (then the route answers)."""
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        return None
    query = dict(pairs)
    if len(query) != len(pairs) or not set(query) <= {"since", "wait"}:
        return None
    since = query.get("since", "")
    try:
        wait = float(query.get("wait", "0"))
    except ValueError:
        return None
    if len(since) > MAX_SINCE or not math.isfinite(wait):
        return None
    return since, wait


class FastPath:
    """The ASGI application in front of the manager's (see the module docstring)."""

    def __init__(self, app: ASGIApp, m: Manager, counter: Counter | None, latency: Histogram | None = None) -> None:
        self.app, self.m, self.counter, self.latency = app, m, counter, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope)
        if route is None:
            return await self.app(scope, receive, send)
        kind, name, peer = route
        scope["softudc.started"] = time.perf_counter()  # for _answer's latency
        if kind == "desired":
            answered = await self._desired(scope, name, peer, send)
            if not answered:
                await self.app(scope, receive, send)
            return
        body, complete, last = await self._body(scope, receive)
        if not complete or not await self._report(name, peer, body, scope, send):
            await self.app(scope, _replay(body, complete, last, receive), send)

    @staticmethod
    def _route(scope: Scope) -> tuple[str, str, Peer] | None:
        """("status" | "desired", host name, its certificate) for a request of the two shapes."""
        if scope["type"] != "http":
            return None
        path, method = scope["path"], scope["method"]
        if not path.startswith(_PREFIX):
            return None
        host, _, what = path[len(_PREFIX):].partition("/")
        kind = "status" if (what, method) == ("status", "PUT") else "desired" if (what, method) == ("desired", "GET") \
            else None
        peer = scope.get("extensions", {}).get("tls", {}).get(PEER_KEY)
        if kind is None or not _NAME.match(host) or not isinstance(peer, Peer) or peer.cn is None:
            return None
        return kind, host, peer

    async def _desired(self, scope: Scope, name: str, peer: Peer, send: Send) -> bool:
        query = _poll_query(scope.get("query_string", b""))
        if query is None or not self.m.host_known(name, peer.cn, peer.fingerprint):
            return False
        desired = await self.m.wait_desired(peer.cn, name, *query)
        await self._answer(scope, send, "desired", _dumps(desired))
        return True

    async def _report(self, name: str, peer: Peer, body: bytes, scope: Scope, send: Send) -> bool:
        try:
            report = json.loads(body)
        except (ValueError, RecursionError):
            return False
        client = scope.get("client")
        beat = self.m.report_heartbeat(name, peer.cn, peer.fingerprint, report, client[0] if client else None)
        if beat is None:
            return False
        await self._answer(scope, send, "host_status", _dumps(beat))
        return True

    @staticmethod
    async def _body(scope: Scope, receive: Receive) -> tuple[bytes, bool, Message | None]:
        """What was read of the body, whether that is all of it (announced, within MAX_BODY, no
        more to come) and, if not, the last message received (the application gets it next)."""
        announced = dict(scope["headers"]).get(b"content-length", b"")
        if not announced.isdigit() or int(announced) > MAX_BODY:
            return b"", False, None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False, message  # gone: the application sees the disconnect too
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY:
                return b"".join(chunks), False, {"type": "http.request", "body": b"", "more_body": more}
            if not more:
                return b"".join(chunks), True, None

    async def _answer(self, scope: Scope, send: Send, route: str, body: bytes) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        if self.counter is not None:
            self.counter.labels(route, "200").inc()
        if self.latency is not None:
            self.latency.labels(route).observe(time.perf_counter() - scope["softudc.started"])


def _replay(body: bytes, complete: bool, last: Message | None, receive: Receive) -> Receive:
    """A receive that gives what was already read first (the body so far, whole or not, then the
    message read last, if any), then whatever the client sends next."""
    more = not complete and (last is None or bool(last.get("more_body")))
    queued: list[Message] = [{"type": "http.request", "body": body, "more_body": more}]
    if last is not None and last["type"] != "http.request":
        queued.append(last)

    async def replayed() -> Message:
        return queued.pop(0) if queued else await receive()

    return replayed
