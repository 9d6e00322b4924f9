"""API tokens and one-time join tokens in the store, for managers that share one (etcd, issue 11):
the same interfaces as auth.TokenStore and the CA's join tokens (softudc/pki.py), kept as objects
so that a token made through one manager works at every other, wherever it runs.

    kind apitoken,  name = SHA-256 of the token: spec {"name", "role", "farms"}
    kind jointoken, name = SHA-256 of the token: spec {"host", "expires"}

Only digests are stored, never a token. A join token is spent by a compare-and-swap delete (at
the revision it was read at), so of two managers redeeming it at once exactly one wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from pathlib import Path

from softudc.manager.auth import AuthError, Principal, bearer_digest, new_token
from softudc.manager.store import Conflict, Store
from softudc.pki import PkiError

API = "apitoken"
JOIN = "jointoken"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StoreTokenStore:
    """auth.TokenStore's `create` and `authenticate`, over a Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, role: str, farms: list[str] | None = None) -> str:
        token = new_token(role, farms)
        self.store.put(API, digest(token), {"name": name, "role": role, "farms": farms or []}, expect=0)
        return token

    def authenticate(self, header: str | None) -> Principal:
        obj = self.store.get(API, bearer_digest(header))
        if obj is None:
            raise AuthError(401, "unknown token")
        return Principal(str(obj.spec["name"]), str(obj.spec["role"]), tuple(str(f) for f in obj.spec["farms"]))

    def import_file(self, path: Path) -> int:
        """Copy the digests of a tokens.json (auth.TokenStore's file) in; tokens already in the
        store are kept. Returns how many were added."""
        try:
            tokens: dict[str, dict[str, object]] = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        added = 0
        for key, entry in tokens.items():
            if self.store.get(API, key) is None:
                self.store.put(API, key, {"name": entry["name"], "role": entry["role"],
                                          "farms": entry.get("farms", [])})
                added += 1
        return added


class StoreJoinTokens:
    """The CA's one-time join tokens (`create_join_token`, `redeem_join_token`), over a Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, host: str, ttl: float = 3600.0) -> str:
        token = secrets.token_urlsafe(32)
        self.store.put(JOIN, digest(token), {"host": host, "expires": time.time() + ttl}, expect=0)
        return token

    def redeem(self, token: str) -> str:
        """The host the token was made for; the token is gone afterwards, and so are expired ones."""
        obj = self.store.get(JOIN, digest(token))
        unknown = PkiError("unknown or already used join token; create a new one with `softudc host join-token`")
        if obj is None:
            raise unknown
        try:
            self.store.delete(JOIN, obj.name, expect=obj.revision)
        except (Conflict, KeyError):
            raise unknown from None  # another manager spent it first
        self._drop_expired()
        if float(obj.spec["expires"]) < time.time():
            raise PkiError("the join token has expired; create a new one")
        return str(obj.spec["host"])

    def _drop_expired(self) -> None:
        now = time.time()
        for obj in self.store.objects(JOIN):
            if float(obj.spec["expires"]) <= now:
                with contextlib.suppress(Conflict, KeyError):  # someone else did
                    self.store.delete(JOIN, obj.name, expect=obj.revision)
