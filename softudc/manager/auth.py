"""Admin API tokens with roles: `admin` (everything), and per-farm `operator` (read and change
those farms) and `viewer` (read them). Tokens are kept only as SHA-256 digests, in a 0600 file
changed under a lock and replaced atomically: a request never reads half a file."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from softudc.atomicfile import locked, write_atomic

ROLES = ("admin", "operator", "viewer")


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    farms: tuple[str, ...] = ()  # for operator and viewer: the farms they may touch

    def can_read(self, farm: str) -> bool:
        return self.role == "admin" or farm in self.farms

    def can_write(self, farm: str) -> bool:
        return self.role == "admin" or (self.role == "operator" and farm in self.farms)


def new_token(role: str, farms: list[str] | None) -> str:
    """A new API token for `role` (checked: a role of ROLES, and farms for operator and viewer)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}, expected one of {', '.join(ROLES)}")
    if role != "admin" and not farms:
        raise ValueError(f"a {role} token needs the farms it is for")
    return "sudc_" + secrets.token_urlsafe(32)


def bearer_digest(header: str | None) -> str:
    """The SHA-256 digest (hex) of the token in an `Authorization: Bearer` header; 401 without one."""
    if not header or not header.startswith("Bearer "):
        raise AuthError(401, "missing 'Authorization: Bearer <token>' (create one with `softudc init`)")
    return hashlib.sha256(header[7:].strip().encode()).hexdigest()


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data: dict[str, dict[str, object]] = json.loads(self.path.read_text())
            return data
        except FileNotFoundError:
            return {}

    def create(self, name: str, role: str, farms: list[str] | None = None) -> str:
        token = new_token(role, farms)
        with locked(self.path):
            tokens = self._load()
            tokens[hashlib.sha256(token.encode()).hexdigest()] = {"name": name, "role": role, "farms": farms or []}
            write_atomic(self.path, json.dumps(tokens, indent=1).encode())
        return token

    def authenticate(self, header: str | None) -> Principal:
        entry = self._load().get(bearer_digest(header))
        if entry is None:
            raise AuthError(401, "unknown token")
        farms = entry.get("farms", [])
        assert isinstance(farms, list)
        return Principal(str(entry["name"]), str(entry["role"]), tuple(str(f) for f in farms))
