"""A small etcd v3 client over etcd 3.4's JSON gateway (`POST /v3/...`), with httpx.

The gateway is grpc-gateway in front of etcd's gRPC API: request and answer bodies are the
protobuf messages as JSON, where int64 fields travel as strings and `bytes` fields (keys, values,
range ends) as base64. Streams (`/v3/watch`, `/v3/lease/keepalive`) answer one JSON object per
line, `{"result": ...}` or `{"error": ...}`.

Fail-over: the client talks to one endpoint at a time and remembers the last one that answered.
A request that could not be sent (connection refused, connect timeout) goes to the next endpoint;
so does a read (range, status) whose endpoint failed after it was sent, or answered UNAVAILABLE
(no leader, request timed out); a read goes round the endpoints again until `timeout` has passed
(an election takes about a second). A write whose endpoint failed after it was sent is not
repeated (it may have been applied): EtcdError says its outcome is unknown, is `retryable`, and
the next call starts at the next endpoint; EtcdStore retries its compare-and-swap writes itself.
An answer `{"error": ..., "code": ...}` is an EtcdError naming the endpoint and
etcd's message. Answers are bounded (MAX_BODY): a broken or hostile endpoint cannot make us read
without end.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

from softudc.etcd.codec import (  # re-exported: the client's users build txns with these
    KV,
    b64,
    cmp_create,
    cmp_mod,
    cmp_value,
    cmp_version,
    decode_kv,
    decode_responses,
    encode_kv,
    header_revision,
    op_delete,
    op_put,
    op_range,
    prefix_end,
    range_body,
    unb64,
    watch_create,
)

__all__ = ["KV", "EtcdClient", "EtcdCompacted", "EtcdError", "WatchStop", "b64", "cmp_create", "cmp_mod",
           "cmp_value", "cmp_version", "decode_kv", "decode_responses", "encode_kv", "header_revision",
           "op_delete", "op_put", "op_range", "prefix_end", "unb64"]

MAX_BODY = 256 * 1024 * 1024  # the largest answer read: a range of every object of a big farm fits
UNAVAILABLE = 14  # gRPC code: no leader, request timed out, member stopping; another member may answer
# gRPC metadata through the gateway: a member that loses its leader cancels the watch (etcd's
# WithRequireLeader) instead of keeping a watcher quietly cut off from new writes.
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
ROUND_PAUSE_S = 0.2  # between two rounds of every endpoint for a read
CHECK = "check the endpoints with `etcdctl --endpoints=URLS endpoint status` and the members' logs"


class EtcdError(RuntimeError):
    """etcd could not do it: the message names the endpoint(s), what failed and what to check."""

    def __init__(self, message: str, code: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        # The cluster may do it if asked again (no leader yet, a member gone mid-request): a
        # caller that can tell whether its write landed (a compare-and-swap) may retry.
        self.retryable = retryable or code == UNAVAILABLE


class EtcdCompacted(EtcdError):
    """A watch asked for history etcd has compacted away: read the current state instead."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class WatchStop:
    """Stops a watch_stream from another thread at once: set() shuts its socket down, which ends
    the blocking read (waiting for the stream's idle timeout instead would hold close() up)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._socket: socket.socket | None = None

    def attach(self, response: httpx.Response) -> bool:
        """Remember the stream's socket; True if already set (do not read)."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock if isinstance(sock, socket.socket) else None
            return self._set

    def is_set(self) -> bool:
        with self._lock:
            return self._set

    def set(self) -> None:
        with self._lock:
            self._set = True
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_RDWR)


SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError)  # an answer not shaped like etcd's
T = TypeVar("T")


def _unexpected(endpoint: str, path: str, e: Exception) -> EtcdError:
    return EtcdError(f"etcd {endpoint}{path} answered something unexpected ({type(e).__name__}: {e}): is this "
                     f"etcd 3.4+'s client URL? {CHECK}")


def _ignore(answer: dict[str, Any]) -> None:
    return None


def _status(a: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "leader": int(a.get("leader", 0)), "member_id": int(a.get("header", {}).get("member_id", 0)),
            "raft_term": int(a.get("raftTerm", 0)), "raft_index": int(a.get("raftIndex", 0)),
            "db_size": int(a.get("dbSize", 0)), "version": str(a.get("version", ""))}


class _Unsent(Exception):
    """The request did not reach the endpoint (safe to send elsewhere)."""


