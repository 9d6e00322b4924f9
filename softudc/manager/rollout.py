"""Rolling host maintenance (issue 12, item 6): `softudc host upgrade --hosts SELECTOR --run SCRIPT
[--max-unavailable N]`. Per host, in the order selected, at most N hosts out of service at once:

    draining   drain it (softudc/manager/drain.py: every VM live-migrated away, or refused naming why)
    script     run the operator's script on the manager's machine, as `SCRIPT HOST ADDRESS` with
               SOFTUDC_HOST, SOFTUDC_HOST_ADDRESS, SOFTUDC_ROLLOUT in its environment; a lab host's
               (power driver `lab`) runs inside the host's network namespace
    cycling    power-cycle it through its power driver
    rejoining  wait until it reports again (after the cycle) and is not down
    undraining back to `ready`; then `done`

The first failure (a drain refused or too slow, the script's non-zero exit or timeout, a power
command failing, no report in time) marks that host `failed` with why, leaves it drained (in
`maintenance`), starts no other host, and the rollout ends `failed` once the hosts under way end.

The rollout is a stored object (kind `rollout`, in its spec: the hosts, the script's text, the
limits, `state` running|done|failed|stopped, and per host its `phase`, since when and why): the leader's
controller pass calls `resume` (softudc/manager/planning.py), which starts a worker thread for every
host under way that has none in this manager, so a manager restart (or a new leader) continues
where the last one was; a phase cut short is done again (the script runs again: make it idempotent).
`stop` ends a rollout early: no further phase starts (a host under way is left as its current
phase leaves it). `to_start` and `outcome` are pure (tested with hypothesis).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from softudc.manager import drain
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.store import Conflict, NotLeader
from softudc.power.driver import PowerError

if TYPE_CHECKING:
    from softudc.manager.service import Manager

KIND = "rollout"
ACTIVE = ("draining", "script", "cycling", "rejoining", "undraining")  # a host out of service
TIMEOUTS = {"drain_s": 900.0, "script_s": 600.0, "rejoin_s": 300.0}
SCRIPT_MAX = 64 * 1024
POLL_S = 1.0
log = logging.getLogger("softudc.manager.rollout")


class Failed(Exception):
    """A host's step failed: the message says why (the rollout stops)."""


# --- pure: which hosts, which next, how it ended -----------------------------------------------

def select_hosts(selector: str, hosts: list[str]) -> list[str]:
    """The hosts a selector names, in its order: `all`, or comma-separated names and globs (h*)."""
    out: list[str] = []
    for part in (p.strip() for p in selector.split(",")):
        if not part:
            continue
        matched = sorted(hosts) if part == "all" else sorted(fnmatch.filter(hosts, part))
        if not matched:
            raise ApiError(400, f"hosts: {part!r} names no joined host (joined: {', '.join(sorted(hosts)) or 'none'}); "
                                "see `softudc host list`")
        out += [h for h in matched if h not in out]
    if not out:
        raise ApiError(400, "hosts: the selector is empty; name hosts (h1,h2), globs (h*) or all")
    return out


def to_start(spec: dict[str, Any]) -> list[str]:
    """The pending hosts to start now: none once a host failed or the rollout ended; else the
    first ones, up to max_unavailable hosts under way."""
    phases = {h: spec["progress"][h]["phase"] for h in spec["hosts"]}
    if spec.get("state") != "running" or "failed" in phases.values():
        return []
    room = int(spec["max_unavailable"]) - sum(1 for p in phases.values() if p in ACTIVE)
    return [h for h in spec["hosts"] if phases[h] == "pending"][:max(room, 0)]


def outcome(spec: dict[str, Any]) -> str:
    """running (hosts under way or to start), done (every host), failed (a host failed, none under way)."""
    phases = [spec["progress"][h]["phase"] for h in spec["hosts"]]
    if any(p in ACTIVE for p in phases):
        return "running"
    if "failed" in phases:
        return "failed"
    return "done" if all(p == "done" for p in phases) else "running"


