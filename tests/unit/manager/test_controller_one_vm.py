"""One VM, one host (audit R5, R12, R13, R20): a host's report confirms what the manager decided
and never transfers ownership; nothing that could leave a second copy running is concluded from
silence or stale news; cold moves can be cancelled and time out; the migration URI other hosts
dial is built by the manager. The Manager is driven directly, reports stored as the API would."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.manager.auth import Principal
from softudc.manager.controller import COLD_MOVE_TIMEOUT_S, MIGRATION_STALL_S, inventory, reconcile_farm
from softudc.manager.desired import host_desired
from softudc.manager.service import ApiError, Manager, init
from softudc.model.farm import validate

DEMO = (Path(__file__).parents[3] / "configs" / "farms" / "demo.yaml").read_text()
COLD = DEMO.replace("migration: {policy: live, maxDowntimeMs: 50}", "migration: {policy: cold}")
ADMIN = Principal("admin", "admin")
HOSTS = ("h1", "h2", "h3")


def _uri(host: str) -> str:
    return "qemu+tcp://127.0.0.1/system"  # every test host reports from loopback


def one_vm_manager(tmp_path: Path) -> Manager:
    """A manager whose HOSTS (and "evil") have joined."""
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    for h in (*HOSTS, "evil"):
        m.store.put("host", h, {"joined": time.time()})
    return m


@pytest.fixture
def mgr(tmp_path: Path) -> Manager:
    return one_vm_manager(tmp_path)


def report(m: Manager, host: str, running: list[str] | None = None, **extra: Any) -> None:
    """`host` reports as its gatekeeper does: `sizes` lists every managed domain it holds."""
    running = running or []
    body = {"vcpus": 8, "memory_mib": 8192, "running": running, "sizes": {v: [1, 128] for v in running},
            "migration_uri": _uri(host), **extra}
    m.host_status(host, host, body)
    m.note_address(host, "127.0.0.1")
    m.settle()  # the controller loop has judged (and reconciled) it


def instances(m: Manager, farm: str = "demo") -> dict[str, dict[str, Any]]:
    obj = m.store.get("farm", farm)
    assert obj is not None
    return {i["name"]: i for i in obj.status["instances"]}


def events(m: Manager, type_: str) -> list[str]:
    return [e["message"] for e in m.store.events("farm", "demo") if e["type"] == type_]


def placed(m: Manager, text: str = DEMO) -> dict[str, str]:
    """Apply the farm; every host reports running exactly what it was given."""
    for h in HOSTS:
        report(m, h)
    m.put_farm(ADMIN, "demo", text, None)
    where = {i["name"]: i["host"] for i in instances(m).values()}
    for h in HOSTS:
        report(m, h, [f"demo--{n}" for n, at in where.items() if at == h])
    return where


# --- R5 ---------------------------------------------------------------------------------------


@pytest.mark.adversarial
def test_r5_steal_a_host_that_claims_an_instance_gets_neither_it_nor_its_keys(mgr: Manager) -> None:
    """The audit's steal.py: host `evil` (1 vCPU, 64 MiB) reports running demo--db-0 and demo--web-0."""
    where = placed(mgr)
    report(mgr, "evil", ["demo--db-0", "demo--web-0"], vcpus=1, memory_mib=64)
    now = instances(mgr)
    assert now["db-0"]["host"] == where["db-0"] and now["web-0"]["host"] == where["web-0"]
    assert now["db-0"]["unexpected"] == ["evil"]
    desired = mgr._desired("evil")
    assert desired["vms"] == [] and desired["vnets"] == []  # no VM, no VNET, no key
    planned = mgr._desired(where["db-0"])
    assert any(v["name"] == "demo--db-0" for v in planned["vms"])  # the real host keeps it
    unexpected = events(mgr, "UnexpectedVM")
    assert len(unexpected) == 2 and all("on evil" in e and "not adopted" in e for e in unexpected)
    report(mgr, "evil", ["demo--db-0", "demo--web-0"], vcpus=1, memory_mib=64)
    assert len(events(mgr, "UnexpectedVM")) == 2  # said once per host, not at every report


