"""What is under way, /console/tasks: migrations (every farm the session may read: from, to, live
or cold, the workflow's state and, once the source copies, bytes copied / total), and for an admin
the drains (softudc/manager/drain.py: moved / total, what is moving) and the rolling maintenances
(softudc/manager/rollout.py: each host's phase and why). The fragment refreshes on every change
and, while anything is under way, every second."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from softudc.console.common import view
from softudc.console.vmpage import move_of
from softudc.manager import drain, rollout
from softudc.manager.auth import Principal
from softudc.manager.service import Manager
from softudc.model.hoststate import vm_name

router = APIRouter(prefix="/console", include_in_schema=False)
ROLLOUTS_SHOWN = 10  # the newest


def migrations(m: Manager, who: Principal) -> list[dict[str, Any]]:
    out = []
    for o in m.store.objects("farm"):
        if not who.can_read(o.name):
            continue
        for i in o.status.get("instances", []):
            move = move_of(m, i, vm_name(o.name, i["name"]))
            if move is not None:
                out.append({"farm": o.name, "instance": i["name"], "from": i["host"], **move})
    return sorted(out, key=lambda r: (r["farm"], r["instance"]))


def tasks_context(m: Manager, who: Principal) -> dict[str, Any]:
    admin = who.role == "admin"
    drains = [drain.progress(m, o.name) for o in m.store.objects("host")
              if admin and o.spec.get("state") == "draining"] if admin else []
    rollouts = sorted((rollout.summary(o) for o in m.store.objects(rollout.KIND)),
                      key=lambda r: r.get("created", 0))[-ROLLOUTS_SHOWN:][::-1] if admin else []
    moves = migrations(m, who)
    busy = bool(moves or drains or any(r.get("state") == "running" for r in rollouts))
    return {"moves": moves, "drains": drains, "rollouts": rollouts, "busy": busy}


@router.get("/tasks")
def tasks_page(request: Request) -> HTMLResponse:
    return view(request, "tasks.html", tasks_context)


@router.get("/fragments/tasks")
def tasks_fragment(request: Request) -> HTMLResponse:
    return view(request, "_tasks.html", tasks_context)
