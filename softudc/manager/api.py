"""The manager's REST API on FastAPI: the routes (their request and answer models, in `apimodels`,
make the OpenAPI document at /v1/openapi.json) and the mapping of errors onto `{"error": ...}`
answers. `softudc.manager.daemon` serves it over HTTPS.

Administrators authenticate with bearer tokens (roles in `auth`); gatekeepers with client
certificates from the manager's CA (their routes refuse anything else): the server puts the
certificate the TLS handshake verified into the request's scope (`extensions.tls`).

Blocking service calls (sqlite, the reconcile lock) run on a small thread pool (`workers`); long
polls wait on the event loop (`Manager.wait_desired`), holding no thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from anyio import to_thread
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from softudc.console.app import install as install_console
from softudc.etcd.client import EtcdError
from softudc.manager import (
    apiload,
    apiplans,
    apipower,
    apirollout,
    apiusage,
    dpm,
    volume_moves_api,
    volume_objects_api,
)
from softudc.manager.apimodels import (
    INSTANCE_PATTERN,
    NAME_PATTERN,
    REPORT_BODY,
    YAML_BODY,
    Applied,
    ErrorAnswer,
    FarmAnswer,
    FarmDeleted,
    FarmSummary,
    HostRemoved,
    HostState,
    HostStateRequest,
    HostSummary,
    Joined,
    JoinRequest,
    ManagerStatus,
    MigrateAnswer,
    MigrateRequest,
    PlanAnswer,
    ReportStored,
    RotateAnswer,
    RotateRequest,
    errors,
)
from softudc.manager.auth import AuthError, Principal
from softudc.manager.service import ApiError, Manager
from softudc.model.hoststate import DesiredState, HostReport
from softudc.power.factory import driver_for

MAX_BODY = 1 << 20  # bytes: a farm descriptor or a host report is far smaller
WORKERS = 8  # threads for blocking service calls
MAX_PROBLEMS = 20  # validation problems named in one answer
TOO_LARGE = f"body over {MAX_BODY} bytes: refused, nothing was changed (a farm or a report is far smaller)"


@dataclass
class ApiStats:
    """What the server refused or cut off, by reason (metrics)."""

    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


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


# --- who is asking (async where no I/O: FastAPI runs a sync dependency on the thread pool) -------

async def _manager(request: Request) -> Manager:
    m: Manager = request.app.state.manager
    return m


_bearer = HTTPBearer(auto_error=False, scheme_name="token", description="an API token (`softudc init` makes "
                                                                          "the admin's)")


def _principal(m: Annotated[Manager, Depends(_manager)],
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    return m.tokens.authenticate(f"Bearer {credentials.credentials}" if credentials else None)


PEER_KEY = "softudc.peer"  # scope["extensions"]["tls"][PEER_KEY]: the connection's Peer, if the server made it


@dataclass(frozen=True)
class Peer:
    """The client certificate the TLS handshake verified: its common name and SHA-256 fingerprint."""

    cn: str | None = None
    fingerprint: str | None = None


def peer_of(chain: list[str]) -> Peer:
    """The Peer of a verified chain (PEM, the client's certificate first; empty: no certificate)."""
    if not chain:
        return Peer()
    der = ssl.PEM_cert_to_DER_cert(chain[0])
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Peer(str(names[0].value) if names else None, hashlib.sha256(der).hexdigest())


async def _peer(request: Request) -> Peer:
    tls = request.scope.get("extensions", {}).get("tls", {})
    peer = tls.get(PEER_KEY)  # parsed once per connection by the server (daemon.py)
    return peer if isinstance(peer, Peer) else peer_of(tls.get("client_cert_chain") or [])


Mgr = Annotated[Manager, Depends(_manager)]
Who = Annotated[Principal, Depends(_principal)]
Cert = Annotated[Peer, Depends(_peer)]
FarmName = Annotated[str, Path(pattern=NAME_PATTERN, description="a farm")]
HostName = Annotated[str, Path(pattern=NAME_PATTERN, description="a host")]
Instance = Annotated[str, Path(pattern=INSTANCE_PATTERN, description="an instance of the farm, e.g. web-0")]

router = APIRouter()


# --- farms ----------------------------------------------------------------------------------------

@router.get("/v1/farms", summary="Farms the caller may read", response_model=list[FarmSummary],
            responses=errors(401))
def list_farms(m: Mgr, who: Who) -> Any:
    return m.list_farms(who)


@router.get("/v1/farms/{name}", summary="A farm: spec, status, events", response_model=FarmAnswer,
            responses=errors(401, 404))
def get_farm(m: Mgr, who: Who, name: FarmName) -> Any:
    return m.get_farm(who, name)


@router.put("/v1/farms/{name}", summary="Apply a farm descriptor (YAML)", response_model=Applied,
            openapi_extra=YAML_BODY, responses={
                **errors(401, 403, 413),
                400: {"model": ErrorAnswer, "description": "problems (every one named), or a malformed If-Match"},
                409: {"model": ErrorAnswer, "description": "changed since read, or cannot be planned (and why)"}})
async def put_farm(request: Request, m: Mgr, who: Who, name: FarmName, if_match: Annotated[str | None, Header(
        description="the revision read: 3 or \"3\"; anything else is a 400")] = None) -> Any:
    expect = parse_if_match(if_match)
    text = (await request.body()).decode("utf-8", "replace")
    return await run_in_threadpool(m.put_farm, who, name, text, expect)


@router.delete("/v1/farms/{name}", summary="Delete a farm", response_model=FarmDeleted,
               responses=errors(401, 403, 404))
def delete_farm(m: Mgr, who: Who, name: FarmName) -> Any:
    return m.delete_farm(who, name)


@router.post("/v1/farms/{name}/plan", response_model=PlanAnswer, openapi_extra=YAML_BODY,
             summary="What applying a descriptor would change (stores nothing); for a farm that does not "
                     "exist, a token that may create it", responses={
                         **errors(400, 401, 404, 413),
                         403: {"model": ErrorAnswer, "description": "may not create this farm"},
                         409: {"model": ErrorAnswer, "description": "cannot be planned (and why)"}})
async def plan(request: Request, m: Mgr, who: Who, name: FarmName) -> Any:
    text = (await request.body()).decode("utf-8", "replace")
    return await run_in_threadpool(m.plan, who, name, text)


@router.post("/v1/farms/{name}/instances/{instance}/migrate", response_model=MigrateAnswer,
             summary="Move an instance to another host (live, or cold by the VM's policy); {\"cancel\": true} "
                     "gives up a cold move, or a live one its source has not started", responses={
                         **errors(400, 401, 403, 404),
                         409: {"model": ErrorAnswer, "description": "cannot move there now (and why)"}})
def migrate(m: Mgr, who: Who, name: FarmName, instance: Instance, body: MigrateRequest) -> Any:
    return m.migrate(who, name, instance, body.model_dump(exclude_none=True))


@router.post("/v1/farms/{name}/keys/rotate", response_model=RotateAnswer,
             summary="New keys for the farm's VNETs (or one: {\"vnet\": NAME}), in three steps "
                     "key_rotation_step_s apart: added, sent with, the old ones retired", responses={
                         **errors(400, 401, 403),
                         404: {"model": ErrorAnswer, "description": "no such farm, or no keys yet"},
                         409: {"model": ErrorAnswer, "description": "that VNET's rotation is still in progress"}})
def rotate_keys(m: Mgr, who: Who, name: FarmName, body: Annotated[RotateRequest | None, Body()] = None) -> Any:
    return m.rotate_keys(who, name, body.model_dump(exclude_none=True) if body else {})


@router.get("/v1/events", summary="The event log (admins: all; others: their farms'), oldest first",
            response_model=list[dict[str, Any]], responses=errors(400, 401, 403, 404))
def list_events(m: Mgr, who: Who, kind: Literal["farm", "host", "manager"] | None = None,
                name: Annotated[str | None, Query(max_length=60)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    query = {"limit": str(limit)} | ({"kind": kind} if kind else {}) | ({"name": name} if name is not None else {})
    return m.list_events(who, query)


# --- the managers ---------------------------------------------------------------------------------

@router.get("/v1/manager/status", summary="This manager, the group's leader and members, the store's health",
            response_model=ManagerStatus, responses=errors(401))
def manager_status(m: Mgr, who: Who) -> Any:
    return m.manager_status()


# --- hosts ----------------------------------------------------------------------------------------

@router.get("/v1/hosts", summary="Hosts and their last status", response_model=list[HostSummary],
            responses=errors(401))
def list_hosts(m: Mgr, who: Who) -> Any:
    return m.list_hosts(who)


@router.post("/v1/hosts/join", summary="A gatekeeper joins: one-time token + CSR -> certificate",
             response_model=Joined, openapi_extra={"security": []}, responses={
                 **errors(400), 403: {"model": ErrorAnswer, "description": "bad or spent token"}})
def join(m: Mgr, body: JoinRequest) -> Any:
    return m.join(body.model_dump())


@router.put("/v1/hosts/{name}/state", summary="Take a host out of placement or back in (admin)",
            response_model=HostState, responses=errors(400, 401, 403, 404))
def set_host_state(m: Mgr, who: Who, name: HostName, body: HostStateRequest) -> Any:
    return m.set_host_state(who, name, body.model_dump())


@router.delete("/v1/hosts/{name}", response_model=HostRemoved,
               summary="Remove a host (admin): its certificate is refused from then on; join again to come back",
               responses={**errors(401, 403, 404), 409: {
                   "model": ErrorAnswer, "description": "instances are placed there (and which); force to remove "
                                                        "anyway"}})
def delete_host(m: Mgr, who: Who, name: HostName, force: bool = False) -> Any:
    return m.delete_host(who, name, force)


@router.put("/v1/hosts/{name}/status", summary="A gatekeeper reports (mutual TLS only)", response_model=ReportStored,
            openapi_extra={"security": [], **REPORT_BODY}, responses=errors(400, 403, 404, 413))
def host_status(request: Request, m: Mgr, peer: Cert, name: HostName,
                report: Annotated[dict[str, Any], Body(description="the host's report")]) -> Any:
    # On the server, a report that is only a heartbeat never gets here: FastPath answers it first.
    m.authenticate_host(name, peer.cn, peer.fingerprint)  # one certificate per host name (audit R14)
    stored = m.host_status(peer.cn, name, report)
    if request.client is not None:  # only once it authenticated (R20)
        m.note_address(name, request.client.host)
    return stored


@router.get("/v1/hosts/{name}/desired", openapi_extra={"security": []},
            summary="What a gatekeeper should run (mutual TLS only); a long poll with since=ETAG&wait=SECONDS",
            responses={200: {"model": DesiredState, "description": "the host's desired state (the contract, "
                                                                  "softudc/model/hoststate.py), with its etag"},
                       **errors(400, 403)})
async def desired(m: Mgr, peer: Cert, name: HostName,
                  since: Annotated[str, Query(max_length=64, description="the etag the host has")] = "",
                  wait: Annotated[float, Query(allow_inf_nan=False, description="seconds to wait for a change "
                                               "from `since` (at most 60; more is cut to 60)")] = 0.0) -> Any:
    if not m.host_known(name, peer.cn, peer.fingerprint):  # from memory; else a look at the store says why
        await run_in_threadpool(m.authenticate_host, name, peer.cn, peer.fingerprint)
    return await m.wait_desired(peer.cn, name, since, wait)  # waits on this loop: no thread per long poll


# --- errors and counting ------------------------------------------------------------------------

def _api_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, ApiError)
    return JSONResponse({"error": str(e), **e.extra}, status_code=e.status)


def _auth_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, AuthError)
    return JSONResponse({"error": str(e)}, status_code=e.status, headers={"WWW-Authenticate": "Bearer"})


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()))
    why = error.get("ctx", {}).get("error") if error.get("type") == "json_invalid" else None
    return f"{where}: {error.get('msg', 'invalid')}" + (f" ({why})" if why else "")


