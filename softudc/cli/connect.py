"""Where the admin commands reach the manager: a lab's (`--lab NAME`, through its management
namespace) or any manager by URL (`--manager URL[,URL...]`, or $SOFTUDC_MANAGER: the managers of
one group, tried in turn), with their CA and an API token. Without either, the manager
`softudc init` made in the state directory, on this host."""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx

from softudc.cli.errors import CliError
from softudc.lab import LabError, load_lab
from softudc.lab.manager import call
from softudc.lab.state import Lab, default_state_dir

DEFAULT_PORT = 8443
TIMEOUT = httpx.Timeout(30.0, connect=10.0)  # a plan or an apply of a large farm takes a few seconds


class Api(Protocol):
    @property
    def hint(self) -> str: ...  # how to name this manager again on a command line

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]: ...


@dataclass
class LabApi:
    lab: Lab

    @property
    def hint(self) -> str:
        return f"--lab {self.lab.spec.name}"

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        return call(self.lab, method, path, body)


class _Down(Exception):
    """This manager could not answer; another of the group may."""


@dataclass
class UrlApi:
    """Managers by URL, over HTTPS: their certificate checked against `ca`, a bearer token. `url`
    lists one manager or several separated by commas (one group): a call goes to the one that
    answered last and on to the next when it cannot be reached or answers 5xx."""

    url: str
    ca: str
    token: str
    _current: int = field(default=0, repr=False)

    @property
    def urls(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def hint(self) -> str:
        return f"--manager {','.join(self.urls)}"

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        urls, failed = self.urls, []
        answered: tuple[int, Any] | None = None  # the last 5xx, shown when no manager does better
        for step in range(len(urls)):
            i = (self._current + step) % len(urls)
            try:
                status, data = self._one(urls[i], method, path, body)
            except _Down as e:
                failed.append(f"{urls[i]}: {e}")
                continue
            if status >= 500 and step < len(urls) - 1:
                answered = status, data
                failed.append(f"{urls[i]}: {status}")
                continue
            self._current = i
            return status, data
        if answered is not None:
            return answered
        where = "manager" if len(urls) == 1 else "managers"
        raise CliError(f"{where} {', '.join(urls)}: {method} {path}: {'; '.join(failed)}; is one running there, and "
                       f"is {self.ca} its CA (--ca)?")

    def _one(self, url: str, method: str, path: str, body: str | None) -> tuple[int, Any]:
        try:
            verify = ssl.create_default_context(cafile=self.ca)
            with httpx.Client(base_url=_base(url), verify=verify, timeout=TIMEOUT) as client:
                r = client.request(method, path, content=body, headers={"Authorization": f"Bearer {self.token}"})
        except (httpx.HTTPError, ssl.SSLError, OSError) as e:
            raise _Down(str(e) or type(e).__name__) from None
        try:
            return r.status_code, r.json() if r.content else None
        except ValueError:
            if r.status_code >= 500:  # a proxy's error page: another manager may answer
                raise _Down(f"{r.status_code} with an answer that is not JSON") from None
            raise CliError(f"manager {url}: {method} {path}: {r.status_code} with an answer that is not JSON; "
                           "is --manager the URL of a SoftUDC manager's API?") from None


def _base(url: str) -> str:
    u = urlparse(url)
    host = u.hostname or "127.0.0.1"
    return f"https://{f'[{host}]' if ':' in host else host}:{u.port or DEFAULT_PORT}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lab", help="a lab's manager (softudc lab up NAME --vms --manager)")
    p.add_argument("--manager", help="manager URL, e.g. https://10.0.0.1:8443, or several of one group separated "
                                     "by commas (default $SOFTUDC_MANAGER, else the one `softudc init` made here)")
    p.add_argument("--ca", help="the manager's CA certificate (default $SOFTUDC_CA, else from `softudc init`)")
    p.add_argument("--token-file", help="file with an API token (default $SOFTUDC_TOKEN, else the admin token "
                                        "`softudc init` saved)")


def connect(a: argparse.Namespace) -> Api:
    if a.lab:
        lab = load_lab(a.lab, a.state_dir)
        if not (lab.manager_pid or lab.managers):
            raise LabError(f"lab {a.lab} has no manager (start it with `softudc lab up {a.lab} --vms --manager`)")
        return LabApi(lab)
    local = Path(a.state_dir or default_state_dir()) / "manager"
    url = a.manager or os.environ.get("SOFTUDC_MANAGER") or "https://127.0.0.1:8443"
    _check_urls(url)
    ca = a.ca or os.environ.get("SOFTUDC_CA") or str(local / "pki" / "ca.crt")
    if not Path(ca).is_file():
        raise CliError(f"{ca}: no CA certificate; name the manager's with --ca or $SOFTUDC_CA "
                       "(or use --lab NAME for a lab)")
    token = os.environ.get("SOFTUDC_TOKEN", "")
    token_file = a.token_file or ("" if token else str(local / "admin.token"))
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise CliError(f"{token_file}: {e.strerror}; give an API token with --token-file or $SOFTUDC_TOKEN") \
                from None
    return UrlApi(url, ca, token)


def _check_urls(url: str) -> None:
    for one in url.split(","):
        try:
            u = urlparse(one.strip())
            u.port  # noqa: B018 - raises on a port out of range
        except ValueError as e:
            raise CliError(f"--manager: {one.strip()!r}: {e}; expected https://HOST[:PORT][,https://HOST[:PORT]...]") \
                from None
        if u.scheme != "https" or not u.hostname:
            raise CliError(f"--manager: {one.strip()!r} is not a manager's URL; expected https://HOST[:PORT], several "
                           "separated by commas (or $SOFTUDC_MANAGER likewise)")
