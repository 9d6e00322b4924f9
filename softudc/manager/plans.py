"""Rebalance plans (issue 12 item 3): computed and stored first, previewed, then run exactly.

`create` turns the manager's state into a placement Cluster (clusterview), runs the balancer
(`placement.balance`) and stores the plan as an object of kind `plan`: its moves (VM, source,
destination, step, reason, score before/after), the score and its breakdown before and after, the
VMs stuck on hosts that are not ready, the cluster's fingerprint and a snapshot of where every VM
was. Nothing moves (`dry_run`) until `run`.

`run` executes exactly that plan: if the cluster's fingerprint differs now, it refuses (409) naming
what changed (hosts that came, went or changed state, VMs that came, went or moved) and nothing
moves; a VM of the plan moved within the cooldown since is refused too. Then `step` starts the
moves of the plan's current step through the usual migration workflow (Manager.migrate), within
the plan's Limits: per source and per destination (counting this plan's moves under way) and
cluster-wide (every migration under way, whoever started it, at most `max_per_step`). A step's
moves all done, the next step starts. A move is done when its instance is on its destination
with no migration under way; back on its source (or refused by the workflow): the move failed,
and the plan stops there, `failed` with the reason (the farm's latest MigrationFailed event).
Every move started, done or failed is an event of the plan naming the VM and the move's reason.

A thread of the manager that ran the plan steps it every STEP_S; a POST of the run route on a
`running` plan steps it too. Plans are stored, so they survive a manager restart: a running plan
resumes when it is run again (`softudc rebalance --plan ID`, or the route), or on the leader's
pass once that calls `resume` (requested of dpm.maintenance_step's owner).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from softudc.manager.auth import Principal
from softudc.manager.clusterview import Where, cluster_of
from softudc.manager.errors import ApiError
from softudc.manager.harestart import KIND as HA_KIND
from softudc.manager.load import load_of
from softudc.placement.balance import Limits, Plan, balance
from softudc.placement.cluster import Cluster

if TYPE_CHECKING:
    from softudc.manager.service import Manager

log = logging.getLogger("softudc.manager.plans")

KIND = "plan"
KINDS = ("rebalance",)
COOLDOWN_S = 600.0  # a VM moved less than this long ago is not moved again
STEP_S = 2.0  # how often a running plan's thread steps
GIVE_UP_S = 3600.0  # the thread stops after this long (running the plan again resumes it)
KEEP = 50  # plans kept: creating one deletes the oldest finished ones beyond this


def _admin(who: Principal) -> None:
    if who.role != "admin":  # a plan names every farm's VMs and moves them
        raise ApiError(403, f"{who.name} ({who.role}) may not see or run rebalance plans; that takes an admin token")


def current(m: Manager, now: float | None = None) -> tuple[Cluster, dict[str, Where]]:
    """The cluster as the balancer sees it now (every manager's load views and this one's). A VM
    still placed on a fenced host (ha: none, or not yet restarted) runs nowhere, so no live
    migration can move it: it counts as just moved (cooldown), and plans leave it."""
    now = time.time() if now is None else now
    c, index = cluster_of(m.store, m.reports(), load_of(m.store, extra=m.load_view.latest()), now)
    fenced = {o.name for o in m.store.objects(HA_KIND) if o.spec.get("state") == "fenced"}
    if any(v.host in fenced for v in c.vms):
        c = Cluster(c.hosts, [replace(v, moved_at=now) if v.host in fenced else v for v in c.vms], c.groups)
    return c, index


def _limits(body: dict[str, Any]) -> Limits:
    base = Limits()
    given = {k: body[k] for k in ("max_per_source", "max_per_destination", "max_per_step", "max_moves")
             if body.get(k) is not None}
    for k, v in given.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ApiError(400, f"body: {k!r} must be a whole number >= 1 (got {v!r})")
    return Limits(**{**asdict(base), **given})


def _spec(plan: Plan, c: Cluster, index: dict[str, Where], who: Principal, limits: Limits,
          cooldown_s: float, now: float) -> dict[str, Any]:
    moves = [{**asdict(mv), "farm": index[mv.vm].farm, "instance": index[mv.vm].instance} for mv in plan.moves]
    return {"kind": "rebalance", "created": round(now, 3), "by": who.name, "fingerprint": plan.fingerprint,
            "score_before": plan.score_before, "score_after": plan.score_after,
            "before": asdict(plan.before), "after": asdict(plan.after), "moves": moves, "stuck": plan.stuck,
            "limits": asdict(limits), "cooldown_s": cooldown_s,
            "snapshot": {"hosts": {h.name: h.state for h in c.hosts}, "vms": {v.name: v.host for v in c.vms}}}


def create(m: Manager, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/plans {kind: rebalance, dry_run, cooldown_s, max_per_*}: compute and store a plan;
    without dry_run (default true) it is run at once."""
    _admin(who)
    if body.get("kind", "rebalance") not in KINDS:
        raise ApiError(400, f"body: 'kind' must be one of {', '.join(KINDS)} (got {body.get('kind')!r})")
    cooldown = body.get("cooldown_s", COOLDOWN_S)
    if not isinstance(cooldown, (int, float)) or isinstance(cooldown, bool) or cooldown < 0:
        raise ApiError(400, f"body: 'cooldown_s' must be a number of seconds >= 0 (got {cooldown!r})")
    limits, now = _limits(body), time.time()
    c, index = current(m, now)
    if not c.hosts:
        raise ApiError(409, "no host has reported its capacity yet: nothing to balance (see `softudc host list`)")
    plan = balance(c, cooldown_s=float(cooldown), now=now, limits=limits)
    pid = f"p{int(now * 1000):x}"
    spec = _spec(plan, c, index, who, limits, float(cooldown), now)
    m.store.put(KIND, pid, spec)
    m.store.set_status(KIND, pid, {"state": "planned", "moves": {mv["vm"]: "pending" for mv in spec["moves"]}})
    m._event(KIND, pid, "Planned", f"by {who.name}: {len(plan.moves)} move(s), score {plan.score_before:.4f} -> "
                                   f"{plan.score_after:.4f}, fingerprint {plan.fingerprint}")
    _prune(m)
    if body.get("dry_run", True) is False:
        return run(m, who, pid)
    return view(m, pid)


