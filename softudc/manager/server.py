"""The manager API's HTTPS server: no client can hold a thread, or the server, by being slow.

    accept loop ──► intake (one thread, a selector)           ──► a worker thread per request
                    TLS handshake, request line, headers and       (bounded: MAX_WORKERS, and
                    body read without blocking, all within          MAX_LONG_POLLS for
                    READ_DEADLINE_S of the accept; at most          GET .../desired?wait=)
                    MAX_PENDING connections and MAX_PENDING_BYTES
                    buffered; past the deadline: closed

A connection costs a thread only once its whole request is read, so clients that trickle bytes
(slowloris: one header byte every 29 s kept a thread each before, audit R16) are cut off at the
deadline and never stop others from being served. A long poll is read like any request and then
waits on its own bounded pool; the read deadline does not apply to the wait. Each connection
carries one request (`Connection: close`): a kept-alive connection would again wait for its next
request on a thread. Over a bound, a request gets 503 with Retry-After; over MAX_PENDING a new
connection is closed at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("softudc.manager.server")

READ_DEADLINE_S = 10.0  # from accept to the last byte of the request (handshake, headers, body)
MAX_PENDING = 512  # connections whose request is still being read (a socket and a buffer each)
MAX_PENDING_BYTES = 64 << 20  # bytes buffered for them in all
MAX_HEADER_BYTES = 64 << 10  # request line and headers
MAX_WORKERS = 64  # requests being answered at once
MAX_LONG_POLLS = 256  # GET .../desired?wait=S being held at once (about one per gatekeeper)
WRITE_TIMEOUT_S = 30.0  # per send of the answer
SWEEP_EVERY_S = 0.2  # how often expired connections are looked for

_EXPECT_CONTINUE = re.compile(rb"^expect:[ \t]*100-continue[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(.*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


@dataclass(eq=False)
class _Pending:
    """A connection whose request is being read."""

    sock: ssl.SSLSocket
    address: Any
    deadline: float
    handshaken: bool = False
    buf: bytearray = field(default_factory=bytearray)
    need: int | None = None  # bytes of headers + body, once the headers are in


def request_size(buf: bytes | bytearray, max_body: int) -> int | None:
    """How many bytes the request at the start of `buf` has (headers and body), or None while the
    headers are incomplete. A missing Content-Length means no body; an invalid or too large one
    means the headers alone (the handler answers 413 without reading a body)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end + 4])
    match = _CONTENT_LENGTH.search(head)
    if match is None:
        return len(head)
    value = match.group(1)
    if not value.isdigit() or int(value) > max_body:
        return len(head)
    return len(head) + int(value)


def is_long_poll(request_line: bytes) -> bool:
    """GET .../desired with wait > 0: answered by the long-poll pool."""
    parts = request_line.split(b" ")
    if len(parts) < 2 or parts[0] != b"GET":
        return False
    url = urlsplit(parts[1].decode("latin-1"))
    if not url.path.endswith("/desired"):
        return False
    try:
        return float(dict(parse_qsl(url.query)).get("wait", "0")) > 0
    except ValueError:
        return False


