"""Managers in a group (issue 11), with real processes and guests: a 3-member etcd cluster, two
managers (`softudc manager --store etcd://... --id mN`), three gatekeepers whose `[manager] url`
lists both, each with libvirt and QEMU guests (`softudc lab up NAME --vms --manager --ha`).

One lab for the module (CI has 2 cores), its tests in order:
  - the leader is SIGKILLed during an apply: the other leads within 5 s (measured from the kill
    to the new leader's own status, printed), the apply completes, every instance runs on
    exactly one host;
  - the leader is SIGKILLed during a live migration: the new leader carries it through, and the
    VM never runs on two hosts;
  - an etcd member is SIGKILLed: an apply still goes through;
  - everything is restarted (managers, etcd members; the gatekeepers keep running): the same
    farms, instances and hosts.
`pytest -s -m ha` shows the measured takeovers.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from softudc.lab import Lab, LabSpec, lab_down, lab_up, shell
from softudc.lab.ha import (
    etcd_leader,
    kill_etcd,
    kill_manager,
    manager_status,
    restart_etcd,
    restart_manager,
    stop_manager,
)
from softudc.lab.manager import call
from tests.e2e.conftest import _print_logs, _why_not_root, gk, wait_until

pytestmark = [pytest.mark.ha, pytest.mark.manager, pytest.mark.vm]
TAKEOVER_S = 5.0  # the bound: lease TTL 3 s, keep-alive, a campaign
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: ha}
spec:
  vnets:
    - {name: front, subnet: 10.0.0.0/24}
  placementGroups:
    - {name: spread, policy: anti-affinity, maxPerHost: 1}
  vms:
    - name: web
      replicas: 2
      vcpus: 1
      memory: 128Mi
      image: test-guest
      placementGroup: spread
      migration: {policy: live, maxDowntimeMs: 100}
      nics: [{vnet: front, address: pool}]
    - name: db
      vcpus: 1
      memory: 128Mi
      image: test-guest
      migration: {policy: live, maxDowntimeMs: 100}
      nics: [{vnet: front, address: 10.0.0.20}]
"""
MEASURED: list[str] = []


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    reason = _why_not_root()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    state = tempfile.mkdtemp(prefix="sudc")  # short: unix socket paths stay under 108 bytes
    failed_before = request.session.testsfailed
    made = lab_up(LabSpec(name="ha" + secrets.token_hex(3), hosts=3, vms=True, manager=True, ha=True), state)
    try:
        yield made
    finally:
        if request.session.testsfailed > failed_before:
            _print_logs(made)
        print("\nmeasured: " + ("; ".join(MEASURED) or "nothing"))
        pids = [p for p in [*(h.pid for h in made.hosts), *(m.pid for m in made.managers),
                            *(m.pid for m in made.etcd)] if p]
        lab_down(made.spec.name, state)
        shutil.rmtree(state, ignore_errors=True)
        assert not [ns for ns in shell.netns_list() if ns.startswith(made.prefix)], "lab down left namespaces"
        assert not [p for p in pids if shell.pid_alive(p)], "lab down left processes running"


# --- what the lab says ------------------------------------------------------------------------------

def farm(lab: Lab, name: str = "ha") -> dict[str, Any]:
    status, body = call(lab, "GET", f"/v1/farms/{name}")
    assert status == 200 and isinstance(body, dict), body
    return body


def instances(lab: Lab) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in farm(lab)["status"].get("instances", [])}


def running(lab: Lab) -> dict[str, list[str]]:
    """Each managed VM -> the hosts whose libvirt runs it (asked of every host's gatekeeper)."""
    where: dict[str, list[str]] = {}
    for h in lab.hosts:
        for vm in gk(lab, h.name).call("vm.list"):
            if vm["state"] == "running":
                where.setdefault(vm["name"], []).append(h.name)
    return where


def placed_once(lab: Lab) -> bool:
    """Every instance of the farm runs on exactly one host, the one the manager says, and nothing
    else runs (no VM twice, none lost)."""
    wanted = {f"ha--{n}": i["host"] for n, i in instances(lab).items()}
    return bool(wanted) and running(lab) == {vm: [host] for vm, host in wanted.items()}