def _prune(m: Manager) -> None:
    done = sorted((o for o in m.store.objects(KIND) if o.status.get("state") != "running"),
                  key=lambda o: float(o.spec.get("created", 0.0)))
    for o in done[:max(0, len(done) - KEEP)]:
        m.store.delete(KIND, o.name)


def _get(m: Manager, pid: str) -> Any:
    obj = m.store.get(KIND, pid)
    if obj is None:
        raise ApiError(404, f"no plan {pid!r} (see `softudc get plans`)")
    return obj


def changes(snapshot: dict[str, Any], c: Cluster) -> list[str]:
    """What differs between a plan's snapshot and the cluster now, one line each."""
    out: list[str] = []
    for what, then, now in (("host", snapshot.get("hosts", {}), {h.name: h.state for h in c.hosts}),
                            ("vm", snapshot.get("vms", {}), {v.name: v.host for v in c.vms})):
        for name in sorted(set(then) | set(now)):
            if name not in now:
                out.append(f"{what} {name} is gone")
            elif name not in then:
                out.append(f"{what} {name} is new ({now[name]})")
            elif then[name] != now[name]:
                out.append(f"{what} {name}: {then[name]} -> {now[name]}")
    return out or ["a VM's or host's size, or a placement group, changed"]


def _check_unchanged(m: Manager, obj: Any) -> None:
    now = time.time()
    c, _ = current(m, now)
    if c.fingerprint() != obj.spec["fingerprint"]:
        raise ApiError(409, f"plan {obj.name} was computed for another cluster (fingerprint {obj.spec['fingerprint']}, "
                            f"now {c.fingerprint()}): " + "; ".join(changes(obj.spec["snapshot"], c)[:10])
                            + ". Nothing was moved; compute a new plan (`softudc rebalance --dry-run`)")
    cooldown = float(obj.spec.get("cooldown_s", COOLDOWN_S))
    planned = {mv["vm"] for mv in obj.spec["moves"]}
    hot = [f"{v.name} moved {now - v.moved_at:.0f} s ago" for v in c.vms
           if v.name in planned and v.moved_at is not None and now - v.moved_at < cooldown]
    if hot:
        raise ApiError(409, f"plan {obj.name}: within the {cooldown:.0f} s cooldown: {'; '.join(hot)}. Nothing was "
                            "moved; compute a new plan later")