class EtcdClient:
    """Thread-safe: one httpx connection pool shared by the store's and the leader's threads."""

    def __init__(self, endpoints: list[str], timeout: float = 5.0) -> None:
        if not endpoints:
            raise EtcdError("no etcd endpoint given: pass at least one http://HOST:PORT")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)))
        self._lock = threading.Lock()
        self._good = 0
        self._answered = threading.local()  # .endpoint: the one that answered this thread's last call

    def close(self) -> None:
        self._http.close()

    # -- transport ------------------------------------------------------------------------------

    def _order(self) -> list[int]:
        with self._lock:
            first = self._good
        n = len(self.endpoints)
        return [(first + i) % n for i in range(n)]

    def _remember(self, index: int) -> None:
        with self._lock:
            self._good = index

    def _post_one(self, endpoint: str, path: str, body: dict[str, Any], safe: bool) -> dict[str, Any]:
        try:
            with self._http.stream("POST", endpoint + path, json=body) as response:
                data = self._read_bounded(response.iter_bytes(), endpoint, path)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _Unsent(f"{endpoint}: {e or type(e).__name__}") from e
        except httpx.TransportError as e:
            if safe:
                raise _Unsent(f"{endpoint}: {e or type(e).__name__}") from e
            raise EtcdError(f"etcd {endpoint}{path} failed after the request was sent ({e or type(e).__name__}): "
                            f"its outcome is unknown, read the key again; {CHECK}", retryable=True) from e
        answer = self._parse(data, endpoint, path)
        try:
            if "error" in answer or ("code" in answer and "message" in answer):
                code = int(answer.get("code", 0))
                message = answer.get("message") or answer.get("error")
                if code == UNAVAILABLE and safe:
                    raise _Unsent(f"{endpoint}: {message}")
                raise EtcdError(f"etcd {endpoint}{path} refused: {message} (gRPC code {code}); {CHECK}", code)
            return answer
        except SHAPE_ERRORS as e:
            raise _unexpected(endpoint, path, e) from e

    @staticmethod
    def _read_bounded(chunks: Iterator[bytes], endpoint: str, path: str) -> bytes:
        parts, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_BODY:
                raise EtcdError(f"etcd {endpoint}{path} answered more than {MAX_BODY} bytes: is it etcd? "
                                "Narrow the range (limit) or check the endpoint")
            parts.append(chunk)
        return b"".join(parts)

    @staticmethod
    def _parse(data: bytes, endpoint: str, path: str) -> dict[str, Any]:
        try:
            answer = json.loads(data)
        except ValueError as e:
            raise EtcdError(f"etcd {endpoint}{path} answered something not JSON ({data[:80]!r}): is this "
                            f"etcd 3.4+'s client URL? {CHECK}") from e
        if not isinstance(answer, dict):
            raise EtcdError(f"etcd {endpoint}{path} answered {type(answer).__name__}, not an object; {CHECK}")
        return answer

    def _call(self, path: str, body: dict[str, Any], safe: bool, decode: Callable[[dict[str, Any]], T]) -> T:
        """_post, then `decode` the answer: an answer not shaped like etcd's is an EtcdError naming
        the endpoint that gave it, never a TypeError or KeyError in the caller."""
        answer = self._post(path, body, safe)
        try:
            return decode(answer)
        except SHAPE_ERRORS as e:
            raise _unexpected(getattr(self._answered, "endpoint", "?"), path, e) from e

    def _post(self, path: str, body: dict[str, Any], safe: bool) -> dict[str, Any]:
        """Send to the endpoints in turn, and round again (an election takes about a second) until
        `timeout` has passed since the first try, as long as no endpoint may have applied it."""
        deadline = time.monotonic() + self.timeout
        while True:
            failures: list[str] = []
            for index in self._order():
                try:
                    answer = self._post_one(self.endpoints[index], path, body, safe)
                except _Unsent as e:
                    failures.append(str(e))
                    continue
                except EtcdError:
                    self._remember((index + 1) % len(self.endpoints))  # next call tries another member first
                    raise
                self._remember(index)
                self._answered.endpoint = self.endpoints[index]
                return answer
            if time.monotonic() + ROUND_PAUSE_S > deadline:  # (a write here was never sent: safe to resend)
                raise EtcdError(f"no etcd endpoint answered {path}: {'; '.join(failures)}; {CHECK}", UNAVAILABLE)
            time.sleep(ROUND_PAUSE_S)

    # -- KV -------------------------------------------------------------------------------------

    def range(self, key: bytes, *, prefix: bool = False, range_end: bytes | None = None, limit: int = 0,
              min_mod_revision: int = 0, keys_only: bool = False, count_only: bool = False,
              sort_target: str | None = None, sort_order: str | None = None,
              revision: int = 0) -> tuple[int, list[KV], int]:
        """(header revision, kvs, count). sort_target: KEY, VERSION, CREATE, MOD, VALUE;
        sort_order: ASCEND, DESCEND. count is every match, kvs at most `limit` of them."""
        body = range_body(key, prefix, range_end, limit=limit, min_mod_revision=min_mod_revision,
                           keys_only=keys_only, count_only=count_only, sort_target=sort_target,
                           sort_order=sort_order, revision=revision)
        return self._call("/v3/kv/range", body, True, lambda a: (
            header_revision(a), [decode_kv(kv) for kv in a.get("kvs", [])], int(a.get("count", 0))))

    def get(self, key: bytes) -> KV | None:
        return next(iter(self.range(key)[1]), None)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        body = {"key": b64(key), "value": b64(value), "lease": str(lease)}
        return self._call("/v3/kv/put", body, False, header_revision)

    def delete(self, key: bytes, *, prefix: bool = False, range_end: bytes | None = None) -> tuple[int, int]:
        """(revision, how many keys were deleted)."""
        body: dict[str, Any] = op_delete(key, prefix, range_end)["request_delete_range"]
        return self._call("/v3/kv/deleterange", body, False, lambda a: (header_revision(a), int(a.get("deleted", 0))))

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> tuple[bool, int, list[dict[str, Any]]]:
        """(succeeded, revision, responses): see decode_responses for the responses' form."""
        body = {"compare": compare, "success": success, "failure": failure or []}
        return self._call("/v3/kv/txn", body, False, lambda a: (
            bool(a.get("succeeded", False)), header_revision(a), decode_responses(a.get("responses", []))))

    def compact(self, revision: int, physical: bool = False) -> None:
        self._call("/v3/kv/compaction", {"revision": str(revision), "physical": physical}, False, _ignore)

    # -- watch ----------------------------------------------------------------------------------

    def watch(self, key: bytes, *, prefix: bool = False, start_revision: int = 0, timeout: float = 5.0,
              range_end: bytes | None = None) -> list[KV]:
        """The first batch of events at or after `start_revision` (0: from now on), or [] when
        none came within `timeout` seconds. Deleted keys come as KV(deleted=True). Raises
        EtcdCompacted when `start_revision` is older than etcd's compacted history."""
        create = watch_create(key, prefix, range_end, start_revision)
        deadline = time.monotonic() + max(timeout, 0.0)
        failures = []
        for index in self._order():
            endpoint = self.endpoints[index]
            try:
                events = self._watch_one(endpoint, {"create_request": create}, deadline)
            except _Unsent as e:
                failures.append(str(e))
                continue
            self._remember(index)
            return events
        raise EtcdError(f"no etcd endpoint answered /v3/watch: {'; '.join(failures)}; {CHECK}", UNAVAILABLE)

    def watch_stream(self, key: bytes, *, prefix: bool = False, start_revision: int = 0, idle: float = 1.0,
                     stop: WatchStop | None = None) -> Iterator[list[KV]]:
        """Batches of events at or after `start_revision`, as they come, on one stream; it ends
        when none came for `idle` seconds or at once when `stop` is set (the caller watches again
        from the revision after its last event). A stream broken midway is a retryable
        EtcdError; a compacted start is EtcdCompacted."""
        body = {"create_request": watch_create(key, prefix, None, start_revision)}
        wait = httpx.Timeout(self.timeout, connect=min(self.timeout, 2.0), read=idle)
        failures = []
        for index in self._order():
            endpoint = self.endpoints[index]
            try:
                with self._http.stream("POST", endpoint + "/v3/watch", json=body, timeout=wait,
                                        headers=REQUIRE_LEADER) as response:
                    self._remember(index)
                    if stop is not None and stop.attach(response):
                        return
                    for line in self._lines(response, endpoint):
                        events = self._watch_message(line, endpoint)
                        if stop is not None and stop.is_set():
                            return
                        if events:
                            yield events
                return
            except httpx.ReadTimeout:
                return
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                failures.append(f"{endpoint}: {e or type(e).__name__}")
            except (httpx.TransportError, _Unsent) as e:
                if stop is not None and stop.is_set():
                    return
                raise EtcdError(f"etcd {endpoint}/v3/watch broke off ({e or type(e).__name__}); watch again from "
                                f"the last revision seen; {CHECK}", retryable=True) from e
        raise EtcdError(f"no etcd endpoint answered /v3/watch: {'; '.join(failures)}; {CHECK}", UNAVAILABLE)

    def _watch_one(self, endpoint: str, body: dict[str, Any], deadline: float) -> list[KV]:
        # The read timeout bounds each wait for a line; the deadline bounds the whole call.
        wait = httpx.Timeout(self.timeout, connect=min(self.timeout, 2.0),
                             read=max(deadline - time.monotonic(), 0.0) + 0.05)
        try:
            with self._http.stream("POST", endpoint + "/v3/watch", json=body, timeout=wait,
                                   headers=REQUIRE_LEADER) as response:
                for line in self._lines(response, endpoint):
                    events = self._watch_message(line, endpoint)
                    if events or time.monotonic() >= deadline:
                        return events
        except httpx.ReadTimeout:
            return []
        except httpx.TransportError as e:
            raise _Unsent(f"{endpoint}: {e or type(e).__name__}") from e
        return []

    @staticmethod
    def _lines(response: httpx.Response, endpoint: str) -> Iterator[bytes]:
        """The stream's JSON messages (one per line), each bounded by MAX_BODY."""
        buffer = b""
        for chunk in response.iter_bytes():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield line
            if len(buffer) > MAX_BODY:
                raise EtcdError(f"etcd {endpoint}/v3/watch sent a message over {MAX_BODY} bytes; {CHECK}")
        if buffer.strip():
            yield buffer

    def _watch_message(self, line: bytes, endpoint: str) -> list[KV]:
        try:
            return self._watch_events(self._parse(line, endpoint, "/v3/watch"), endpoint)
        except SHAPE_ERRORS as e:
            raise _unexpected(endpoint, "/v3/watch", e) from e

    @staticmethod
    def _watch_events(message: dict[str, Any], endpoint: str) -> list[KV]:
        if "error" in message:
            error = message["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            if isinstance(error, dict) and error.get("grpc_code") == UNAVAILABLE:
                raise _Unsent(f"{endpoint}: {text}")
            raise EtcdError(f"etcd {endpoint}/v3/watch refused: {text}; {CHECK}")
        result = message.get("result", {})
        if int(result.get("compact_revision", 0)):
            rev = int(result["compact_revision"])
            raise EtcdCompacted(f"etcd {endpoint}: history before revision {rev} is compacted; read the current "
                                "state instead of watching from an older revision", rev)
        if result.get("canceled"):
            raise EtcdError(f"etcd {endpoint} canceled the watch: {result.get('cancel_reason', 'no reason')}; "
                            f"{CHECK}")
        return [decode_kv(e.get("kv", {}), deleted=e.get("type") == "DELETE") for e in result.get("events", [])]

    # -- leases ---------------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; returns its id."""
        return self._call("/v3/lease/grant", {"TTL": str(ttl)}, False, lambda a: int(a["ID"]))

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; returns its TTL after renewal, 0 when the lease is gone."""
        return self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, True,
                          lambda a: int(a.get("result", a).get("TTL", 0)))

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease (its keys go with it); a lease already gone is not an error."""
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease_id)}, False, _ignore)
        except EtcdError as e:
            if "lease not found" not in str(e):
                raise

    # -- cluster --------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every endpoint's status: endpoint, ok, leader, member_id, raft_term, raft_index, db_size,
        version, error (a dead member is a row with ok False and why)."""
        rows = []
        for endpoint in self.endpoints:
            row: dict[str, Any] = {"endpoint": endpoint, "ok": False, "leader": 0, "member_id": 0, "raft_term": 0,
                                   "raft_index": 0, "db_size": 0, "version": "", "error": ""}
            try:
                answer = self._post_one(endpoint, "/v3/maintenance/status", {}, True)
                try:
                    row.update(_status(answer))
                except SHAPE_ERRORS as e:
                    raise _unexpected(endpoint, "/v3/maintenance/status", e) from e
            except (_Unsent, EtcdError) as e:
                row["error"] = str(e)
            rows.append(row)
        return rows

    def members(self) -> list[dict[str, Any]]:
        """The cluster's members: id, name, peer_urls, client_urls."""
        return self._call("/v3/cluster/member/list", {}, True, lambda a: [
            {"id": int(m.get("ID", 0)), "name": m.get("name", ""), "peer_urls": m.get("peerURLs", []),
             "client_urls": m.get("clientURLs", [])} for m in a.get("members", [])])
