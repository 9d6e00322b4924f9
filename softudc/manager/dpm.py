"""Consolidation in the leader's pass (issue 12, item 4), behind a switch: off unless the manager
runs with SOFTUDC_CONSOLIDATE=1 (band: SOFTUDC_CONSOLIDATE_BAND="LOW,HIGH[,LOW_HOLD_S,HIGH_HOLD_S,
QUIET_S,MIN_READY]", e.g. "0.3,0.75"; what is left out is consolidate.Band's default).

Each pass (`maintenance_step`, which also resumes rollouts) asks `consolidate.decide` about the
hosts' use (their reports' capacity, load.py's short and long means) and acts in a thread of its
own, one action at a time:

    standby  drain the host (drain.py: every VM moved by the placement rules, or nothing), power
             it off through its driver (confirmed off), then `standby` (its drain record gone: a
             host consolidation may wake, unlike one an admin drained with --power-off)
    wake     power a standby host on, wait until it reports, then `ready`

Every action is an event of the host (`Consolidation`, `ConsolidationFailed`). Nothing is decided
while a rollout runs (its hosts leave and come back on purpose).

HA rebalance (issue 12, item 7), on unless SOFTUDC_HA_REBALANCE=0 (trigger:
SOFTUDC_HA_REBALANCE_TRIGGER="SPREAD,HOT[,SETTLE_S,WATCH_S]", see placement/overload.Trigger):
after a host is fenced and its VMs restarted on the others, `ha_rebalance` looks at the cluster
between SETTLE_S and WATCH_S after the fence; the first time it is overloaded (a host over
capacity or over HOT, or the spread over SPREAD) it computes a rebalance plan and runs it, within
the plans' limits and cooldown, and says why in an `HaRebalance` event of the fenced host. Once
per fence (the fence's record keeps the plan), never while another plan runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from softudc.manager import drain, harestart, plans, rollout
from softudc.manager.auth import Principal
from softudc.manager.consolidate import Band, Decision, HostUse, Memory, decide
from softudc.manager.errors import ApiError
from softudc.manager.load import load_of
from softudc.manager.store import Conflict, NotLeader
from softudc.placement.overload import Trigger, due, overloaded
from softudc.power.driver import PowerError
from softudc.power.fence import fence

if TYPE_CHECKING:
    from softudc.manager.service import Manager

log = logging.getLogger("softudc.manager.dpm")
WHO = Principal("consolidation", "admin")
HA_WHO = Principal("ha-rebalance", "admin")


def band_from_env(env: dict[str, str] | None = None) -> Band | None:
    """The band when consolidation is switched on, else None; a bad setting is a ValueError naming it.
    SOFTUDC_CONSOLIDATE_BAND: "LOW,HIGH[,LOW_HOLD_S,HIGH_HOLD_S,QUIET_S,MIN_READY]"."""
    env = dict(os.environ) if env is None else env
    if env.get("SOFTUDC_CONSOLIDATE", "0") not in ("1", "true", "yes"):
        return None
    text = env.get("SOFTUDC_CONSOLIDATE_BAND", "")
    if not text:
        return Band()
    values = numbers("SOFTUDC_CONSOLIDATE_BAND", text, 6, "LOW,HIGH[,LOW_HOLD_S,HIGH_HOLD_S,QUIET_S,MIN_READY]",
                     "0.3,0.75")
    names = ("low", "high", "low_hold_s", "high_hold_s", "quiet_s", "min_ready")
    fields: dict[str, float | int] = dict(zip(names, values, strict=False))
    if "min_ready" in fields:
        fields["min_ready"] = int(fields["min_ready"])
    return Band(**fields)  # type: ignore[arg-type]


def trigger_from_env(env: dict[str, str] | None = None) -> Trigger | None:
    """The HA rebalance trigger, None when switched off (SOFTUDC_HA_REBALANCE=0|false|no); a bad
    SOFTUDC_HA_REBALANCE_TRIGGER ("SPREAD,HOT[,SETTLE_S,WATCH_S]") is a ValueError naming it."""
    env = dict(os.environ) if env is None else env
    if env.get("SOFTUDC_HA_REBALANCE", "1").lower() in ("0", "false", "no", "off"):
        return None
    text = env.get("SOFTUDC_HA_REBALANCE_TRIGGER", "")
    if not text:
        return Trigger()
    values = numbers("SOFTUDC_HA_REBALANCE_TRIGGER", text, 4, "SPREAD,HOT[,SETTLE_S,WATCH_S]", "0.25,0.85,60,900")
    try:
        return Trigger(*values)
    except ValueError as e:
        raise ValueError(f"SOFTUDC_HA_REBALANCE_TRIGGER={text!r}: {e}") from None


def numbers(name: str, text: str, most: int, form: str, example: str) -> list[float]:
    """2 to `most` numbers separated by commas, or a ValueError naming the variable and its form."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not 2 <= len(values) <= most:
        raise ValueError(f"{name}={text!r}: expected '{form}', e.g. '{example}'")
    return values