def _busy_answer(message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class TlsServer(ThreadingHTTPServer):
    """HTTPS for the manager API: see the module docstring. `counts` says what was refused."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], ctx: ssl.SSLContext,
                 *, max_body: int = 1 << 20, read_deadline_s: float = READ_DEADLINE_S,
                 max_pending: int = MAX_PENDING, max_workers: int = MAX_WORKERS,
                 max_long_polls: int = MAX_LONG_POLLS) -> None:
        self._handler = _one_request(handler)
        super().__init__(address, self._handler)
        self.ctx = ctx
        self.max_body = max_body
        self.read_deadline_s = read_deadline_s
        self.max_pending = max_pending
        self.counts: Counter[str] = Counter()
        self._workers = threading.BoundedSemaphore(max_workers)
        self._long_polls = threading.BoundedSemaphore(max_long_polls)
        self._lock = threading.Lock()  # guards _incoming and the pending count the accept loop reads
        self._incoming: list[tuple[socket.socket, Any]] = []
        self._pending: set[_Pending] = set()
        self._pending_count = 0
        self._buffered = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._request_bytes = threading.local()
        self._intake = threading.Thread(target=self._intake_loop, name="manager-api-intake", daemon=True)
        self._intake.start()

    # --- accept loop --------------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        """Called by the accept loop: hand the connection to the intake, never block."""
        with self._lock:
            full = self._pending_count >= self.max_pending
            if not full:
                self._pending_count += 1
                self._incoming.append((request, client_address))
        if full:
            self.counts["refused_too_many_pending"] += 1
            self.shutdown_request(request)
            return
        with contextlib.suppress(BlockingIOError):  # full: the intake is awake already
            os.write(self._wake_w, b"x")

    def prefetched(self) -> bytes:
        """The request the intake read for the handler running on this thread."""
        data: bytes = self._request_bytes.data
        return data

    def pending(self) -> int:
        """Connections whose request is still being read."""
        with self._lock:
            return self._pending_count

    def shutdown(self) -> None:
        super().shutdown()
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        self._intake.join(5)

    # --- intake -------------------------------------------------------------------------------

    def _intake_loop(self) -> None:
        next_sweep = time.monotonic() + SWEEP_EVERY_S
        while not self._stopping:
            for key, _ in self._selector.select(SWEEP_EVERY_S):
                try:
                    if key.data is None:
                        self._take_incoming()
                    else:
                        self._advance(key.data)
                except Exception as e:  # a bug must cost one connection at most, never the intake
                    self.counts[f"error_{type(e).__name__}"] += 1
                    log.exception("manager API intake: dropped a connection after an unexpected error")
                    if key.data is not None and key.data in self._pending:
                        self._drop(key.data)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + SWEEP_EVERY_S
                for p in [p for p in self._pending if p.deadline <= now]:
                    self.counts["closed_read_deadline"] += 1
                    self._drop(p)
        for p in list(self._pending):
            self._drop(p)

    def _take_incoming(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for raw, address in incoming:
            try:
                raw.setblocking(False)
                tls = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            except (ssl.SSLError, OSError):
                self._forget(raw)
                continue
            p = _Pending(tls, address, time.monotonic() + self.read_deadline_s)
            self._pending.add(p)
            self._selector.register(tls, selectors.EVENT_READ, p)

    def _advance(self, p: _Pending) -> None:
        """Move one connection on as far as its bytes allow, without blocking."""
        try:
            if not p.handshaken:
                p.sock.do_handshake()
                p.handshaken = True
            while True:
                chunk = p.sock.recv(65536)
                if not chunk:  # the client gave up
                    self._drop(p)
                    return
                p.buf += chunk
                self._buffered += len(chunk)
                if p.need is None:
                    p.need = request_size(p.buf, self.max_body)
                    if p.need is not None and len(p.buf) < p.need and _EXPECT_CONTINUE.search(p.buf[:p.need]):
                        # curl & co. wait for this before sending a body (RFC 9110 §10.1.1)
                        p.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                if p.need is not None and len(p.buf) >= p.need:
                    self._dispatch(p)
                    return
                if p.need is None and len(p.buf) > MAX_HEADER_BYTES:
                    self.counts["closed_headers_too_large"] += 1
                    self._drop(p)
                    return
                if self._buffered > MAX_PENDING_BYTES:
                    self.counts["closed_too_many_bytes_pending"] += 1
                    self._drop(p)
                    return
        except ssl.SSLWantReadError:
            self._selector.modify(p.sock, selectors.EVENT_READ, p)
        except ssl.SSLWantWriteError:
            self._selector.modify(p.sock, selectors.EVENT_WRITE, p)
        except (ssl.SSLError, OSError):
            self.counts["closed_tls_or_socket_error"] += 1
            self._drop(p)

    def _release(self, p: _Pending) -> None:
        self._selector.unregister(p.sock)
        self._pending.discard(p)
        self._buffered -= len(p.buf)
        with self._lock:
            self._pending_count -= 1

    def _drop(self, p: _Pending) -> None:
        self._release(p)
        p.sock.close()

    def _forget(self, raw: socket.socket) -> None:
        raw.close()
        with self._lock:
            self._pending_count -= 1

    def _dispatch(self, p: _Pending) -> None:
        """The request is read: answer it on a worker thread, or 503 when the pool is full."""
        self._release(p)
        data = bytes(p.buf[:p.need])
        long_poll = is_long_poll(data.split(b"\r\n", 1)[0])
        pool = self._long_polls if long_poll else self._workers
        if not pool.acquire(blocking=False):
            self.counts["busy_long_polls" if long_poll else "busy_workers"] += 1
            with contextlib.suppress(ssl.SSLError, OSError):  # best effort: the client may not read
                p.sock.send(_busy_answer("the manager is busy; retry in a second"))
            p.sock.close()
            return
        p.sock.settimeout(WRITE_TIMEOUT_S)  # blocking again, for the handler's writes
        threading.Thread(target=self._answer, args=(p.sock, p.address, data, pool), daemon=True,
                         name="manager-api-request").start()

    def _answer(self, sock: ssl.SSLSocket, address: Any, data: bytes, pool: threading.BoundedSemaphore) -> None:
        try:
            self._request_bytes.data = data  # the handler, on this thread, reads it (`prefetched`)
            self._handler(sock, address, self)
        except (ssl.SSLError, OSError):
            self.counts["closed_while_answering"] += 1
        except Exception as e:
            self.counts[f"error_{type(e).__name__}"] += 1
            log.exception("manager API: a request failed outside its handler's error handling")
        finally:
            pool.release()
            sock.close()


class ServerCollector(Collector):
    """What the server refused or cut off, by reason, and how many requests it is reading."""

    def __init__(self, server: TlsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        dropped = CounterMetricFamily("softudc_manager_api_dropped", "Connections or requests the API server "
                                      "refused or cut off, by reason", labels=["reason"])
        for reason, n in sorted(self.server.counts.items()):
            dropped.add_metric([reason], n)
        yield dropped
        pending = GaugeMetricFamily("softudc_manager_api_reading", "Connections whose request is still being read")
        pending.add_metric([], self.server.pending())
        yield pending


def _one_request(handler: type[BaseHTTPRequestHandler]) -> type[BaseHTTPRequestHandler]:
    """`handler`, reading the request the intake already read, and closing after answering it."""

    class OneRequest(handler):  # type: ignore[valid-type,misc]
        def setup(self) -> None:
            super().setup()
            server = self.server
            assert isinstance(server, TlsServer)
            self.rfile = io.BytesIO(server.prefetched())

        def handle_expect_100(self) -> bool:
            return True  # the intake said 100 Continue already, when the body was still to come

        def send_response(self, code: int, message: str | None = None) -> None:
            super().send_response(code, message)
            self.send_header("Connection", "close")  # one request per connection: see the module doc

    OneRequest.__name__ = OneRequest.__qualname__ = handler.__name__
    return OneRequest