def _invalid(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    problems = [_problem(err) for err in e.errors()[:MAX_PROBLEMS]]
    return JSONResponse({"error": f"{len(e.errors())} problem(s) in the request, nothing was changed: " +
                         "; ".join(problems) + " (see /v1/openapi.json for what this route takes)",
                         "problems": problems}, status_code=400)


def _http_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, StarletteHTTPException)
    where = f"{request.method} {request.url.path[:200]}"
    messages = {404: f"{where}: no such route (see /v1/openapi.json)",
                405: f"{where}: method not allowed",
                400: f"{e.detail}: the body must be JSON (an object, nested at most a few hundred levels)"}
    return JSONResponse({"error": messages.get(e.status_code, str(e.detail))}, status_code=e.status_code,
                        headers=e.headers)


def _store_unavailable(_: Request, e: Exception) -> JSONResponse:
    """etcd did not answer (no quorum, every member unreachable) or refused a write: the request
    may be tried again, here or at another manager of the group."""
    return JSONResponse({"error": f"the store is unavailable: {e}; try again, or another manager "
                                  "(softudc manager status shows the store's health)"},
                        status_code=503, headers={"Retry-After": "1"})


def _internal(_: Request, e: Exception) -> JSONResponse:
    return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}; see the manager's log"}, status_code=500)