def ready(lab: Lab) -> bool:
    f = farm(lab)
    return bool(f["status"].get("conditions", {}).get("Ready")) and not any(
        "migrating" in i for i in f["status"].get("instances", []))


def leader_index(lab: Lab, timeout: float = 30.0) -> int:
    """The index of the manager that says it leads."""
    found: list[int] = []

    def look() -> bool:
        found[:] = [i for i, m in enumerate(lab.managers)
                    if m.pid and (manager_status(lab, i) or {}).get("role") == "leader"]
        return len(found) == 1

    assert wait_until(look, timeout=timeout, interval=0.2), f"no single leader among {lab.managers}: {found}"
    return found[0]


def takeover(lab: Lab, survivor: int, killed_at: float, what: str) -> float:
    """Seconds from the kill to the survivor leading: by its own status's `leader.since` (when it
    took over, not when a poll saw it: polls go through a process in the namespace), printed and
    kept with when a poll first saw it."""
    killed_wall = time.time() - (time.monotonic() - killed_at)
    deadline = killed_at + 30
    while time.monotonic() < deadline:
        status = manager_status(lab, survivor) or {}
        if status.get("role") == "leader" and status.get("leader"):
            seen = time.monotonic() - killed_at
            took = float(status["leader"]["since"]) - killed_wall
            MEASURED.append(f"{what}: {took:.2f} s (a poll saw it after {seen:.2f} s)")
            print(f"\ntakeover ({what}): {lab.managers[survivor].id} leads {took:.2f} s after the kill "
                  f"(its status said so {seen:.2f} s after)")
            return took
        time.sleep(0.05)
    pytest.fail(f"{lab.managers[survivor].id} did not become leader within 30 s of the kill ({what})")


def apply(lab: Lab, text: str) -> None:
    status, body = call(lab, "PUT", "/v1/farms/ha", text)
    assert status == 200, body


# --- the tests, in order (one lab) ------------------------------------------------------------------

def test_the_leader_killed_during_an_apply_is_replaced_within_5_s_and_the_apply_completes(lab: Lab) -> None:
    leader = leader_index(lab)
    apply(lab, FARM)
    killed_at = kill_manager(lab, leader)
    print(f"\nthe leader was killed with {sorted(running(lab))} running of 3")
    took = takeover(lab, 1 - leader, killed_at, "leader killed during an apply")
    assert took < TAKEOVER_S
    assert wait_until(lambda: ready(lab), timeout=180, interval=0.5), farm(lab)["status"]
    assert wait_until(lambda: placed_once(lab), timeout=60, interval=0.5), (instances(lab), running(lab))
    assert len(instances(lab)) == 3
    restart_manager(lab, leader)  # back, as a follower
    assert leader_index(lab) == 1 - leader


def _booted(lab: Lab, host: str, vm: str) -> bool:
    console = lab.dir / host / "consoles" / f"{vm}.log"
    return console.exists() and "GUEST_READY" in console.read_text(errors="replace")