def run(m: Manager, who: Principal, pid: str) -> dict[str, Any]:
    """POST /v1/plans/{id}/run: start a planned plan (refused if the cluster changed), or step a
    running one (a manager restarted meanwhile resumes it here)."""
    _admin(who)
    with m._reconcile_lock:  # two runs at once start it once
        obj = _get(m, pid)
        state = obj.status.get("state")
        if state == "planned":
            _check_unchanged(m, obj)
            m.store.set_status(KIND, pid, {**obj.status, "state": "running", "started": round(time.time(), 3)})
            m._event(KIND, pid, "Running", f"by {who.name}: {len(obj.spec['moves'])} move(s)")
        elif state != "running":
            return view(m, pid)
        answer = step(m, who, pid)
    if answer["state"] == "running":
        _keep_stepping(m, who, pid)
    return answer


def _instances(m: Manager) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o.name, i["name"]): i for o in m.store.objects("farm") for i in o.status.get("instances", [])}


def _failure(m: Manager, farm: str, instance: str) -> str:
    for e in reversed(m.store.events("farm", farm, limit=200)):
        if e.get("type") == "MigrationFailed" and str(e.get("message", "")).startswith(f"{instance}:"):
            return str(e["message"])
    return f"{instance} is not on its destination and no migration is under way"