def ha_rebalance(m: Manager, t: Trigger, now: float | None = None) -> str | None:
    """After a fence (see the module): the id of the plan started, or None (not due, not
    overloaded, another plan running, or no move helps: then an event says so, once)."""
    now = time.time() if now is None else now
    records = {o.name: o for o in m.store.objects(harestart.KIND)}
    hosts = due({h: o.spec for h, o in records.items()}, now, t)
    if not hosts or any(o.status.get("state") == "running" for o in m.store.objects(plans.KIND)):
        return None  # nothing to look at, or a plan moves VMs now: looked at again after it
    cluster, _ = plans.current(m, now)
    why = overloaded(cluster, t)
    if not why:
        return None
    for h in hosts:  # claimed first (compare-and-swap): one plan per fence, whichever manager leads
        try:
            m.store.put(harestart.KIND, h, {**records[h].spec, "rebalance": {"at": round(now, 3), "why": why}},
                        expect=records[h].revision)
        except Conflict:
            return None
    said = f"the hosts left after fencing {', '.join(hosts)} are overloaded ({'; '.join(why)})"
    try:
        p = plans.create(m, HA_WHO, {"kind": "rebalance", "dry_run": True})
        if p["moves"]:
            p = plans.run(m, HA_WHO, p["id"])
    except ApiError as e:
        _say(m, hosts, f"{said}, but no rebalance plan could run: {e}")
        return None
    if not p["moves"]:
        _say(m, hosts, f"{said}, but no move lowers the score (plan {p['id']}): nothing moved; a standby host "
                       "powered on (`softudc host power H on`) would make room")
        return None
    _say(m, hosts, f"{said}: rebalance plan {p['id']} runs {len(p['moves'])} move(s), score "
                   f"{p['score_before']:.4f} -> {p['score_after']:.4f} (softudc get plans; "
                   "SOFTUDC_HA_REBALANCE=0 turns this off)")
    return str(p["id"])


def _say(m: Manager, hosts: list[str], message: str) -> None:
    for h in hosts:
        m._event("host", h, "HaRebalance", message)


def _trigger(m: Manager) -> Trigger | None:
    """This manager's HA rebalance trigger (read from the environment at first use)."""
    if "_ha_trigger" not in vars(m):
        m.__dict__["_ha_trigger"] = trigger_from_env()
    made: Trigger | None = vars(m)["_ha_trigger"]
    return made


def host_uses(m: Manager) -> list[HostUse]:
    """Every joined host's state, capacity and use (short and long means) for `decide`."""
    loads = load_of(m.store, extra=m.load_view.latest())
    specs = {o.name: o.spec for o in m.store.objects("host")}
    out = []
    for host, r in sorted(m.reports().items()):
        load = loads.get(host, {})
        cpu, mem = load.get("cpu_cores", {}), load.get("memory_mib", {})
        out.append(HostUse(host, str(r.get("state", "ready")), float(r.get("vcpus") or 0),
                           float(r.get("memory_mib") or 0), float(cpu.get("short", 0)), float(cpu.get("long", 0)),
                           float(mem.get("short", 0)), float(mem.get("long", 0)), len(r.get("running", [])),
                           maintenance=bool(specs.get(host, {}).get("drain"))))
    return out