class _Requests:
    """Our one middleware (one layer per request, not two): every answer counted in
    `softudc_manager_requests_total{route,status}` (route: the operation's name, `unknown` when
    no route matched; the 413s below too), and bodies over MAX_BODY refused as they are read: at
    once when their Content-Length says so, else as soon as the bytes read pass it (a chunked
    body). Starlette's limiter answers the first case in plain text; this API answers in JSON."""

    def __init__(self, app: ASGIApp, stats: ApiStats, counter: Counter | None,
                 latency: Histogram | None = None) -> None:
        self.app, self.stats, self.counter, self.latency = app, stats, counter, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        started = time.perf_counter()

        async def counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._limited(scope, receive, counting if self.counter is not None else send)
        finally:
            if self.counter is not None:
                route = getattr(scope.get("route"), "name", None) or "unknown"
                self.counter.labels(route, str(status)).inc()
                if self.latency is not None:
                    self.latency.labels(route).observe(time.perf_counter() - started)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        announced = dict(scope["headers"]).get(b"content-length", b"0")
        if not announced.isdigit() or int(announced) > MAX_BODY:
            self.stats.drop("body_too_large")
            return await JSONResponse({"error": TOO_LARGE}, status_code=413)(scope, receive, send)
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > MAX_BODY:
                self.stats.drop("body_too_large")
                raise StarletteHTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, limited, send)


