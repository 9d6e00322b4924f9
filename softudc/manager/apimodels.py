"""The manager API's request and answer models: they make the OpenAPI document, and the request
bodies are strict (a wrong type or an unknown field is a 400 naming it). Answers name the fields
clients read; anything else the service adds passes through."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-z0-9-]{1,40}$"  # a farm or a host
INSTANCE_PATTERN = r"^[a-z0-9-]{1,60}$"


# --- request bodies: strict, nothing unknown ------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class JoinRequest(_Body):
    token: str = Field(max_length=4096, description="the one-time join token (`softudc host join-token NAME`)")
    csr: str = Field(max_length=16384, description="the gatekeeper's certificate request, PEM")
    addresses: list[str] = Field(
        default_factory=list, max_length=4,
        description="the host's underlay IPs: the certificate then also serves (serverAuth, IP SAN: its NBD exports);"
                    " none (old gatekeepers): a client certificate")


class MigrateRequest(_Body):
    to: str | None = Field(None, pattern=NAME_PATTERN, description="the destination host")
    cancel: bool = Field(False, description="give up a cold move, or a live one its source has not started")


class RotateRequest(_Body):
    vnet: str | None = Field(None, max_length=64, description="one VNET of the farm; none: all of them")


class HostStateRequest(_Body):
    state: Literal["ready", "draining", "maintenance"]


# --- answers: the fields clients read; anything else the service adds passes through --------------

class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorAnswer(_Answer):
    error: str = Field(description="what went wrong and what to do next")
    problems: list[str] | None = Field(None, description="every problem found, where there were several")


class FarmSummary(_Answer):
    name: str
    revision: int
    vms: int


class FarmAnswer(_Answer):
    name: str
    revision: int
    spec: dict[str, Any]
    status: dict[str, Any]
    events: list[dict[str, Any]]


class Applied(_Answer):
    name: str
    revision: int
    status: dict[str, Any]


class FarmDeleted(_Answer):
    name: str
    deleted: bool
    revision: int


class PlanAnswer(_Answer):
    summary: str
    create: list[dict[str, Any]]
    delete: list[dict[str, Any]]
    unplaced: dict[str, Any]
    resize: list[dict[str, Any]]
    changes: bool


class MigrateAnswer(_Answer):
    farm: str
    instance: dict[str, Any]


class RotateAnswer(_Answer):
    farm: str
    rotating: list[str]
    step_s: float


class HostSummary(_Answer):
    name: str
    revision: int
    state: str


class Joined(_Answer):
    host: str
    certificate: str = Field(description="the host's certificate, PEM")
    ca: str = Field(description="the manager's CA certificate, PEM")


class HostState(_Answer):
    host: str
    state: str


class HostRemoved(_Answer):
    host: str
    removed: bool
    instances: list[str]


class ReportStored(_Answer):
    host: str
    stored: bool


class LeaderRecord(_Answer):
    id: str = Field(description="the leading manager's id (`softudc manager --id`)")
    url: str = Field(description="its API (`--advertise`)")
    since: float = Field(description="when it became leader (Unix time)")
    term: int = Field(description="elections so far in this group")
    reconciled: int = Field(description="the store revision its controllers have looked at everything up to")


class ManagerMember(_Answer):
    id: str
    url: str
    last_seen: float = Field(description="when it last refreshed its entry (Unix time)")
    role: Literal["leader", "follower"]


class StoreHealth(_Answer):
    backend: str = Field(description="sqlite or etcd")
    healthy: bool = Field(description="sqlite: always; etcd: a majority of its endpoints answer")
    path: str | None = Field(None, description="sqlite: the database file")
    size: int | None = Field(None, description="sqlite: bytes of the database and its write-ahead log")
    endpoints: list[dict[str, Any]] | None = Field(None, description="etcd: each endpoint's status (ok, leader, "
                                                                   "raft_term, raft_index, db_size, error)")


class ManagerStatus(_Answer):
    id: str = Field(description="the manager that answered")
    url: str
    role: Literal["leader", "follower"]
    leader: LeaderRecord | None = Field(description="none while the group elects one")
    members: list[ManagerMember] = Field(description="the managers of the group seen lately")
    store: StoreHealth
    revision: int = Field(description="the store's latest revision")
    lag: int | None = Field(description="revision less the leader's reconciled: writes its controllers have yet "
                                        "to look at")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorAnswer} for code in codes}


REPORT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/HostReport"}}}}}
YAML_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/yaml": {"schema": {"type": "string", "description": "a farm descriptor"}}}}}
