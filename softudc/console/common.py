"""What every console route needs: the templates, the session of the request (or a redirect to
the login page), the form a POST sent, and the manager."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from softudc.console.history import LoadHistory
from softudc.console.sessions import COOKIE, Session, Sessions
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape on for .html
MAX_FORM = 1 << 20  # bytes: a descriptor is far smaller


class NotLoggedIn(Exception):
    """No valid session: pages redirect to the login page, fragments and posts answer 401."""


def manager(request: Request) -> Manager:
    m: Manager = request.app.state.manager
    return m


def sessions(request: Request) -> Sessions:
    """The app's console sessions (made on first use, for the manager's token store)."""
    s: Sessions | None = getattr(request.app.state, "console_sessions", None)
    if s is None:
        s = request.app.state.console_sessions = Sessions(manager(request).tokens)
    return s


def history(request: Request) -> LoadHistory:
    """The app's load history for the sparklines (made on first use)."""
    h: LoadHistory | None = getattr(request.app.state, "console_history", None)
    if h is None:
        h = request.app.state.console_history = LoadHistory()
    return h


def current(request: Request) -> tuple[Session, Principal]:
    found = sessions(request).lookup(request.cookies.get(COOKIE))
    if found is None:
        raise NotLoggedIn()
    return found


async def form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the first value of each); oversized bodies are cut off."""
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def page(request: Request, template: str, who: Principal | None, session: Session | None, code: int = 200,
         **context: Any) -> HTMLResponse:
    ctx = {"who": who, "admin": who is not None and who.role == "admin",
           "csrf": session.csrf if session else "", **context}
    return templates.TemplateResponse(request, template, ctx, status_code=code)


def to_login(request: Request, exc: Exception) -> Response:
    path = request.url.path
    if request.method == "GET" and "/fragments/" not in path and path != "/console/stream" \
            and "HX-Request" not in request.headers:
        return RedirectResponse("/console/login", status_code=303)
    return HTMLResponse("<p class=error>not logged in: <a href='/console/login'>log in</a></p>", status_code=401)


def view(request: Request, template: str, build: Callable[[Manager, Principal], dict[str, Any]],
         gone: str | None = None) -> HTMLResponse:
    """`template` with what `build` makes for the session's principal. An ApiError (no such thing,
    or not for this principal) gives the not-found page; a fragment (`gone` given) a line saying so."""
    s, who = current(request)
    try:
        ctx = build(manager(request), who)
    except ApiError as e:
        if gone is not None:
            return HTMLResponse(f"<p class=error>{e.status}: {html.escape(gone)}</p>")
        return page(request, "missing.html", who, s, code=e.status, message=str(e))
    return page(request, template, who, s, **ctx)
