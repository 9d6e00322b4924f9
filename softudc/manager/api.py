"""The manager's REST API over HTTPS (stdlib handler; `server` bounds connections and threads): the
routes, the OpenAPI document and the handler that maps requests onto the `service`.

Administrators authenticate with bearer tokens (roles in `auth`); gatekeepers with client
certificates from the manager's CA (their routes refuse anything else): the TLS context asks for
a client certificate and verifies it when one is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl

from softudc.manager.auth import AuthError
from softudc.manager.server import ServerCollector, TlsServer
from softudc.manager.service import ApiError, Manager

MAX_BODY = 1 << 20

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "SoftUDC manager", "version": "v1"},
    "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    "security": [{"token": []}],
    "paths": {
        "/v1/farms": {"get": {"summary": "Farms the caller may read", "responses": {"200": {"description": "list"}}}},
        "/v1/farms/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"summary": "A farm: spec, status, events", "responses": {"200": {"description": "farm"},
                                                                             "404": {"description": "no such farm"}}},
            "put": {"summary": "Apply a farm descriptor (YAML)",
                    "parameters": [{"name": "If-Match", "in": "header", "required": False,
                                    "description": "the revision read: 3 or \"3\"; anything else is a 400",
                                    "schema": {"type": "string", "pattern": "^(\"[0-9]+\"|[0-9]+)$"}}],
                    "requestBody": {"content": {"application/yaml": {"schema": {"type": "string"}}}},
                    "responses": {"200": {"description": "stored"},
                                  "400": {"description": "problems, or a malformed If-Match"},
                                  "409": {"description": "changed since read, or cannot be planned (and why)"}}},
            "delete": {"summary": "Delete a farm", "responses": {"200": {"description": "deleted"}}},
        },
        "/v1/farms/{name}/plan": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": {"summary": "What applying a descriptor would change (stores nothing); for a farm that "
                                "does not exist, a token that may create it",
                     "requestBody": {"content": {"application/yaml": {"schema": {"type": "string"}}}},
                     "responses": {"200": {"description": "plan"}, "400": {"description": "problems"},
                                   "403": {"description": "may not create this farm"},
                                   "409": {"description": "cannot be planned (and why)"}}}},
        "/v1/farms/{name}/instances/{instance}/migrate": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "instance", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": {"summary": "Move an instance to another host (live, or cold by the VM's policy); "
                                "{\"cancel\": true} gives up a cold move, or a live one its source has not started",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "properties": {"to": {"type": "string"}, "cancel": {"type": "boolean"}}}}}},
                     "responses": {"200": {"description": "migration requested (or cancelled); follow the farm's "
                                                         "status"},
                                   "400": {"description": "bad body"}, "404": {"description": "no such farm"},
                                   "409": {"description": "cannot move there now (and why)"}}}},
        "/v1/farms/{name}/keys/rotate": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": {"summary": "New keys for the farm's VNETs (or one: {\"vnet\": NAME}), in three steps "
                                "key_rotation_step_s apart: added, sent with, the old ones retired",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "properties": {"vnet": {"type": "string"}}}}}},
                     "responses": {"200": {"description": "rotation started (which VNETs)"},
                                   "400": {"description": "bad body"}, "403": {"description": "read-only token"},
                                   "404": {"description": "no such farm, or no keys yet"},
                                   "409": {"description": "that VNET's rotation is still in progress"}}}},
        "/v1/events": {"get": {
            "summary": "The event log (admins: all; others: their farms')",
            "parameters": [{"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["farm", "host"]}},
                           {"name": "name", "in": "query", "schema": {"type": "string"}},
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                        "maximum": 1000}}],
            "responses": {"200": {"description": "events, oldest first"}, "400": {"description": "bad query"}}}},
        "/v1/hosts": {"get": {"summary": "Hosts and their last status", "responses": {"200": {"description": "list"}}}},
        "/v1/hosts/join": {"post": {"summary": "A gatekeeper joins: one-time token + CSR -> certificate",
                                    "security": [], "responses": {"200": {"description": "certificate"},
                                                                  "403": {"description": "bad token"}}}},
        "/v1/hosts/{name}/state": {"put": {
            "summary": "Take a host out of placement or back in (admin)",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["state"],
                "properties": {"state": {"type": "string", "enum": ["ready", "draining", "maintenance"]}}}}}},
            "responses": {"200": {"description": "stored"}, "400": {"description": "bad state"},
                          "403": {"description": "not an admin"}, "404": {"description": "no such host"}}}},
        "/v1/hosts/{name}": {"delete": {
            "summary": "Remove a host (admin): its certificate is refused from then on; join again to come back",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "force", "in": "query", "schema": {"type": "boolean"}}],
            "responses": {"200": {"description": "removed"}, "403": {"description": "not an admin"},
                          "404": {"description": "no such host"},
                          "409": {"description": "instances are placed there (and which); force to remove anyway"}}}},
        "/v1/hosts/{name}/desired": {"get": {"summary": "What a gatekeeper should run (mutual TLS only); a long "
                                                        "poll with since=ETAG&wait=SECONDS",
                                             "security": [], "parameters": [
                                                 {"name": "name", "in": "path", "required": True,
                                                  "schema": {"type": "string"}},
                                                 {"name": "since", "in": "query", "schema": {"type": "string"}},
                                                 {"name": "wait", "in": "query",
                                                  "schema": {"type": "number", "minimum": 0, "maximum": 60}}],
                                             "responses": {"200": {"description": "VNETs and VMs"},
                                                           "403": {"description": "bad certificate"}}}},
        "/v1/hosts/{name}/status": {"put": {"summary": "A gatekeeper reports (mutual TLS only)", "security": [],
                                            "parameters": [{"name": "name", "in": "path", "required": True,
                                                            "schema": {"type": "string"}}],
                                            "responses": {"200": {"description": "stored"},
                                                          "403": {"description": "bad certificate"}}}},
    },
}


IF_MATCH = re.compile(r'^\s*(?:"([0-9]{1,18})"|([0-9]{1,18}))\s*$')


def parse_if_match(header: str | None) -> int | None:
    """The revision an If-Match names: `3`, or the quoted entity tag `"3"` (RFC 9110). Anything
    else is refused: a compare-and-swap silently turned off overwrites someone's change (R28)."""
    if header is None:
        return None
    m = IF_MATCH.match(header)
    if not m:
        raise ApiError(400, f"If-Match: {header!r} is not a farm revision; send the revision you read "
                            "(`softudc get farm NAME`) as 3 or \"3\", or no If-Match to overwrite")
    return int(m.group(1) or m.group(2))


