"""What the manager's smaller API routers (load and drain, power, rollouts, plans, usage) share:
the manager, the caller's principal from its bearer token, and an admin-only check whose refusal
names what the caller may not do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager

bearer = HTTPBearer(auto_error=False, scheme_name="token", description="an API token")


async def manager(request: Request) -> Manager:
    m: Manager = request.app.state.manager
    return m


def principal(m: Annotated[Manager, Depends(manager)],
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    return m.tokens.authenticate(f"Bearer {credentials.credentials}" if credentials else None)


Mgr = Annotated[Manager, Depends(manager)]
Who = Annotated[Principal, Depends(principal)]


def admin_only(doing: str) -> Callable[[Principal], Principal]:
    """A dependency: the caller if an admin, else 403 saying it may not `doing`."""
    def check(who: Who) -> Principal:
        if who.role != "admin":
            raise ApiError(403, f"{who.name} ({who.role}) may not {doing}; that takes an admin token")
        return who
    return check
