"""The gatekeeper's HTTPS link to the manager: mutual TLS with the certificate the host got when
it joined, verified against the manager's CA, on one keep-alive connection pool.

Every failure (the manager unreachable, a refused request, an answer too large or not JSON) is
one `ManagerLinkError` whose message says what to look at; the sync loop logs it and retries.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import urlparse

import httpx

DEFAULT_PORT = 8443
TIMEOUT_S = 10.0  # beyond any long poll's wait: a call waiting `wait` s gets `wait + TIMEOUT_S`
MAX_ANSWER = 16 << 20  # bytes; the desired state of a large host is far below this


class ManagerLinkError(RuntimeError):
    """A call to the manager failed; the message says what to check."""


class ManagerLink:
    """JSON calls to the manager. Not for concurrent use: the sync loop makes one call at a time."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http
        self.base = str(http.base_url).rstrip("/")

    @classmethod
    def mutual_tls(cls, url: str, ca: str, cert: str, key: str) -> ManagerLink:
        """The link a gatekeeper uses: its own certificate and key, the manager checked against `ca`."""
        u = urlparse(url)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        return cls(httpx.Client(base_url=f"https://{u.hostname or '127.0.0.1'}:{u.port or DEFAULT_PORT}",
                                verify=ctx, timeout=TIMEOUT_S, headers={"Content-Type": "application/json"}))

    def call(self, method: str, path: str, body: Any = None, wait: float = 0.0) -> Any:
        """The decoded JSON answer of a 200; `wait` is how long the manager may hold the answer."""
        content = None if body is None else json.dumps(body).encode()
        try:
            with self._http.stream(method, path, content=content, timeout=wait + TIMEOUT_S) as r:
                raw = self._read_bounded(r, method, path)
                status = r.status_code
        except httpx.HTTPError as e:
            why = str(e) or type(e).__name__  # a timeout's message may be empty
            raise ManagerLinkError(f"manager {self.base}: {method} {path}: {why}; check that the manager runs "
                                   "and that [manager] url, ca, cert and key in the gatekeeper's config are "
                                   "right") from e
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
                raise ManagerLinkError(f"manager {self.base}: {method} {path}: the answer exceeds "
                                       f"{MAX_ANSWER >> 20} MiB; refused (check the manager's version)")
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._http.close()