Route = tuple[str, re.Pattern[str], str]
NAME = r"(?P<name>[a-z0-9-]{1,40})"  # a farm or a host
INSTANCE = r"(?P<instance>[a-z0-9-]{1,60})"
ROUTES: list[Route] = [
    ("GET", re.compile(r"^/v1/openapi\.json$"), "openapi"),
    ("GET", re.compile(r"^/v1/farms$"), "list_farms"),
    ("GET", re.compile(rf"^/v1/farms/{NAME}$"), "get_farm"),
    ("PUT", re.compile(rf"^/v1/farms/{NAME}$"), "put_farm"),
    ("DELETE", re.compile(rf"^/v1/farms/{NAME}$"), "delete_farm"),
    ("POST", re.compile(rf"^/v1/farms/{NAME}/plan$"), "plan"),
    ("POST", re.compile(rf"^/v1/farms/{NAME}/instances/{INSTANCE}/migrate$"), "migrate"),
    ("POST", re.compile(rf"^/v1/farms/{NAME}/keys/rotate$"), "rotate_keys"),
    ("GET", re.compile(r"^/v1/hosts$"), "list_hosts"),
    ("GET", re.compile(r"^/v1/events$"), "list_events"),
    ("POST", re.compile(r"^/v1/hosts/join$"), "join"),
    ("PUT", re.compile(rf"^/v1/hosts/{NAME}/state$"), "set_host_state"),
    ("DELETE", re.compile(rf"^/v1/hosts/{NAME}$"), "delete_host"),
    ("PUT", re.compile(rf"^/v1/hosts/{NAME}/status$"), "host_status"),
    ("GET", re.compile(rf"^/v1/hosts/{NAME}/desired$"), "desired"),
]