@pytest.mark.adversarial
def test_r5_a_planned_host_that_stops_reporting_the_vm_does_not_hand_it_to_the_claimer(mgr: Manager) -> None:
    where = placed(mgr)
    src = where["db-0"]
    report(mgr, src, [f"demo--{n}" for n, at in where.items() if at == src and n != "db-0"])  # db-0 gone there
    report(mgr, "evil", ["demo--db-0"])
    assert instances(mgr)["db-0"]["host"] == src
    assert not any(v["name"] == "demo--db-0" for v in mgr._desired("evil")["vms"])


def test_r5_a_migration_whose_commit_the_manager_lost_still_completes(mgr: Manager) -> None:
    """The destination reports it running while `migrating` says it was going there, and the
    source no longer runs it (its report of `completed` never arrived): the move completes."""
    where = placed(mgr)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    report(mgr, dst, [f"demo--{n}" for n, at in where.items() if at == dst], prepared=["demo--db-0"])
    assert instances(mgr)["db-0"]["migrating"]["state"] == "prepared"
    report(mgr, src, [f"demo--{n}" for n, at in where.items() if at == src and n != "db-0"])
    report(mgr, dst, [f"demo--{n}" for n, at in where.items() if at == dst] + ["demo--db-0"])
    db = instances(mgr)["db-0"]
    assert db["host"] == dst and "migrating" not in db and "unexpected" not in db
    assert events(mgr, "Migrated") and not events(mgr, "UnexpectedVM")


@pytest.mark.adversarial
def test_r5_a_destination_claiming_the_vm_before_the_source_was_handed_the_move_gets_nothing(mgr: Manager) -> None:
    where = placed(mgr)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})  # the destination has not made its VNETs yet
    report(mgr, src, [f"demo--{n}" for n, at in where.items() if at == src and n != "db-0"])
    report(mgr, dst, [f"demo--{n}" for n, at in where.items() if at == dst] + ["demo--db-0"])
    assert instances(mgr)["db-0"]["host"] == src


# --- R12 --------------------------------------------------------------------------------------


def _live(mgr: Manager) -> tuple[dict[str, str], str, str, list[str], list[str]]:
    where = placed(mgr)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    src_vms = [f"demo--{n}" for n, at in where.items() if at == src]
    dst_vms = [f"demo--{n}" for n, at in where.items() if at == dst]
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    report(mgr, dst, dst_vms, prepared=["demo--db-0"])
    return where, src, dst, src_vms, dst_vms


def test_r12_an_unknown_outcome_keeps_migrating_until_the_destination_freshly_says_it_holds_no_copy(
        mgr: Manager) -> None:
    """The source reports `unknown` (libvirt error, VM no longer active there) before the
    destination says anything: the move stays open; it ends only on the destination's fresh word."""
    _, src, dst, src_vms, dst_vms = _live(mgr)
    attempt = instances(mgr)["db-0"]["migrating"]["attempt"]
    without = [v for v in src_vms if v != "demo--db-0"]
    job = {"demo--db-0": {"attempt": attempt, "state": "unknown", "error": "connection dropped"}}
    report(mgr, src, without, migrations=job,
           departed={"demo--db-0": {"attempt": attempt, "to": dst, "ago_s": 0.1}})
    db = instances(mgr)["db-0"]
    assert db.get("migrating") and db["host"] == src
    assert "incoming" in next(v for v in mgr._desired(dst)["vms"] if v["name"] == "demo--db-0")
    # While it is open, the source is still told `migrate_to` (so it never boots the VM by itself).
    assert "migrate_to" in next(v for v in mgr._desired(src)["vms"] if v["name"] == "demo--db-0")
    # A destination report holding the domain (paused: an incoming migration) is no evidence.
    # (The first report stored after the failure may predate it; the second one cannot.)
    report(mgr, dst, dst_vms, sizes={**{v: [1, 128] for v in dst_vms}, "demo--db-0": [1, 128]})
    report(mgr, dst, dst_vms, sizes={**{v: [1, 128] for v in dst_vms}, "demo--db-0": [1, 128]})
    assert instances(mgr)["db-0"].get("migrating")
    report(mgr, dst, dst_vms)  # built after the answer to a report stored after the failure: evidence
    db = instances(mgr)["db-0"]
    assert "migrating" not in db and db["host"] == src
    assert "holds no copy" in events(mgr, "MigrationFailed")[-1]