def _observe(m: Manager, pid: str, moves: list[dict[str, Any]], states: dict[str, str],
             insts: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """Moves under way that ended: done or failed (the first failure's reason is returned)."""
    for mv in moves:
        if states.get(mv["vm"]) != "moving":
            continue
        inst = insts.get((mv["farm"], mv["instance"]))
        if inst is not None and inst.get("migrating"):
            continue
        if inst is not None and inst.get("host") == mv["destination"]:
            states[mv["vm"]] = "done"
            m._event(KIND, pid, "MoveDone", f"{mv['vm']} {mv['source']} -> {mv['destination']}: {mv['reason']}")
            continue
        states[mv["vm"]] = "failed"
        why = _failure(m, mv["farm"], mv["instance"]) if inst is not None else f"{mv['vm']} is gone"
        m._event(KIND, pid, "MoveFailed", f"{mv['vm']} {mv['source']} -> {mv['destination']}: {why}")
        return f"{mv['vm']}: {why}"
    return None


def _room(mv: dict[str, Any], moving: list[dict[str, Any]], limits: dict[str, Any], in_flight: int) -> bool:
    per_src = sum(1 for o in moving if o["source"] == mv["source"])
    per_dst = sum(1 for o in moving if o["destination"] == mv["destination"])
    return (per_src < int(limits["max_per_source"]) and per_dst < int(limits["max_per_destination"])
            and in_flight < int(limits["max_per_step"]))


def _start(m: Manager, who: Principal, pid: str, obj: Any, states: dict[str, str],
           insts: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """Start the current step's pending moves within the limits; the reason of a refused one."""
    moves = obj.spec["moves"]
    step_no = min((mv["step"] for mv in moves if states.get(mv["vm"]) != "done"), default=None)
    if step_no is None:
        return None
    moving = [mv for mv in moves if states.get(mv["vm"]) == "moving"]
    in_flight = sum(1 for i in insts.values() if i.get("migrating"))
    for mv in (mv for mv in moves if mv["step"] == step_no and states.get(mv["vm"]) == "pending"):
        if not _room(mv, moving, obj.spec["limits"], in_flight):
            continue
        try:
            m.migrate(who, mv["farm"], mv["instance"], {"to": mv["destination"]})
        except ApiError as e:
            if _moving_there(m, mv):  # started by another step (a manager of the group): follow it
                states[mv["vm"]] = "moving"
                continue
            states[mv["vm"]] = "failed"
            m._event(KIND, pid, "MoveFailed", f"{mv['vm']} {mv['source']} -> {mv['destination']}: refused: {e}")
            return f"{mv['vm']}: refused: {e}"
        states[mv["vm"]] = "moving"
        moving.append(mv)
        in_flight += 1
        m._event(KIND, pid, "Move", f"{mv['vm']} {mv['source']} -> {mv['destination']} (step {step_no}): "
                                    f"{mv['reason']}")
    return None


def _moving_there(m: Manager, mv: dict[str, Any]) -> bool:
    inst = _instances(m).get((mv["farm"], mv["instance"]), {})
    return bool(inst.get("migrating")) and inst["migrating"].get("to") == mv["destination"]


def step(m: Manager, who: Principal, pid: str) -> dict[str, Any]:
    """Note the moves that ended, start what the current step allows; `done` when every move is.
    One step at a time in this manager (a run, its stepping thread and the leader's pass would
    otherwise start the same move twice), under the lock the pass holds when it resumes plans and a
    migration takes (another lock, taken in the other order, would deadlock with them)."""
    with m._reconcile_lock:
        return _step(m, who, pid)


def _step(m: Manager, who: Principal, pid: str) -> dict[str, Any]:
    obj = _get(m, pid)
    if obj.status.get("state") != "running":
        return view(m, pid)
    states = dict(obj.status.get("moves", {}))
    insts = _instances(m)
    failed = _observe(m, pid, obj.spec["moves"], states, insts) or _start(m, who, pid, obj, states, insts)
    status: dict[str, Any] = {**obj.status, "moves": states}
    if failed:
        status.update(state="failed", reason=failed, ended=round(time.time(), 3))
        m._event(KIND, pid, "Failed", f"stopped at a failed move: {failed}")
    elif all(s == "done" for s in states.values()):
        status.update(state="done", ended=round(time.time(), 3))
        m._event(KIND, pid, "Done", f"{len(states)} move(s) done; planned score {obj.spec['score_before']:.4f} -> "
                                    f"{obj.spec['score_after']:.4f}")
    m.store.set_status(KIND, pid, status)
    return view(m, pid)


def view(m: Manager, pid: str) -> dict[str, Any]:
    """A plan with its state and progress (moves done, moving, failed, pending)."""
    obj = _get(m, pid)
    states: dict[str, str] = obj.status.get("moves", {})
    counts = {k: sum(1 for s in states.values() if s == k) for k in ("done", "moving", "failed", "pending")}
    moves = [{**mv, "state": states.get(mv["vm"], "pending")} for mv in obj.spec["moves"]]
    extra = {k: obj.status[k] for k in ("reason", "started", "ended") if k in obj.status}
    return {"id": obj.name, **{k: v for k, v in obj.spec.items() if k not in ("moves", "snapshot")},
            "state": obj.status.get("state", "planned"), "progress": counts, "moves": moves, **extra}


def resume(m: Manager) -> None:
    """For the leader's pass: step every running plan this manager has no thread for (one a
    restarted or new leader inherited), as the admin who ran it."""
    for obj in m.store.objects(KIND):
        if obj.status.get("state") == "running" and obj.name not in _stepping:
            try:
                step(m, Principal(str(obj.spec.get("by", "plans")), "admin"), obj.name)
            except ApiError as e:
                log.warning("plan %s: %s", obj.name, e)


def listing(m: Manager, who: Principal) -> list[dict[str, Any]]:
    """GET /v1/plans: every stored plan, newest first, without its moves."""
    _admin(who)
    out = [view(m, o.name) for o in m.store.objects(KIND)]
    return [{k: v for k, v in p.items() if k not in ("moves", "before", "after", "stuck")} | {"moves": len(p["moves"])}
            for p in sorted(out, key=lambda p: -float(p.get("created", 0.0)))]


def events(m: Manager, who: Principal, pid: str) -> list[dict[str, Any]]:
    """GET /v1/plans/{id}/events: the plan's events, oldest first."""
    _admin(who)
    _get(m, pid)
    return m.store.events(KIND, pid, limit=1000)


def show(m: Manager, who: Principal, pid: str) -> dict[str, Any]:
    _admin(who)
    return view(m, pid)


_stepping: set[str] = set()  # plans a thread of this manager steps
_stepping_lock = threading.Lock()


def _keep_stepping(m: Manager, who: Principal, pid: str) -> None:
    with _stepping_lock:
        if pid in _stepping:
            return
        _stepping.add(pid)

    def loop() -> None:
        until = time.monotonic() + GIVE_UP_S
        try:
            while time.monotonic() < until:
                time.sleep(STEP_S)
                try:
                    if step(m, who, pid)["state"] != "running":
                        return
                except Exception:  # the store failing now and then: try again at the next step
                    log.exception("plan %s: a step failed; trying again in %.0f s", pid, STEP_S)
        finally:
            with _stepping_lock:
                _stepping.discard(pid)

    threading.Thread(target=loop, name=f"softudc-plan-{pid}", daemon=True).start()