def test_the_leader_killed_during_a_live_migration_is_replaced_and_the_migration_completes(lab: Lab) -> None:
    db = instances(lab)["db-0"]
    src = db["host"]
    # A guest moved in its first second under TCG can panic on arrival: move a booted one.
    assert wait_until(lambda: _booted(lab, src, "ha--db-0"), timeout=120, interval=0.5), "db did not boot"
    dest = next(h.name for h in lab.hosts if h.name != src)
    leader = leader_index(lab)
    # Asked of the follower (restarted after the first test: no gatekeeper reports to it), which
    # builds the migration URI from the address the destination reports from, kept in the store (R20).
    status, body = call(lab, "POST", "/v1/farms/ha/instances/db-0/migrate", json.dumps({"to": dest}),
                        addresses=[lab.managers[1 - leader].address])
    assert status == 200, body
    # The leader has taken it up (the destination is being prepared, or further): kill it now.
    states: list[str] = []

    def handed() -> bool:
        moving = instances(lab)["db-0"].get("migrating")
        states.append(moving["state"] if moving else "over")
        return states[-1] != "requested"

    wait_until(handed, timeout=15, interval=0.05)
    killed_at = kill_manager(lab, leader)
    print(f"\nthe leader was killed with the migration in state {states[-1]!r}")
    took = takeover(lab, 1 - leader, killed_at, f"leader killed during a live migration ({states[-1]})")
    assert took < TAKEOVER_S
    led_at = killed_at + took
    seen: list[list[str]] = []
    acted_at = done_at = None  # only the leader's controllers move the record on: nothing did while none led
    while time.monotonic() - led_at < 120:
        seen.append(running(lab).get("ha--db-0", []))
        moving = instances(lab)["db-0"].get("migrating")
        if acted_at is None and (moving or {}).get("state") != states[-1]:
            acted_at = time.monotonic()
        if moving is None and seen[-1] == [dest]:
            done_at = time.monotonic()
            break
        time.sleep(0.1)
    assert acted_at is not None and done_at is not None, (instances(lab)["db-0"], seen[-5:], farm(lab)["events"][-8:])
    MEASURED.append(f"the new leader moved the migration on {acted_at - led_at:.2f} s after taking over, "
                    f"done after {done_at - led_at:.2f} s")
    print(f"the new leader moved the migration on {acted_at - led_at:.2f} s after taking over; it was over "
          f"{done_at - led_at:.2f} s after")
    assert acted_at - led_at < TAKEOVER_S
    assert all(len(s) <= 1 for s in seen), f"db ran on two hosts at once: {seen}"
    types = [e["type"] for e in farm(lab)["events"]]
    assert "Migrated" in types and "MigrationFailed" not in types, farm(lab)["events"][-8:]
    assert wait_until(lambda: placed_once(lab), timeout=30, interval=0.5), (instances(lab), running(lab))
    restart_manager(lab, leader)


def test_an_etcd_member_killed_leaves_writes_going_on(lab: Lab) -> None:
    member = etcd_leader(lab)  # the raft leader: the others elect another, and writes go on
    assert member is not None
    kill_etcd(lab, member)
    t = time.monotonic()
    apply(lab, FARM.replace("replicas: 2", "replicas: 1"))  # an apply: web-1 goes
    MEASURED.append(f"apply with an etcd member down: {time.monotonic() - t:.2f} s")
    assert wait_until(lambda: ready(lab) and set(instances(lab)) == {"web-0", "db-0"}, timeout=90, interval=0.5), \
        farm(lab)["status"]
    assert wait_until(lambda: placed_once(lab), timeout=60, interval=0.5), (instances(lab), running(lab))
    restart_etcd(lab, member)


def test_everything_restarted_keeps_the_farms_instances_and_hosts(lab: Lab) -> None:
    status, farms = call(lab, "GET", "/v1/farms")
    assert status == 200 and isinstance(farms, list)
    before = ([f["name"] for f in farms], {n: i["host"] for n, i in instances(lab).items()}, running(lab))
    for i in range(len(lab.managers)):
        stop_manager(lab, i)
    for i in range(len(lab.etcd)):
        kill_etcd(lab, i)
    restart_etcd(lab, *range(len(lab.etcd)))  # together: a member waits for a quorum
    t = time.monotonic()
    for i in range(len(lab.managers)):
        restart_manager(lab, i)
    leader_index(lab)
    MEASURED.append(f"a leader {time.monotonic() - t:.2f} s after the managers were started again")
    assert wait_until(lambda: ready(lab), timeout=60, interval=0.5), farm(lab)["status"]
    time.sleep(5)  # the new leader's passes have looked at every host: nothing moves
    status, farms = call(lab, "GET", "/v1/farms")
    assert status == 200 and isinstance(farms, list)
    after = ([f["name"] for f in farms], {n: i["host"] for n, i in instances(lab).items()}, running(lab))
    assert after == before
    assert placed_once(lab)