def test_r12_a_completed_migration_waits_for_the_destination_quietly_then_completes(mgr: Manager) -> None:
    _, src, dst, src_vms, dst_vms = _live(mgr)
    attempt = instances(mgr)["db-0"]["migrating"]["attempt"]
    without = [v for v in src_vms if v != "demo--db-0"]
    report(mgr, src, without, migrations={"demo--db-0": {"attempt": attempt, "state": "completed", "wall_ms": 9}},
           departed={"demo--db-0": {"attempt": attempt, "to": dst, "ago_s": 0.0}})
    assert instances(mgr)["db-0"].get("migrating") and not events(mgr, "MigrationFailed")
    report(mgr, dst, [*dst_vms, "demo--db-0"])
    db = instances(mgr)["db-0"]
    assert db["host"] == dst and "migrating" not in db and not events(mgr, "MigrationFailed")
    assert "copied in 9 ms" in events(mgr, "Migrated")[-1]


def test_r12_a_stalled_or_failed_migration_is_never_settled_by_silence(mgr: Manager,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, src, _dst, src_vms, _dst_vms = _live(mgr)
    attempt = instances(mgr)["db-0"]["migrating"]["attempt"]
    report(mgr, src, src_vms, migrations={"demo--db-0": {"attempt": attempt, "state": "failed", "error": "x"}})
    later = time.time() + MIGRATION_STALL_S + 60
    monkeypatch.setattr(time, "time", lambda: later)
    for _ in range(5):  # the source, again and again; the destination says nothing (its gatekeeper is down)
        report(mgr, src, src_vms, migrations={"demo--db-0": {"attempt": attempt, "state": "failed", "error": "x"}})
    assert instances(mgr)["db-0"].get("migrating")


def test_r12_a_stalled_migration_ends_only_on_the_destinations_word(mgr: Manager,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's stall path: the source's gatekeeper lost the job (restart) and the destination's
    gatekeeper is down. Before: after 600 s the source booted a copy. Now: it stays `migrating`."""
    _, src, dst, src_vms, dst_vms = _live(mgr)
    clock = itertools.count(time.time() + MIGRATION_STALL_S + 60)  # each reading a second later
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    for _ in range(3):
        report(mgr, src, [v for v in src_vms if v != "demo--db-0"])  # no job, the VM not running there
    assert instances(mgr)["db-0"].get("migrating")
    assert "migrate_to" in next(v for v in mgr._desired(src)["vms"] if v["name"] == "demo--db-0")
    assert "never started the migration" in events(mgr, "MigrationFailed")[-1]
    for _ in range(2):  # the destination is back and holds nothing
        report(mgr, dst, dst_vms)
    assert "migrating" not in instances(mgr)["db-0"] and instances(mgr)["db-0"]["host"] == src


def test_r12_a_vm_lost_in_migration_is_restarted_at_its_source_only_after_the_destination_says_it_has_none(
        mgr: Manager) -> None:
    _, src, dst, src_vms, dst_vms = _live(mgr)
    attempt = instances(mgr)["db-0"]["migrating"]["attempt"]
    without = [v for v in src_vms if v != "demo--db-0"]
    left = {"demo--db-0": {"attempt": attempt, "to": dst, "ago_s": 0.0}}
    report(mgr, src, without, migrations={"demo--db-0": {"attempt": attempt, "state": "unknown", "error": "e"}},
           departed=left)
    for _ in range(3):
        report(mgr, dst, dst_vms)
    assert "migrating" not in instances(mgr)["db-0"]
    # The destination's reports so far may predate the departure by the margin: no decision yet.
    report(mgr, src, without, departed=left)
    entry = next(v for v in mgr._desired(src)["vms"] if v["name"] == "demo--db-0")
    assert "restart_departed" not in entry
    # The source says the departure was long ago; the destination reports again, holding nothing.
    report(mgr, src, without, departed={"demo--db-0": {**left["demo--db-0"], "ago_s": 60.0}})
    report(mgr, dst, dst_vms)
    entry = next(v for v in mgr._desired(src)["vms"] if v["name"] == "demo--db-0")
    assert entry["restart_departed"] == attempt
    # Had the destination held it in any state, there would be no restart.
    report(mgr, dst, dst_vms, sizes={"demo--db-0": [1, 128]})
    entry = next(v for v in mgr._desired(src)["vms"] if v["name"] == "demo--db-0")
    assert "restart_departed" not in entry


@pytest.mark.adversarial
@pytest.mark.parametrize("entry", [{"attempt": "a", "to": "h2", "ago_s": "x"}, {"attempt": 1, "to": "h2"},
                                   {"to": None, "attempt": "a", "ago_s": 1}, "a", {"attempt": "a", "to": "h2",
                                                                                   "ago_s": float("nan")}])
def test_r12_a_malformed_departed_entry_decides_nothing_and_breaks_nothing(entry: Any) -> None:
    farm = validate(DEMO, "demo.yaml")
    reports = {h: {"vcpus": 8, "memory_mib": 8192, "state": "ready", "running": [], "sizes": {}, "reported": 1e9}
               for h in HOSTS}
    status, _, _ = reconcile_farm(farm, {}, inventory(reports), {}, reports)
    src = next(i["host"] for i in status["instances"] if i["name"] == "db-0")
    reports[src]["departed"] = {"demo--db-0": entry}
    after, _, _ = reconcile_farm(farm, status, inventory(reports), {}, reports)
    assert "restart" not in next(i for i in after["instances"] if i["name"] == "db-0")


def test_r12_the_departed_report_field_is_accepted_and_shaped() -> None:
    from softudc.manager.reports import report_problems

    assert report_problems({"departed": {"demo--db-0": {"attempt": "a", "to": "h2", "ago_s": 1.0}}}) == []
    assert report_problems({"departed": ["demo--db-0"]})


# --- R13 --------------------------------------------------------------------------------------


def test_r13_no_move_away_from_a_down_host(mgr: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    where = placed(mgr, COLD)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    report(mgr, dst)  # the destination is fine; the source has been silent for 120 s
    with pytest.raises(ApiError) as e:
        mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    assert e.value.status == 409 and f"{src} is down" in str(e.value) and "fencing" in str(e.value)
    assert "migrating" not in instances(mgr)["db-0"]


def test_r13_a_cold_move_completes_only_on_a_fresh_report_that_the_source_holds_no_such_domain(mgr: Manager) -> None:
    where = placed(mgr, COLD)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    src_vms = [f"demo--{n}" for n, at in where.items() if at == src]
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    assert instances(mgr)["db-0"]["migrating"]["cold"] is True
    assert not any(v["name"] == "demo--db-0" for h in HOSTS for v in mgr._desired(h)["vms"])
    # Another host's report: the source's stale one (listing the VM) counts for nothing.
    report(mgr, dst)
    assert instances(mgr)["db-0"]["host"] == src
    without = [v for v in src_vms if v != "demo--db-0"]
    report(mgr, src, without, sizes={**{v: [1, 128] for v in without}, "demo--db-0": [1, 128]})  # shut off
    report(mgr, src, without, sizes={**{v: [1, 128] for v in without}, "demo--db-0": [1, 128]})
    assert instances(mgr)["db-0"]["host"] == src
    report(mgr, src, without)  # undefined
    assert instances(mgr)["db-0"]["host"] == dst
    assert any(v["name"] == "demo--db-0" for v in mgr._desired(dst)["vms"])


def test_r13_a_cold_move_can_be_cancelled_and_times_out(mgr: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    where = placed(mgr, COLD)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    src_vms = [f"demo--{n}" for n, at in where.items() if at == src]
    with pytest.raises(ApiError) as e:
        mgr.migrate(ADMIN, "demo", "db-0", {"cancel": True})
    assert e.value.status == 409 and "not moving" in str(e.value)
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    with pytest.raises(ApiError) as e:
        mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    assert "cancel" in str(e.value)
    viewer = Principal("v", "viewer", ("demo",))
    with pytest.raises(ApiError):
        mgr.migrate(viewer, "demo", "db-0", {"cancel": True})
    mgr.migrate(ADMIN, "demo", "db-0", {"cancel": True})
    assert "migrating" not in instances(mgr)["db-0"] and instances(mgr)["db-0"]["host"] == src
    assert any(v["name"] == "demo--db-0" for v in mgr._desired(src)["vms"])  # back on its source
    assert events(mgr, "MigrationCancelled")
    # The source's stale report keeps listing the VM: the move never completes, and is given up.
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    later = time.time() + COLD_MOVE_TIMEOUT_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    report(mgr, src, src_vms)
    report(mgr, dst)
    db = instances(mgr)["db-0"]
    assert "migrating" not in db and db["host"] == src
    assert "given up" in events(mgr, "MigrationFailed")[-1]


def test_r13_a_live_move_can_be_cancelled_only_before_its_source_was_handed_it(mgr: Manager) -> None:
    where = placed(mgr)
    src = where["db-0"]
    dst = next(h for h in HOSTS if h != src)
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    mgr.migrate(ADMIN, "demo", "db-0", {"cancel": True})
    assert "migrating" not in instances(mgr)["db-0"]
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    report(mgr, dst, [f"demo--{n}" for n, at in where.items() if at == dst], prepared=["demo--db-0"])
    with pytest.raises(ApiError) as e:
        mgr.migrate(ADMIN, "demo", "db-0", {"cancel": True})
    assert e.value.status == 409 and "cannot be called back" in str(e.value)


# --- R20 --------------------------------------------------------------------------------------


@pytest.mark.adversarial
@pytest.mark.parametrize("uri, why", [
    ("qemu+ext:///system?command=/sbin/reboot", "scheme"),
    ("qemu+tcp://127.0.0.1/system?socket=/tmp/x", "query"),
    ("qemu+tcp://127.0.0.1/system?command=/sbin/reboot", "query"),
    ("qemu+ssh://root@127.0.0.1/system", "scheme"),
    ("qemu+tcp://10.9.9.9/system", "reports from 127.0.0.1"),
    ("qemu+tcp://evil.example/system", "not an IP address"),
    ("qemu+tcp://127.0.0.1/session", "path"),
    ("qemu+tcp://u@127.0.0.1/system", "user"),
    ("x", "scheme"),
])
def test_r20_a_bad_migration_uri_in_a_report_is_refused(mgr: Manager, uri: str, why: str) -> None:
    where = placed(mgr)
    dst = next(h for h in HOSTS if h != where["db-0"])
    report(mgr, dst, [f"demo--{n}" for n, at in where.items() if at == dst], migration_uri=uri)
    with pytest.raises(ApiError) as e:
        mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    assert e.value.status == 409 and "migration_uri is refused" in str(e.value) and why in str(e.value)
    assert "migrating" not in instances(mgr)["db-0"]


def test_r20_the_uri_handed_to_the_source_is_built_from_the_address_the_host_reports_from(mgr: Manager) -> None:
    where = placed(mgr)
    dst = next(h for h in HOSTS if h != where["db-0"])
    report(mgr, dst, [f"demo--{n}" for n, at in where.items() if at == dst], migration_uri="qemu+tls://127.0.0.1:16514/system")
    mgr.note_address(dst, "::ffff:127.0.0.1")  # a dual-stack socket's view of the same address
    mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    assert instances(mgr)["db-0"]["migrating"]["uri"] == "qemu+tls://127.0.0.1:16514/system"


def test_r20_no_address_seen_yet_means_no_live_migration_there(mgr: Manager) -> None:
    where = placed(mgr)
    dst = next(h for h in HOSTS if h != where["db-0"])
    mgr._addresses.pop(dst)
    host = mgr.store.get("host", dst)
    assert host is not None and "address" in host.spec  # as every manager of a group knows it
    mgr.store.put("host", dst, {k: v for k, v in host.spec.items() if k != "address"})
    with pytest.raises(ApiError) as e:
        mgr.migrate(ADMIN, "demo", "db-0", {"to": dst})
    assert "next report" in str(e.value)


# --- the pure controller, for what the Manager does not reach -----------------------------------


def test_r12_r13_observe_never_uses_a_report_without_a_time_or_domain_list_as_evidence() -> None:
    farm = validate(COLD, "demo.yaml")
    reports = {h: {"vcpus": 8, "memory_mib": 8192, "state": "ready", "running": []} for h in HOSTS}
    status, _, _ = reconcile_farm(farm, {}, inventory(reports), {}, reports)
    src = next(i["host"] for i in status["instances"] if i["name"] == "db-0")
    dst = next(h for h in HOSTS if h != src)
    moving = {**status, "instances": [dict(i, migrating={"to": dst, "attempt": "a", "since": 0.0, "cold": True})
                                      if i["name"] == "db-0" else i for i in status["instances"]]}
    for _ in range(4):  # no `reported`, no `sizes`: an old gatekeeper, or a forged empty report
        moving, _, _ = reconcile_farm(farm, moving, inventory(reports), {}, reports, now=1.0)
    assert next(i for i in moving["instances"] if i["name"] == "db-0")["host"] == src
    assert all("demo--db-0" not in [v["name"] for v in host_desired(h, [(farm, moving)])["vms"]] for h in HOSTS)


# --- a property over any reports ---------------------------------------------------------------

_VMS = ["demo--db-0", "demo--web-0", "other--x-0"]
_HOSTS = ["h1", "h2", "h3", "evil"]
_job = st.fixed_dictionaries({"attempt": st.sampled_from(["a1", "a2"]),
                              "state": st.sampled_from(["copying", "completed", "failed", "unknown"])},
                             optional={"error": st.text(max_size=5), "wall_ms": st.integers(0, 10)})
_report = st.fixed_dictionaries(
    {"vcpus": st.just(8), "memory_mib": st.just(8192), "state": st.sampled_from(["ready", "down"]),
     "running": st.lists(st.sampled_from(_VMS), unique=True), "reported": st.floats(0, 100)},
    optional={"sizes": st.dictionaries(st.sampled_from(_VMS), st.just([1, 128])),
              "migrations": st.dictionaries(st.sampled_from(_VMS), _job),
              "prepared": st.lists(st.sampled_from(_VMS), unique=True),
              "departed": st.dictionaries(st.sampled_from(_VMS), st.fixed_dictionaries(
                  {"attempt": st.sampled_from(["a1", "a2"]), "to": st.sampled_from(_HOSTS),
                   "ago_s": st.floats(0, 1000)}))})
_moving = st.none() | st.fixed_dictionaries(
    {"to": st.sampled_from(_HOSTS), "attempt": st.sampled_from(["a1", "a2"]), "since": st.floats(0, 100)},
    optional={"cold": st.just(True), "prepared": st.booleans(), "uri": st.just("qemu+tcp://10.0.0.1/system")})


@pytest.mark.adversarial
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_HOSTS), _report, min_size=1),
       st.lists(st.tuples(st.sampled_from(["db-0", "web-0"]), st.sampled_from(_HOSTS), _moving), max_size=2,
                unique_by=lambda t: t[0]),
       st.floats(0, 2000), st.integers(1, 4))
def test_r5_r12_r13_no_report_moves_an_instance_anywhere_but_where_the_manager_sent_it(
        reports: dict[str, dict[str, Any]], insts: list[tuple[str, str, dict[str, Any] | None]], now: float,
        rounds: int) -> None:
    from softudc.manager.controller import observe
    from softudc.manager.migration import handed_over, holds_stopped, load

    instances: list[dict[str, Any]] = [{"name": n, "vm": n.split("-")[0], "host": h, **({"migrating": m} if m else {})}
                 for n, h, m in insts]
    for _ in range(rounds):  # marks carry over, as in the stored status
        before = {i["name"]: i for i in instances}
        instances, events = observe("demo", instances, reports, now)
        for inst in instances:
            old = before[inst["name"]]
            moving = old.get("migrating") or {}
            assert inst["host"] in (old["host"], moving.get("to"))  # never to whoever claims it
            if inst["host"] != old["host"]:
                name = f"demo--{inst['name']}"
                if moving.get("cold"):  # only on the source's word that it holds no such domain
                    assert "sizes" in reports.get(old["host"], {}) and name not in reports[old["host"]]["sizes"]
                else:  # only once the source was handed it, and the destination runs it, or its guest
                    # stopped on arrival: the source said completed, runs it no more, the destination holds it
                    dest = reports[moving["to"]]
                    stopped_there = load(moving, now).state == "completed" and holds_stopped(dest, name) and \
                        name not in reports.get(old["host"], {}).get("running", [])
                    assert handed_over(moving) and (name in dest["running"] or stopped_there)
            if "migrating" in old and "migrating" not in inst and inst["host"] == old["host"] \
                    and not moving.get("cold"):  # a live move given up: the destination said it holds none
                dest = reports.get(moving["to"], {})
                assert "sizes" in dest and f"demo--{inst['name']}" not in dest["sizes"]
        assert all(t in ("Migrated", "MigrationFailed", "UnexpectedVM") for t, _ in events)
        for h in reports:  # every host reports again, a second later, saying the same
            reports[h] = {**reports[h], "reported": reports[h]["reported"] + 1.0}