def new_spec(name: str, who: Principal, hosts: list[str], script: str, script_name: str, max_unavailable: int,
             timeouts: dict[str, float], now: float) -> dict[str, Any]:
    return {"hosts": hosts, "script": script, "script_name": script_name, "max_unavailable": max_unavailable,
            "timeouts": {**TIMEOUTS, **timeouts}, "by": who.name, "created": now, "state": "running",
            "reason": "", "progress": {h: {"phase": "pending", "since": now} for h in hosts}}


def summary(obj: Any) -> dict[str, Any]:
    """A rollout as the API shows it (the script's text left out: its name and size)."""
    spec = {k: v for k, v in obj.spec.items() if k != "script"}
    return {"name": obj.name, **spec, "script_bytes": len(obj.spec.get("script", "").encode())}


# --- the manager's side --------------------------------------------------------------------------

def create(m: Manager, who: Principal, name: str, selector: str, script: str, script_name: str,
           max_unavailable: int, timeouts: dict[str, float]) -> dict[str, Any]:
    """Store a new rollout (checked: hosts, power configs, no other running) and start it."""
    if who.role != "admin":
        raise ApiError(403, f"{who.name} ({who.role}) may not upgrade hosts; that takes an admin token")
    if len(script.encode()) > SCRIPT_MAX or not script.strip():
        raise ApiError(400, f"script: {len(script.encode())} bytes; give a script of 1 to {SCRIPT_MAX} bytes")
    if m.store.get(KIND, name) is not None:
        raise ApiError(409, f"a rollout {name!r} exists already; name this one otherwise")
    running = [o.name for o in m.store.objects(KIND) if o.spec.get("state") == "running"]
    if running:
        raise ApiError(409, f"rollout {running[0]} is still running; one at a time (softudc host upgrade-status "
                            f"{running[0]})")
    objs = {o.name: o for o in m.store.objects("host")}
    hosts = select_hosts(selector, list(objs))
    unpowered = [h for h in hosts if objs[h].spec.get("power") is None]
    if unpowered:
        raise ApiError(409, f"no power config on {', '.join(unpowered)}: a rollout power-cycles every host; set one "
                            "(softudc host power-config H -f FILE, docs/power.md); nothing started")
    states = {h: m.reports().get(h, {}).get("state", "ready") for h in hosts}
    off = [f"{h} ({s})" for h, s in states.items() if s in ("standby", "down")]
    if off:
        raise ApiError(409, f"not running: {', '.join(off)}; a rollout drains running hosts: power them on "
                            "(softudc host power H on) or leave them out; nothing started")
    spec = new_spec(name, who, hosts, script, script_name, max_unavailable, timeouts, time.time())
    m.store.put(KIND, name, spec, expect=0)
    m._event("manager", m.manager_id, "RolloutStarted", f"{name} by {who.name}: {', '.join(hosts)}, at most "
             f"{max_unavailable} at once, script {script_name}")
    resume(m)
    return summary(m.store.get(KIND, name))


def stop(m: Manager, who: Principal, name: str) -> dict[str, Any]:
    """No further phase starts: a host under way stops where it is once its current phase ends
    (drained, maybe); the rollout is `stopped`, saying which hosts it left where."""
    if who.role != "admin":
        raise ApiError(403, f"{who.name} ({who.role}) may not stop rollouts; that takes an admin token")
    obj = m.store.get(KIND, name)
    if obj is None:
        raise ApiError(404, f"no rollout {name!r} (see `softudc host upgrade-status`)")
    if obj.spec.get("state") != "running":
        raise ApiError(409, f"rollout {name} is {obj.spec.get('state')} already")
    busy = [f"{h} ({obj.spec['progress'][h]['phase']})" for h in obj.spec["hosts"]
            if obj.spec["progress"][h]["phase"] in ACTIVE]
    reason = f"stopped by {who.name}" + (f"; left after their current phase: {', '.join(busy)}" if busy else "")
    m.store.put(KIND, name, {**obj.spec, "state": "stopped", "reason": reason, "ended": time.time()},
                expect=obj.revision)
    m._event("manager", m.manager_id, "RolloutStopped", f"{name}: {reason}")
    return summary(m.store.get(KIND, name))


