"""Install the console on the manager's FastAPI app: its routes under /console, its static files,
and the redirect to the login page for requests without a session."""

from __future__ import annotations

import datetime

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from softudc.console import (
    actions,
    eventspage,
    planspage,
    stream,
    taskspage,
    usagepage,
    views,
    vmpage,
    vnetpage,
    volumespage,
)
from softudc.console.common import HERE, NotLoggedIn, templates, to_login
from softudc.console.metrics import attach


def _utc(t: float | int | str | None) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(t or 0), datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError):
        return "?"


def install(app: FastAPI) -> None:
    templates.env.filters["utc"] = _utc
    for router in (views.router, actions.router, stream.router, vmpage.router, vnetpage.router,
                   eventspage.router, taskspage.router, usagepage.router, planspage.router,
                   volumespage.router):
        for route in router.routes:  # the API's metrics label requests by route name: keep ours apart
            if isinstance(route, APIRoute) and not route.name.startswith("console_"):
                route.name = f"console_{route.name}"
        app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static", check_dir=False), name="console-static")
    app.add_exception_handler(NotLoggedIn, to_login)
    if getattr(app.state, "manager", None) is not None:
        attach(app.state.manager, app.state)