class Consolidator:
    """The leader's consolidation: what it remembers between passes, and the action under way."""

    def __init__(self, m: Manager, band: Band, clock: Callable[[], float] = time.time) -> None:
        self.m, self.band, self.clock = m, band, clock
        self.memory = Memory()
        self.last = Decision("none", None, "not yet run")
        self._thread: threading.Thread | None = None

    def step(self) -> Decision:
        if self._thread is not None and self._thread.is_alive():
            return self.last
        if any(o.spec.get("state") == "running" for o in self.m.store.objects(rollout.KIND)):
            self.memory = Memory(last_action=self.memory.last_action)  # its holds start again after it
            self.last = Decision("none", None, "a rollout is running: hosts come and go on purpose")
            return self.last
        self.last, self.memory = decide(host_uses(self.m), self.band, self.memory, self.clock())
        if self.last.action != "none" and self.last.host is not None:
            act = self.standby if self.last.action == "standby" else self.wake
            self._thread = threading.Thread(target=self._run, args=(act, self.last), daemon=True,
                                            name=f"softudc-dpm-{self.last.host}")
            self._thread.start()
        return self.last

    def _run(self, act: Callable[[str], None], d: Decision) -> None:
        host = d.host or ""
        self.m._event("host", host, "Consolidation", f"{d.action}: {d.reason}")
        try:
            act(host)
        except (ApiError, PowerError) as e:
            self.m._event("host", host, "ConsolidationFailed", f"{d.action}: {e}")
        except Exception:
            log.exception("consolidation: %s %s", d.action, host)

    def standby(self, host: str, timeout: float = drain.GIVE_UP_S) -> None:
        drain.start(self.m, WHO, host)
        deadline = time.monotonic() + timeout
        while (p := drain.progress(self.m, host))["state"] == "draining" and time.monotonic() < deadline:
            time.sleep(1.0)
        if p["state"] != "maintenance":
            raise PowerError(f"not drained ({p['moved']}/{p['total']} moved, state {p['state']}); left as it is")
        obj = drain._host(self.m, host)
        fenced = fence(drain._driver(self.m, host, obj.spec), timeout=drain.OFF_TIMEOUT_S)
        if not fenced.confirmed:
            raise PowerError(f"{fenced.reason}; it stays drained, in maintenance (`softudc host undrain {host}`)")
        obj = drain._host(self.m, host)
        spec = {k: v for k, v in obj.spec.items() if k != "drain"}
        self.m.store.put("host", host, {**spec, "state": "standby"})
        self.m._event("host", host, "State", f"maintenance -> standby (consolidation: {fenced.reason})")
        self.m.start()

    def wake(self, host: str) -> None:
        obj = drain._host(self.m, host)
        driver = drain._driver(self.m, host, obj.spec)
        since = time.time()
        driver.on()
        seconds = drain.wait_reported(self.m, host, since, drain.REJOIN_S)
        obj = drain._host(self.m, host)
        if obj.spec.get("state") == "standby":
            self.m.store.put("host", host, {**obj.spec, "state": "ready"})
            self.m._event("host", host, "State", f"standby -> ready (consolidation: powered on through "
                                                 f"{driver.name}, reported {seconds:.1f} s later)")
            self.m.start()


def consolidator(m: Manager) -> Consolidator | None:
    """This manager's consolidator, when switched on (made at first use)."""
    if "_consolidator" not in vars(m):
        band = band_from_env()
        m.__dict__["_consolidator"] = Consolidator(m, band) if band is not None else None
    made: Consolidator | None = vars(m)["_consolidator"]
    return made


def maintenance_step(m: Manager) -> None:
    """The leader's pass: rollouts and running rebalance plans resumed, the HA rebalance (if on), then
    consolidation (if on);
    never raises into the pass but for NotLeader (rollout.resume lets it through)."""
    rollout.resume(m)
    try:
        plans.resume(m)  # a running plan a restarted or new leader inherited (softudc/manager/plans.py)
    except NotLeader:
        raise
    except Exception:
        log.exception("resuming rebalance plans; the next pass tries again")
    try:
        t = _trigger(m)
        if t is not None:
            ha_rebalance(m, t)
    except NotLeader:
        raise
    except Exception:
        log.exception("HA rebalance; the next pass tries again")
    try:
        c = consolidator(m)
        if c is not None:
            c.step()
    except Exception:
        log.exception("consolidation step; the next pass tries again")