def make_handler(m: Manager) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "softudc-manager"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet; metrics count requests
            pass

        def _reply(self, status: int, body: Any, route: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            m.requests.labels(route, str(status)).inc()

        def _read_body(self) -> None:
            """Read the whole body before anything else: one left in the stream would corrupt the
            next request on this keep-alive connection."""
            self._raw = b""
            self._too_big = False
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if n < 0 or n > MAX_BODY:
                self._too_big = True
                self.close_connection = True
                return
            self._raw = self.rfile.read(n) if n else b""

        def _body(self) -> bytes:
            if self._too_big:
                raise ApiError(413, f"body missing a valid Content-Length or over {MAX_BODY} bytes")
            return self._raw

        def _json(self) -> dict[str, Any]:
            try:
                data = json.loads(self._body() or b"{}")
            except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
                raise ApiError(400, "body must be JSON (and not nested hundreds of levels deep)") from None
            if not isinstance(data, dict):
                raise ApiError(400, "body must be a JSON object")
            return data

        def _peer_cn(self) -> str | None:
            cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
            if not cert:
                return None
            subject: Any = cert.get("subject", ())  # ((("commonName", "h1"),), ...)
            for rdn in subject:
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
            return None

        def _peer_fingerprint(self) -> str | None:
            der = self.connection.getpeercert(True) if isinstance(self.connection, ssl.SSLSocket) else None
            return hashlib.sha256(der).hexdigest() if der else None

        def _dispatch(self, method: str) -> None:
            self._read_body()
            path = self.path.split("?", 1)[0]
            for meth, pattern, op in ROUTES:
                match = pattern.match(path)
                if not match:
                    continue
                if meth != method:
                    continue
                try:
                    self._reply(200, self._run(op, **match.groupdict()), op)
                except AuthError as e:
                    self._reply(e.status, {"error": str(e)}, op)
                except ApiError as e:
                    self._reply(e.status, {"error": str(e), **e.extra}, op)
                except Exception as e:
                    self._reply(500, {"error": f"internal error: {type(e).__name__}: {e}"}, op)
                return
            known = any(p.match(path) for _, p, _ in ROUTES)
            self._reply(405 if known else 404, {"error": f"{method} {path}: " +
                                                ("method not allowed" if known else "no such route")}, "unknown")

        def _run(self, op: str, **args: str) -> Any:
            if op == "openapi":
                return OPENAPI
            if op == "join":
                return m.join(self._json())
            if op in ("host_status", "desired"):  # one certificate per host name (audit R14)
                m.authenticate_host(args["name"], self._peer_cn(), self._peer_fingerprint())
            if op == "host_status":
                stored = m.host_status(self._peer_cn(), args["name"], self._json())
                m.note_address(args["name"], str(self.client_address[0]))  # only once it authenticated (R20)
                return stored
            if op == "desired":
                query = dict(parse_qsl(self.path.partition("?")[2]))
                try:
                    wait = float(query.get("wait", 0))
                    if not math.isfinite(wait):
                        raise ValueError(wait)
                except ValueError:
                    raise ApiError(400, f"wait: {query['wait']!r} is not a number of seconds") from None
                return m.desired(self._peer_cn(), args["name"], query.get("since", ""), wait)
            who = m.tokens.authenticate(self.headers.get("Authorization"))
            if op == "delete_host":
                force = dict(parse_qsl(self.path.partition("?")[2])).get("force") in ("1", "true")
                return m.delete_host(who, args["name"], force)
            if op == "set_host_state":
                return m.set_host_state(who, args["name"], self._json())
            if op == "list_events":
                query = dict(parse_qsl(self.path.partition("?")[2]))
                return m.list_events(who, query)
            if op == "migrate":
                return m.migrate(who, args["name"], args["instance"], self._json())
            if op == "rotate_keys":
                return m.rotate_keys(who, args["name"], self._json())
            if op == "plan":
                return m.plan(who, args["name"], self._body().decode("utf-8", "replace"))
            if op == "put_farm":
                expect = parse_if_match(self.headers.get("If-Match"))
                return m.put_farm(who, args["name"], self._body().decode("utf-8", "replace"), expect)
            fn: Callable[..., Any] = getattr(m, op)
            return fn(who, **args)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def __getattr__(self, name: str) -> Any:
            # Any other method (TRACE, PATCH, OPTIONS, ...): 405 with a message, not a bare 501.
            if name.startswith("do_"):
                return lambda: self._dispatch(name[3:])
            raise AttributeError(name)

    return Handler


def serve(m: Manager, host: str, port: int, **limits: Any) -> TlsServer:
    """Start the API on a background thread; returns the server (`.server_address`, `.shutdown()`).
    `limits`: the server's bounds (see `softudc.manager.server`), for tests."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(m.state_dir / "pki" / "server.crt"), str(m.state_dir / "pki" / "server.key"))
    ctx.load_verify_locations(str(m.state_dir / "pki" / "ca.crt"))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # admins come with tokens, gatekeepers with certificates
    server = TlsServer((host, port), make_handler(m), ctx, max_body=MAX_BODY, **limits)
    with contextlib.suppress(ValueError):  # a second server for the same Manager (tests): the first one's stay
        m.registry.register(ServerCollector(server))
    threading.Thread(target=server.serve_forever, name="manager-api", daemon=True).start()
    return server