class Runner:
    """This manager's workers: one thread per (rollout, host) under way."""

    def __init__(self, m: Manager, run: Callable[..., tuple[int, str]] | None = None) -> None:
        self.m = m
        self.run_script = run or run_script
        self._threads: dict[tuple[str, str], threading.Thread] = {}
        self._lock = threading.RLock()

    def resume(self) -> None:
        """Start what is to start of every running rollout; end those that ended."""
        for obj in self.m.store.objects(KIND):
            if obj.spec.get("state") == "running":
                self.tick(obj.name)

    def tick(self, name: str) -> None:
        with self._lock:
            obj = self.m.store.get(KIND, name)
            if obj is None or obj.spec.get("state") != "running":
                return
            for host in to_start(obj.spec):
                self.update(name, host, phase="draining")
            obj = self.m.store.get(KIND, name)
            assert obj is not None
            for host in obj.spec["hosts"]:
                t = self._threads.get((name, host))
                if obj.spec["progress"][host]["phase"] in ACTIVE and (t is None or not t.is_alive()):
                    t = threading.Thread(target=self._work, args=(name, host), name=f"softudc-rollout-{host}",
                                         daemon=True)
                    self._threads[(name, host)] = t
                    t.start()
            self._end_if_ended(name)

    def _end_if_ended(self, name: str) -> None:
        obj = self.m.store.get(KIND, name)
        if obj is None or obj.spec.get("state") != "running" or (state := outcome(obj.spec)) == "running":
            return
        failed = [f"{h}: {obj.spec['progress'][h].get('reason', '')}" for h in obj.spec["hosts"]
                  if obj.spec["progress"][h]["phase"] == "failed"]
        reason = "; ".join(failed) or f"all {len(obj.spec['hosts'])} host(s) done"
        self.m.store.put(KIND, name, {**obj.spec, "state": state, "reason": reason, "ended": time.time()})
        self.m._event("manager", self.m.manager_id, "RolloutFailed" if failed else "RolloutDone", f"{name}: {reason}")

    def update(self, name: str, host: str, **fields: Any) -> dict[str, Any]:
        """One host's progress changed (compare-and-swap; `phase` changes stamp `since`)."""
        with self._lock:
            while True:
                obj = self.m.store.get(KIND, name)
                if obj is None:
                    raise Failed(f"rollout {name} was deleted")
                progress = dict(obj.spec["progress"])
                stamp = {"since": time.time()} if "phase" in fields else {}
                progress[host] = {**progress[host], **fields, **stamp}
                try:
                    self.m.store.put(KIND, name, {**obj.spec, "progress": progress}, expect=obj.revision)
                except Conflict:
                    continue
                return dict(progress[host])

    def _work(self, name: str, host: str) -> None:
        try:
            self._host(name, host)
        except NotLeader:
            log.info("rollout %s: no longer the leader; the new leader resumes %s", name, host)
            return
        except Exception:  # the store failing: the next pass resumes this host where it is
            log.exception("rollout %s, host %s: the next pass resumes it", name, host)
            return
        self.tick(name)

    def _host(self, name: str, host: str) -> None:
        who = Principal(f"rollout {name}", "admin")
        steps: dict[str, Callable[[dict[str, Any], dict[str, Any]], str]] = {
            "draining": lambda s, p: self._drain(who, host, s), "script": lambda s, p: self._script(name, host, s),
            "cycling": lambda s, p: self._cycle(name, host),
            "rejoining": lambda s, p: self._rejoin(host, p, s), "undraining": lambda s, p: self._undrain(who, host)}
        while True:
            obj = self.m.store.get(KIND, name)
            if obj is None or obj.spec.get("state") != "running":
                return
            here = obj.spec["progress"][host]
            if here["phase"] not in steps:
                return
            try:
                after = steps[here["phase"]](obj.spec, here)
            except (Failed, ApiError, PowerError) as e:
                why = str(e)
                self.update(name, host, phase="failed", reason=f"{here['phase']}: {why}")
                self.m._event("host", host, "RolloutFailed", f"{name}: {here['phase']}: {why}; left in maintenance "
                                                             f"(drained); `softudc host undrain {host}` when fixed")
                return
            self.update(name, host, phase=after)
            self.m._event("host", host, "Rollout", f"{name}: {here['phase']} -> {after}")

    def _drain(self, who: Principal, host: str, spec: dict[str, Any]) -> str:
        drain.start(self.m, who, host)
        deadline = time.monotonic() + float(spec["timeouts"]["drain_s"])
        while (p := drain.progress(self.m, host))["state"] != "maintenance":
            if p["state"] != "draining":
                raise Failed(f"{host} is {p['state']}, no longer draining (undrained meanwhile?)")
            if time.monotonic() > deadline:
                raise Failed(f"not drained within {spec['timeouts']['drain_s']:g} s: {p['moved']}/{p['total']} moved,"
                             f" left {', '.join(p['left'])}")
            time.sleep(POLL_S)
        return "script"

    def _script(self, name: str, host: str, spec: dict[str, Any]) -> str:
        obj = self.m.store.get("host", host)
        hspec = obj.spec if obj else {}
        code, tail = self.run_script(spec["script"], netns_of(hspec.get("power") or {}), host,
                                     str(hspec.get("address", "")), name, float(spec["timeouts"]["script_s"]))
        if code != 0:
            raise Failed(f"script {spec['script_name']} exited {code}" + (f": {tail}" if tail else ""))
        return "cycling"

    def _cycle(self, name: str, host: str) -> str:
        obj = self.m.store.get("host", host)
        driver = drain._driver(self.m, host, obj.spec if obj else {})
        self.update(name, host, cycled_at=time.time())  # a report after this is one after the cycle
        driver.cycle()
        return "rejoining"

    def _rejoin(self, host: str, here: dict[str, Any], spec: dict[str, Any]) -> str:
        since = float(here.get("cycled_at", here["since"]))
        drain.wait_reported(self.m, host, since, float(spec["timeouts"]["rejoin_s"]))
        return "undraining"

    def _undrain(self, who: Principal, host: str) -> str:
        drain.undrain(self.m, who, host)
        return "done"


