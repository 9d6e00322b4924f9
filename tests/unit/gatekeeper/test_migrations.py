"""The host side of migrations (gatekeeper/migrations.py), without libvirt: a gatekeeper restarted
in every state of an outgoing migration resumes it correctly (follows a job libvirt still runs,
never starts a second one, settles it from libvirt's view once it ends, starts the attempt again
only while the VM still runs here), and what it reports maps onto the manager's migration table."""

from __future__ import annotations

from typing import Any

import pytest

from gatekeeper.converge import Here, converge
from gatekeeper.migrations import LEFT, UNDER_WAY, Migrations, recover_migrations, settle_recovered
from softudc.manager import migration
from softudc.model.hoststate import JOB_ENDED, JOB_STATES

NAME = "demo--db-0"
MOVE = {"host": "h2", "uri": "qemu+tcp://10.0.0.2/system", "attempt": "a1", "downtime_ms": 0}
DESIRED = {"vnets": [], "vms": [{"name": NAME, "vcpus": 1, "memory_mib": 128, "nics": [], "migrate_to": MOVE}]}


class FakeHv:
    """libvirt's view as the driver gives it: VMs with a migration job, and no job records of its
    own (a restarted gatekeeper's driver remembers nothing)."""

    def __init__(self, active: set[str]) -> None:
        self.active = active
        self.migrations: dict[str, dict[str, Any]] = {}

    def migrating(self) -> set[str]:
        return set(self.active)

    def job(self, name: str) -> dict[str, Any]:
        return {"name": name, "state": "none"}


class FakeVms:
    def __init__(self, hv: FakeHv) -> None:
        self.hv = hv


def _domain(state: str | None) -> list[dict[str, Any]]:
    return [{"name": NAME, "state": state, "nics": []}] if state else []


def _restart(state: str | None, active: bool,
             desired: dict[str, Any] = DESIRED) -> tuple[Migrations, FakeHv, dict[str, str], list[str]]:
    """A new gatekeeper's first round: what it follows, and what converge then does to the VM."""
    hv = FakeHv({NAME} if active else set())
    moves = Migrations(FakeVms(hv))  # type: ignore[arg-type]
    attempts = moves.forget({v["name"] for v in desired["vms"]})
    moves.follow_recovered(desired, _domain(state), attempts)
    actions = [a.op for a in converge(desired, Here([], _domain(state), attempts=attempts))
               if a.args.get("name") == NAME]
    return moves, hv, attempts, actions


def test_every_job_state_is_under_way_or_ended_and_maps_onto_the_managers_table() -> None:
    assert set(UNDER_WAY) | set(JOB_ENDED) == set(JOB_STATES) and not set(UNDER_WAY) & set(JOB_ENDED)
    assert set(LEFT) <= set(JOB_ENDED)
    assert {migration.job_event({"state": s}) for s in UNDER_WAY} == {migration.COPYING}
    assert [migration.job_event({"state": s}) for s in JOB_ENDED] == [migration.COMPLETED, migration.FAILED,
                                                                       migration.UNKNOWN]


@pytest.mark.parametrize("during", ["running", "paused"])
@pytest.mark.parametrize("after, outcome", [(None, "completed"), ("running", "failed"), ("shutoff", "unknown"),
                                            ("paused", "unknown")])
def test_a_restart_while_libvirt_still_migrates_follows_the_job_then_settles_it_from_libvirts_view(
        during: str, after: str | None, outcome: str) -> None:
    moves, hv, attempts, actions = _restart(during, active=True)
    assert actions == [] and attempts == {NAME: "a1"}  # followed: never a second migration of it
    job = moves.snapshot()[NAME]
    assert (job["state"], job["attempt"], job["to"]) == ("recovered", "a1", "h2")
    assert migration.job_event(job) == migration.COPYING  # the manager keeps the move `copying`
    moves.follow_recovered(DESIRED, _domain(during), attempts)  # still running: nothing settled
    assert moves.snapshot()[NAME]["state"] == "recovered"
    assert moves.forget(set()) == {NAME: "a1"}  # a job under way is never forgotten
    hv.active.clear()
    moves.follow_recovered(DESIRED, _domain(after), attempts)
    job = moves.snapshot()[NAME]
    assert job["state"] == outcome and migration.job_event(job) == {
        "completed": migration.COMPLETED, "failed": migration.FAILED, "unknown": migration.UNKNOWN}[outcome]
    assert (NAME in moves.departures({NAME})) is (outcome in LEFT)  # not started here again by itself


def test_a_restart_with_no_job_and_the_vm_running_here_starts_the_attempt_again() -> None:
    moves, _, attempts, actions = _restart("running", active=False)
    assert actions == ["vm.migrate"] and moves.snapshot() == {} and attempts == {}


@pytest.mark.parametrize("state", [None, "shutoff"])
def test_a_restart_with_no_job_and_the_vm_not_running_here_starts_nothing(state: str | None) -> None:
    """Gone (the migration completed while the gatekeeper was down) or defined but off (its
    outcome is unknown): it may run at the destination, so nothing is started or migrated; the
    manager settles the move from the destination's reports."""
    moves, _, _, actions = _restart(state, active=False)
    assert actions == [] and moves.snapshot() == {}


def test_a_restart_after_the_manager_settled_the_move_follows_nothing() -> None:
    settled = {"vnets": [], "vms": [{k: v for k, v in DESIRED["vms"][0].items() if k != "migrate_to"}]}
    moves, _, attempts, actions = _restart("paused", active=True, desired=settled)
    assert moves.snapshot() == {} and attempts == {} and actions == []


def test_a_restarted_gatekeeper_follows_a_migration_libvirt_is_still_running_instead_of_restarting_it() -> None:
    desired = {"vnets": [], "vms": [{"name": "demo--db-0", "vcpus": 1, "memory_mib": 128, "nics": [],
                                     "migrate_to": {"host": "h2", "uri": "u", "attempt": "a1"}}]}
    vm = {"name": "demo--db-0", "state": "paused", "nics": []}
    assert recover_migrations(desired, Here([], [vm]), active={"demo--db-0"}) == {"demo--db-0": "a1"}
    assert recover_migrations(desired, Here([], [vm]), active=set()) == {}  # no job: converge starts one
    assert recover_migrations(desired, Here([], [vm], attempts={"demo--db-0": "a1"}), {"demo--db-0"}) == {}
    # Followed: the converge step does not start it again.
    assert converge(desired, Here([], [vm], attempts={"demo--db-0": "a1"})) == []
    assert settle_recovered({}, still_here=True, still_active=True) is None
    assert settle_recovered({}, still_here=False, still_active=False) == {"state": "completed"}
    interrupted = settle_recovered({}, still_here=True, still_active=False)
    assert interrupted is not None and interrupted["state"] == "failed" and "keeps running here" in interrupted["error"]
