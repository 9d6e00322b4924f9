"""Console sessions: a login with an API token opens one; the browser holds only a random session
id (an HttpOnly, Secure, SameSite=Strict cookie). The token stays on the server and is checked
again on every request, exactly as the API checks it, so a token removed from the store ends its
sessions at once. Each session has its own CSRF token, which every form posts back."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from softudc.manager.auth import AuthError, Principal, TokenStore

COOKIE = "softudc_console"
IDLE_S = 8 * 3600.0  # a session unused this long is forgotten
MAX_SESSIONS = 1000  # the oldest go first beyond this


@dataclass
class Session:
    sid: str
    header: str  # "Bearer <token>", as the API receives it
    csrf: str
    used: float = field(default_factory=time.monotonic)


class Sessions:
    """Open sessions, in memory (a manager restart logs everybody out)."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def login(self, token: str) -> tuple[Session, Principal]:
        """A new session for `token`; AuthError (401) if the API would refuse it."""
        header = f"Bearer {token.strip()}"
        who = self.tokens.authenticate(header)
        s = Session(secrets.token_urlsafe(32), header, secrets.token_urlsafe(32))
        with self._lock:
            self._expire()
            if len(self._by_id) >= MAX_SESSIONS:
                del self._by_id[min(self._by_id.values(), key=lambda x: x.used).sid]
            self._by_id[s.sid] = s
        return s, who

    def lookup(self, sid: str | None) -> tuple[Session, Principal] | None:
        """The session and who it is for, checked against the token store now; None if there is
        no such session or its token is no longer valid."""
        with self._lock:
            s = self._by_id.get(sid or "")
            if s is None or time.monotonic() - s.used > IDLE_S:
                return None
            s.used = time.monotonic()
        try:
            return s, self.tokens.authenticate(s.header)
        except AuthError:
            self.logout(s.sid)
            return None

    def count(self) -> int:
        with self._lock:
            return len(self._by_id)

    def alive(self, sid: str) -> bool:
        with self._lock:
            return sid in self._by_id

    def logout(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    @staticmethod
    def csrf_ok(s: Session, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(s.csrf.encode(), sent.encode())

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [k for k, v in self._by_id.items() if now - v.used > IDLE_S]:
            del self._by_id[sid]
