"""The wire form of etcd 3.4's v3 JSON gateway, without I/O: key-values, base64, range ends, and
the compare/operation builders of a txn (STYLE section 1: pure functions, tested by hypothesis).

The gateway speaks the protobuf messages as JSON: int64 fields travel as strings, `bytes` fields
(keys, values, range ends) as base64, and zero fields are left out.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int
    deleted: bool = False  # a watch's DELETE event: value b"", create_revision and version 0


# -- encoding (pure) ------------------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Strict base64 (ValueError on anything else, non-ASCII included)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except UnicodeEncodeError as e:
        raise ValueError(f"not base64: {text[:40]!r}") from e


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) every key starting with `prefix` (etcd's rule:
    the prefix with its last byte below 0xff incremented; b"\\0" (every key) if there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def decode_kv(raw: dict[str, Any], deleted: bool = False) -> KV:
    """One `mvccpb.KeyValue` of the gateway (absent fields are zero, int64 are strings)."""
    return KV(key=unb64(raw.get("key", "")), value=unb64(raw.get("value", "")),
              create_revision=int(raw.get("create_revision", 0)), mod_revision=int(raw.get("mod_revision", 0)),
              version=int(raw.get("version", 0)), lease=int(raw.get("lease", 0)), deleted=deleted)


def encode_kv(kv: KV) -> dict[str, Any]:
    """The inverse of decode_kv (for tests and fakes)."""
    return {"key": b64(kv.key), "value": b64(kv.value), "create_revision": str(kv.create_revision),
            "mod_revision": str(kv.mod_revision), "version": str(kv.version), "lease": str(kv.lease)}


def header_revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


# -- compare and operation builders for txn -------------------------------------------------------

def cmp_mod(key: bytes, result: str, revision: int) -> dict[str, Any]:
    """Compare the key's mod_revision (0: the key does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": result, "mod_revision": str(revision)}


def cmp_create(key: bytes, result: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "result": result, "create_revision": str(revision)}


def cmp_version(key: bytes, result: str, version: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "VERSION", "result": result, "version": str(version)}


def cmp_value(key: bytes, result: str, value: bytes) -> dict[str, Any]:
    return {"key": b64(key), "target": "VALUE", "result": result, "value": b64(value)}


def op_put(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value), "lease": str(lease)}}


def op_delete(key: bytes, prefix: bool = False, range_end: bytes | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    end = prefix_end(key) if prefix else range_end
    if end is not None:
        body["range_end"] = b64(end)
    return {"request_delete_range": body}


def op_range(key: bytes, prefix: bool = False, range_end: bytes | None = None, limit: int = 0,
             count_only: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    end = prefix_end(key) if prefix else range_end
    if end is not None:
        body["range_end"] = b64(end)
    if limit:
        body["limit"] = str(limit)
    if count_only:
        body["count_only"] = True
    return {"request_range": body}


def range_body(key: bytes, prefix: bool, range_end: bytes | None, **opts: Any) -> dict[str, Any]:
    body: dict[str, Any] = op_range(key, prefix, range_end)["request_range"]
    for name, value in opts.items():
        if value:
            body[name] = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    return body


def watch_create(key: bytes, prefix: bool, range_end: bytes | None, start_revision: int) -> dict[str, Any]:
    create: dict[str, Any] = {"key": b64(key)}
    end = prefix_end(key) if prefix else range_end
    if end is not None:
        create["range_end"] = b64(end)
    if start_revision:
        create["start_revision"] = str(start_revision)
    return create


def decode_responses(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A txn's responses with each `response_range`'s kvs as KV and its count as int."""
    out = []
    for response in responses:
        if "response_range" in response:
            r = response["response_range"]
            response = {"response_range": {**r, "kvs": [decode_kv(kv) for kv in r.get("kvs", [])],
                                           "count": int(r.get("count", 0))}}
        out.append(response)
    return out
