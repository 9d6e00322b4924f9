"""The gatekeeper's HTTPS link to the manager: mutual TLS with the certificate the host got when
it joined, verified against the manager's CA, on one keep-alive connection pool per manager.

Several managers (`[manager] url` lists them, separated by commas) serve one group: the link
sticks to the one that answered last; when it cannot be reached, times out or answers 502, 503 or
504, the same call goes on to the next (each manager at most once per call). A refusal (4xx) is
the manager's word on the request and is never asked elsewhere.

Every failure (no manager reachable, a refused request, an answer too large or not JSON) is one
`ManagerLinkError` whose message says what to look at; the sync loop logs it and retries.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import httpx

DEFAULT_PORT = 8443
TIMEOUT_S = 10.0  # beyond any long poll's wait: a call waiting `wait` s gets `wait + TIMEOUT_S`
MAX_ANSWER = 16 << 20  # bytes; the desired state of a large host is far below this
FAIL_OVER = frozenset({502, 503, 504})  # a manager (or a proxy before it) that cannot serve now

log = logging.getLogger("gatekeeper.manager")


class ManagerLinkError(RuntimeError):
    """A call to the manager failed; the message says what to check."""


class _Unavailable(Exception):
    """This manager could not answer the call; another may."""


class ManagerLink:
    """JSON calls to the managers. Not for concurrent use: the sync loop makes one call at a time
    (its heartbeats go while it converges, when it makes none)."""

    def __init__(self, http: httpx.Client | Sequence[httpx.Client]) -> None:
        self._clients = [http] if isinstance(http, httpx.Client) else list(http)
        if not self._clients:
            raise ValueError("a manager link needs at least one manager")
        self._bases = [str(c.base_url).rstrip("/") for c in self._clients]
        self._current = 0

    @property
    def base(self) -> str:
        """The manager this link talks to now."""
        return self._bases[self._current]

    @property
    def bases(self) -> list[str]:
        return list(self._bases)

    @classmethod
    def mutual_tls(cls, url: str | Sequence[str], ca: str, cert: str, key: str) -> ManagerLink:
        """The link a gatekeeper uses: its own certificate and key, the managers checked against `ca`.
        `url` is one manager's URL, several separated by commas, or a list of them."""
        urls = [u.strip() for u in url.split(",")] if isinstance(url, str) else list(url)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        return cls([httpx.Client(base_url=_base_url(u), verify=ctx, timeout=TIMEOUT_S,
                                 headers={"Content-Type": "application/json"}) for u in urls if u])

    def call(self, method: str, path: str, body: Any = None, wait: float = 0.0) -> Any:
        """The decoded JSON answer of a 200; `wait` is how long the manager may hold the answer."""
        content = None if body is None else json.dumps(body).encode()
        failed: list[tuple[str, str]] = []
        for step in range(len(self._clients)):
            i = (self._current + step) % len(self._clients)
            try:
                status, raw = self._one(i, method, path, content, wait)
            except _Unavailable as e:
                failed.append((self._bases[i], str(e)))
                continue
            if i != self._current:
                log.warning("manager link: now talking to %s (%s)", self._bases[i],
                            "; ".join(f"{b}: {why}" for b, why in failed))
                self._current = i
            return self._decode(status, raw, method, path)
        raise self._unreachable(method, path, failed)

    def _one(self, i: int, method: str, path: str, content: bytes | None, wait: float) -> tuple[int, bytes]:
        try:
            with self._clients[i].stream(method, path, content=content, timeout=wait + TIMEOUT_S) as r:
                raw = self._read_bounded(r, method, path)
                status = r.status_code
        except httpx.HTTPError as e:
            raise _Unavailable(str(e) or type(e).__name__) from e  # a timeout's message may be empty
        if status in FAIL_OVER:
            raise _Unavailable(f"{status} {_error_of(raw)}".rstrip())
        return status, raw

    def _unreachable(self, method: str, path: str, failed: list[tuple[str, str]]) -> ManagerLinkError:
        if len(failed) == 1:
            base, why = failed[0]
            return ManagerLinkError(f"manager {base}: {method} {path}: {why}; check that the manager runs and that "
                                    "[manager] url, ca, cert and key in the gatekeeper's config are right")
        tried = "; ".join(f"{b}: {why}" for b, why in failed)
        return ManagerLinkError(f"managers {', '.join(b for b, _ in failed)}: {method} {path}: none answered "
                                f"({tried}); check that one of them runs and that [manager] url, ca, cert and key "
                                "in the gatekeeper's config are right")

    def _decode(self, status: int, raw: bytes, method: str, path: str) -> Any:
        try:
            data = json.loads(raw or b"null")
        except ValueError:
            raise ManagerLinkError(f"manager {self.base}: {method} {path}: {status}, an answer that is not JSON; "
                                   "is [manager] url the manager's API?") from None
        if status != 200:
            error = data.get("error") if isinstance(data, dict) else ""
            raise ManagerLinkError(f"manager: {method} {path}: {status} {error or ''}")
        return data

    def _read_bounded(self, r: httpx.Response, method: str, path: str) -> bytes:
        chunks, size = [], 0
        for chunk in r.iter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER:
                raise ManagerLinkError(f"manager {str(r.request.url.copy_with(path='/', query=None)).rstrip('/')}: "
                                       f"{method} {path}: the answer exceeds {MAX_ANSWER >> 20} MiB; refused "
                                       "(check the manager's version)")
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for c in self._clients:
            c.close()


def _base_url(url: str) -> str:
    u = urlparse(url)
    host = u.hostname or "127.0.0.1"
    return f"https://{f'[{host}]' if ':' in host else host}:{u.port or DEFAULT_PORT}"


def _error_of(raw: bytes) -> str:
    """The `error` of a JSON answer, for the log (a proxy's page is not JSON: nothing)."""
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        return ""
    return str(data.get("error") or "") if isinstance(data, dict) else ""
