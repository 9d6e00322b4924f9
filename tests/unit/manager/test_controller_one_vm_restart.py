"""One VM, one host, across a restart of the manager: a move's state and steps are in the store,
so a new Manager on the same state directory resumes it where it stood (live and cold)."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.manager.service import Manager
from tests.unit.manager.test_controller_one_vm import (
    ADMIN,
    COLD,
    HOSTS,
    events,
    instances,
    one_vm_manager,
    placed,
    report,
)


@pytest.fixture
def mgr(tmp_path: Path) -> Manager:
    return one_vm_manager(tmp_path)


# --- a restart of the manager in every state of a move ------------------------------------------

LIVE_STEPS = ["requested", "prepared", "copying"]
ENDED = ["completed", "failed", "unknown"]  # the source's job ended; the destination settles it


@pytest.mark.parametrize("at", LIVE_STEPS + ENDED)
def test_a_restarted_manager_resumes_a_live_move_where_it_stood(mgr: Manager, tmp_path: Path, at: str) -> None:
    """The move's state and steps are in the farm's status in the store: a new Manager on the same
    state directory carries on from there (hands the source the move, follows it, settles it)."""
    where = placed(mgr)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    src_vms = [f"demo--{n}" for n, h in where.items() if h == src]
    dst_vms = [f"demo--{n}" for n, h in where.items() if h == dst]
    without = [v for v in src_vms if v != "demo--db-0"]
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    attempt = instances(mgr)["db-0"]["migrating"]["attempt"]
    job = {"attempt": attempt, "state": "copying"}
    path = LIVE_STEPS[:LIVE_STEPS.index(at) + 1] if at in LIVE_STEPS else [*LIVE_STEPS, at]
    for step in path[1:]:
        if step == "prepared":
            report(mgr, dst, dst_vms, prepared=["demo--db-0"])
        else:  # the VM leaves the source's list once the job says it may run at the destination
            report(mgr, src, without if step in ("completed", "unknown") else src_vms,
                   migrations={"demo--db-0": {**job, "state": step, "error": "x"}})
    mgr.close()  # the manager stops; a new one starts on the same store
    again = Manager(tmp_path)
    moving = instances(again)["db-0"]["migrating"]
    assert moving["state"] == at and [s[0] for s in moving["steps"]] == path
    handed = "migrate_to" in next(v for v in again._desired(src)["vms"] if v["name"] == "demo--db-0")
    assert handed is (at != "requested")
    if at in ("failed", "unknown"):  # settled by the destination's fresh word, as before the restart
        for _ in range(2):
            report(again, dst, dst_vms)
        assert instances(again)["db-0"]["host"] == src and "migrating" not in instances(again)["db-0"]
        assert "holds no copy" in events(again, "MigrationFailed")[-1]
        return
    if at == "requested":
        report(again, dst, dst_vms, prepared=["demo--db-0"])
        assert instances(again)["db-0"]["migrating"]["state"] == "prepared"
    report(again, src, without, migrations={"demo--db-0": {**job, "state": "completed"}})
    report(again, dst, [*dst_vms, "demo--db-0"])
    assert instances(again)["db-0"]["host"] == dst and "migrating" not in instances(again)["db-0"]
    assert events(again, "Migrated")


def test_a_restarted_manager_resumes_a_cold_move_with_its_freshness_marks(mgr: Manager, tmp_path: Path) -> None:
    where = placed(mgr, COLD)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    without = [f"demo--{n}" for n, h in where.items() if h == src and n != "db-0"]
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    report(mgr, src, without)  # the first report after the move: may predate it (marks it)
    mgr.close()
    again = Manager(tmp_path)
    assert instances(again)["db-0"]["migrating"]["state"] == "stopping"
    assert instances(again)["db-0"]["migrating"]["marks"]["source"][0] is not None
    report(again, src, without)
    report(again, src, without)  # built after the answer to the first: the source holds none
    assert instances(again)["db-0"]["host"] == dst and events(again, "Migrated")
