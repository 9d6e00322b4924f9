"""The manager API served over HTTPS by uvicorn: TLS with optional client certificates, the
verified peer certificate handed to the routes, and the bounds that keep slow or greedy clients
from costing more than a socket.

    asyncio loop (one thread)                       thread pool (WORKERS threads)
    TLS, request line, headers, body, long polls ──► the service's blocking calls (sqlite, locks)

A connection costs a socket and a small buffer, never a thread: a client trickling its request
(slowloris, audit R16) waits on the loop and is cut off READ_DEADLINE_S after its first byte (or
after the handshake, if it sends nothing); long polls wait on the loop too (`Manager.wait_desired`),
so thousands of gatekeepers need no thread each. At most LIMIT_CONCURRENCY connections are open;
more are closed at once. Headers are bounded (MAX_HEADER_BYTES), bodies by the app (api.MAX_BODY).

uvicorn has no ASGI TLS extension, so `_TlsProtocol` reads the peer certificate once per
connection (the handshake has verified it against the manager's CA) and puts it in each request's
scope as `scope["extensions"]["tls"]["client_cert_chain"]` (PEM, the ASGI TLS extension's key), with
its name and fingerprint parsed once (api.PEER_KEY). No proxy headers are read: gatekeepers connect
directly, and a forwarded-for header from a local client must not move the address a host's
migrations go to (R20).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from softudc.manager.api import PEER_KEY, WORKERS, ApiStats, make_app, peer_of
from softudc.manager.fastpath import FastPath
from softudc.manager.service import Manager

READ_DEADLINE_S = 10.0  # from a request's first byte (or the handshake) to its last
LIMIT_CONCURRENCY = 16384  # open connections (one per gatekeeper, plus admins; mind LimitNOFILE)
KEEP_ALIVE_S = 75  # an idle kept-alive connection is closed after this; above any client's reuse gap
MAX_HEADER_BYTES = 64 << 10  # request line and headers
START_TIMEOUT_S = 10.0
# The collector's thresholds in the daemon's process: with Python's (700, 10, 10) a manager of 1,000
# hosts ran a full collection (~200 ms with the GIL held: every request waits) about every second,
# its caches being rebuilt that often; with these, young ones scan more, full ones are rare.
GC_THRESHOLDS = (50_000, 20, 100)
LOOP = "uvloop"  # libuv's loop and its TLS: at thousands of hosts, a third of the API's time less than asyncio's


def _peer_chain(transport: asyncio.BaseTransport) -> list[str]:
    """The client certificate the handshake verified (CERT_OPTIONAL: none is fine), as PEM."""
    tls = transport.get_extra_info("ssl_object")
    der = tls.getpeercert(True) if isinstance(tls, ssl.SSLObject) else None
    return [ssl.DER_cert_to_PEM_cert(der)] if der else []


class _TlsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the peer certificate in the scope, the connection cap, the
    header bound and the read deadline (see the module docstring). Configured through class
    attributes, set per server by `serve` on a subclass."""

    read_deadline_s = READ_DEADLINE_S
    max_header_bytes = MAX_HEADER_BYTES
    stats = ApiStats()

    _read_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0  # of the request being read, while its headers are not all in (-1: they are)
    _head_size = 0  # bytes of the request line and headers parsed so far (the parser's count)
    _head_refused = False
    _heads = 0  # headers and messages read whole on this connection (bytes of data that ended one are not counted)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limit_concurrency is not None and len(self.connections) > self.limit_concurrency:
            self.stats.drop("refused_too_many_connections")
            transport.abort()
            return
        chain = _peer_chain(transport)  # the certificate parsed once per connection, not per request
        tls = {"client_cert_chain": chain, "server_cert": None, PEER_KEY: peer_of(chain)}
        inner = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope["extensions"] = {**scope.get("extensions", {}), "tls": tls}
            await inner(scope, receive, send)

        self.app = with_tls
        self._head_bytes = 0
        self._arm_read_deadline()  # the handshake is done: the first request must come in time

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None:  # the first byte of a request (the next one, on a kept-alive connection)
            self._arm_read_deadline()
        heads = self._heads
        super().data_received(data)
        if self._head_refused:
            self._head_refused = False
            self.stats.drop("header_too_large")
            return
        if self._heads == heads and self._head_bytes >= 0:  # inside one request's head: all of it counts
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
                self.stats.drop("header_too_large")
                self.send_400_response(f"request line and headers over {self.max_header_bytes} bytes: refused")

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, n: int) -> None:
        """Request line and headers that came whole, in one data (data_received counts the rest)."""
        self._head_size += n
        if self._head_size > self.max_header_bytes:
            self._head_refused = True
            raise ValueError("headers over the bound")  # the parser's error: uvicorn answers 400 and closes

    def on_headers_complete(self) -> None:
        self._head_bytes, self._head_size, self._heads = -1, 0, self._heads + 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes, self._heads = 0, self._heads + 1  # the next request's head is counted from here
        self._disarm_read_deadline()  # read whole: a long poll may now wait as long as it likes

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_deadline()
        super().connection_lost(exc)

    def _arm_read_deadline(self) -> None:
        self._read_timer = self.loop.call_later(self.read_deadline_s, self._read_deadline_passed)

    def _disarm_read_deadline(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_deadline_passed(self) -> None:
        self._read_timer = None  # still armed: a request begun (or none since the handshake) and not read whole
        if not self.transport.is_closing():
            self.stats.drop("closed_read_deadline")
            self.transport.abort()


def tls_context(m: Manager) -> ssl.SSLContext:
    """The server certificate from the state dir; client certificates verified against the manager's
    CA when given (admins come with tokens, gatekeepers with certificates)."""
    pki = m.state_dir / "pki"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    ctx.load_verify_locations(str(pki / "ca.crt"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class ApiServer:
    """A running API: `server_address` (host, port) and `shutdown()`; uvicorn on its own thread
    and event loop."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, stats: ApiStats) -> None:
        self._server, self._thread, self.stats = server, thread, stats
        sockets = server.servers[0].sockets
        self.server_address: tuple[str, int] = sockets[0].getsockname()[:2]

    def connections(self) -> int:
        return len(self._server.server_state.connections)

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)


class ApiCollector(Collector):
    """The server's open connections and what it refused or cut off (the long polls waiting are the
    service's: softudc_manager_long_polls_waiting)."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        dropped = CounterMetricFamily("softudc_manager_api_dropped", "Connections or requests the API server "
                                      "refused or cut off, by reason", labels=["reason"])
        for reason, n in sorted(self.server.stats.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield GaugeMetricFamily("softudc_manager_api_connections", "Open connections to the API",
                                value=self.server.connections())


def serve(m: Manager, host: str, port: int, *, read_deadline_s: float = READ_DEADLINE_S,
          limit_concurrency: int = LIMIT_CONCURRENCY, keep_alive_s: int = KEEP_ALIVE_S,
          max_header_bytes: int = MAX_HEADER_BYTES, workers: int = WORKERS) -> ApiServer:
    """Start the API on a background thread with its own event loop; returns once it listens.
    The keyword arguments are the server's bounds (module docstring), for tests."""
    stats = ApiStats()
    protocol = type("TlsProtocol", (_TlsProtocol,), {"read_deadline_s": read_deadline_s, "stats": stats,
                                                      "max_header_bytes": max_header_bytes})
    ctx = tls_context(m)
    app = FastPath(make_app(m, stats=stats, workers=workers), m, m.requests, m.latency)  # the gatekeepers' two, first
    config = uvicorn.Config(app, host=host, port=port, http=protocol,
                            ssl_context_factory=lambda _config, _default: ctx, limit_concurrency=limit_concurrency,
                            timeout_keep_alive=keep_alive_s,
                            timeout_graceful_shutdown=2, log_config=None, log_level="warning", access_log=False,
                            lifespan="on", server_header=False, proxy_headers=False, loop=LOOP)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="manager-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise OSError(f"the manager API did not start listening on {host}:{port}; is the port free "
                          "and the address this host's? (see the log above)")
        time.sleep(0.01)
    gc.set_threshold(*GC_THRESHOLDS)  # the process's: the daemon's (tests of several servers: the same)
    gc.freeze()  # what start-up made (the app, its routes, the store) is never scanned again
    api = ApiServer(server, thread, stats)
    with contextlib.suppress(ValueError):  # a second server for the same Manager (tests): the first one's stay
        m.registry.register(ApiCollector(api))
    return api