def netns_of(config: dict[str, Any]) -> str | None:
    """A lab host's network namespace (its power driver `lab` names the lab), else None."""
    if config.get("driver") != "lab":
        return None
    from softudc.lab.state import LabError, load_lab
    try:
        return load_lab(str(config["lab"]), config.get("state_dir")).host(str(config["host"])).netns
    except (LabError, KeyError):
        return None


def run_script(script: str, netns: str | None, host: str, address: str, rollout: str,
               timeout: float = TIMEOUTS["script_s"]) -> tuple[int, str]:
    """(exit code, the output's tail): the script written to a private file and run as
    `SCRIPT HOST ADDRESS` (inside `netns` when given); 124 when it outlived `timeout`."""
    with tempfile.TemporaryDirectory(prefix="softudc-rollout-") as d:
        path = os.path.join(d, "script")
        with open(path, "w") as f:
            f.write(script)
        os.chmod(path, 0o700)
        argv = [path, host, address]
        env = {**os.environ, "SOFTUDC_HOST": host, "SOFTUDC_HOST_ADDRESS": address, "SOFTUDC_ROLLOUT": rollout}
        try:
            proc = subprocess.run(["ip", "netns", "exec", netns, *argv] if netns else argv, capture_output=True,
                                  text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return 124, f"did not finish within {timeout:g} s"
        except OSError as e:
            return 126, f"could not run it: {e.strerror} (does it start with #!?)"
    return proc.returncode, (proc.stdout + proc.stderr).strip()[-400:]


def runner(m: Manager) -> Runner:
    r: Runner | None = vars(m).get("_rollout_runner")
    if r is None:
        r = m.__dict__["_rollout_runner"] = Runner(m)
    return r


def resume(m: Manager) -> None:
    """The leader's pass: continue every running rollout (never raises into the pass)."""
    try:
        runner(m).resume()
    except NotLeader:
        raise
    except Exception:
        log.exception("resuming rollouts; the next pass tries again")