def make_app(m: Manager | None, stats: ApiStats | None = None, workers: int = WORKERS) -> FastAPI:
    """The API for `m` (None: for its OpenAPI document only). `stats`: where the server's counts
    go; `workers`: threads for blocking service calls."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # This loop's threads: anyio's pool (sync routes and dependencies) and asyncio's (the
        # service's own to_thread calls), each bounded, so the process's threads are too.
        to_thread.current_default_thread_limiter().total_tokens = workers
        executor = ThreadPoolExecutor(max_workers=max(1, workers // 2), thread_name_prefix="manager-api-io")
        asyncio.get_running_loop().set_default_executor(executor)
        yield

    app = FastAPI(title="SoftUDC manager", version="v1", openapi_url="/v1/openapi.json", docs_url=None,
                  redoc_url=None, lifespan=lifespan, strict_content_type=False,
                  redirect_slashes=False)
    app.state.manager, app.state.stats = m, stats or ApiStats()
    app.include_router(router)
    app.include_router(apipower.router)  # host power (softudc/manager/apipower.py)
    app.include_router(apiload.router)  # hosts' and VMs' load (softudc/manager/apiload.py)
    app.include_router(apirollout.router)  # rolling host maintenance (softudc/manager/apirollout.py)
    app.include_router(apiusage.router)  # usage per farm and VM (softudc/manager/apiusage.py)
    app.include_router(volume_objects_api.router)  # every volume: the farms' (volumes_api.py) and objects
    app.include_router(volume_moves_api.router)  # online volume moves (softudc/manager/volume_moves_api.py)
    app.include_router(apiplans.router)  # rebalance plans (softudc/manager/apiplans.py)
    install_console(app)  # the web console under /console (softudc/console/)
    if m is not None:  # HA restart fences through the power drivers (softudc/manager/harestart.py)
        m.__dict__["power_drivers"] = driver_for
        m.__dict__["maintenance_step"] = dpm.maintenance_step  # the leader's pass: rollouts, consolidation (dpm.py)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(EtcdError, _store_unavailable)
    app.add_exception_handler(Exception, _internal)
    app.add_middleware(_Requests, stats=app.state.stats, counter=m.requests if m is not None else None,
                       latency=m.latency if m is not None else None)
    return app


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document, plus the host report's schema (the contract's HostReport): the route
    takes the report as a plain object so the service names every problem in its own words."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            report = HostReport.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.update({**report.pop("$defs", {}), "HostReport": report})
            _validation_is_400(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    return build


def _validation_is_400(doc: dict[str, Any]) -> None:
    """FastAPI documents a malformed request as a 422; this API answers 400 (see `_invalid`)."""
    bad = {"description": "a malformed request, every problem named",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}}
    for path in doc["paths"].values():
        for operation in path.values():
            if operation.get("responses", {}).pop("422", None) is not None:
                operation["responses"].setdefault("400", bad)
    for name in ("HTTPValidationError", "ValidationError"):
        doc["components"]["schemas"].pop(name, None)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the API serves at /v1/openapi.json."""
    return make_app(None).openapi()
