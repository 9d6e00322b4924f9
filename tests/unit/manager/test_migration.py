"""The migration state tables (softudc/manager/migration.py), pure: every transition, every pair a
state does not list (refused from the API, ignored from reports), the reports' views mapped onto
events, and a restart of the manager in every state (the record as the store keeps it) resuming
where it stood."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from softudc.manager import migration as m
from softudc.manager.workflow import Refused, Step, Table, Workflow
from softudc.model.hoststate import JOB_STATES

TABLES = [m.LIVE, m.COLD]
MOVES = [(t, s, e, after) for t in TABLES for s, moves in t.moves.items() for e, after in moves.items()]
ALL_EVENTS = sorted(m.LIVE.events | m.COLD.events | {m.REQUEST})
MISSING = [(t, s, e) for t in TABLES for s in sorted(t.states) for e in ALL_EVENTS if t.next(s, e) is None]
NAME = "demo--db-0"


def _at(table: Table, state: str, since: float = 0.0) -> Workflow:
    return Workflow(table, state, "a1", since)


def _reachable(table: Table) -> set[str]:
    seen, todo = {table.start}, [table.start]
    while todo:
        for after in table.moves.get(todo.pop(), {}).values():
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_every_state_is_reachable_and_every_state_can_end(table: Table) -> None:
    assert _reachable(table) == table.states
    for state in table.moves:  # no state strands a move: each one has a way to a final state
        assert _reachable(Table("from", state, table.moves, table.final)) & table.final, state


def test_the_hosts_job_vocabulary_is_mapped_whole() -> None:
    assert set(m.SOURCE_JOB_EVENTS) == set(JOB_STATES)
    assert set(m.SOURCE_JOB_EVENTS.values()) <= m.LIVE.events


@pytest.mark.parametrize("table, state, event, after", MOVES, ids=lambda v: getattr(v, "name", v))
def test_every_transition(table: Table, state: str, event: str, after: str) -> None:
    wf = _at(table, state).fire(event, 7.0)
    assert wf.state == after
    assert wf.steps == (() if after == state else (Step(after, event, 7.0),))


@pytest.mark.parametrize("table, state, event", MISSING, ids=lambda v: getattr(v, "name", v))
def test_every_pair_not_in_the_table_is_refused_when_asked_and_ignored_when_reported(
        table: Table, state: str, event: str) -> None:
    wf = _at(table, state)
    with pytest.raises(Refused):
        wf.fire(event, 1.0)
    assert wf.offer(event, 1.0) is wf


def test_the_source_is_handed_the_move_exactly_in_the_states_after_prepared() -> None:
    after_prepared = _reachable(Table("x", "prepared", m.LIVE.moves, m.LIVE.final)) - m.LIVE.final
    assert after_prepared == m.HANDED_OVER
    assert "requested" not in m.HANDED_OVER and "stalled" not in m.HANDED_OVER
    # Only a handed-over move can arrive: a copy at the destination before that is not this one's.
    assert {s for s in m.LIVE.moves if m.LIVE.next(s, m.ARRIVED)} == m.HANDED_OVER


@pytest.mark.parametrize("state", sorted(m.LIVE.moves))
def test_a_live_move_can_be_cancelled_only_before_it_was_handed_over(state: str) -> None:
    record = m.save({"to": "h2", "uri": "u"}, _at(m.LIVE, state))
    if state == "requested":
        assert m.cancel(record, 1.0).state == "cancelled"
    else:
        with pytest.raises(Refused):
            m.cancel(record, 1.0)


def test_a_cold_move_can_be_cancelled_until_it_is_done() -> None:
    record = m.begin("h2", "a1", 0.0, None)
    assert record["cold"] is True and record["state"] == "stopping" and "prepared" not in record
    assert m.cancel(record, 1.0).state == "cancelled"


def test_a_new_move_is_recorded_with_its_first_step() -> None:
    live = m.begin("h2", "a1", 5.0, "qemu+tcp://10.0.0.2/system")
    assert live == {"to": "h2", "state": "requested", "attempt": "a1", "since": 5.0,
                    "steps": [["requested", "request", 5.0]], "uri": "qemu+tcp://10.0.0.2/system"}


# --- a restart of the manager in every state ---------------------------------------------------


@pytest.mark.parametrize("table, state", [(t, s) for t in TABLES for s in sorted(t.moves)],
                         ids=lambda v: getattr(v, "name", v))
def test_a_restarted_manager_resumes_every_state_from_the_stored_record(table: Table, state: str) -> None:
    """The record goes through JSON (the store) and is read by a new process: same state,
    attempt, start and history, and every event then does what it would have done."""
    wf = Workflow.begin(table, "a1", 3.0)
    wf = Workflow(table, state, wf.attempt, wf.since, (*wf.steps, Step(state, "x", 4.0)))
    extra = {"to": "h2", **({"cold": True} if table is m.COLD else {"uri": "u"}),
             "marks": {"destination": [1.0, 2.0]}, "data_processed": 5}
    stored = json.loads(json.dumps(m.save(extra, wf)))
    back = m.load(stored, 100.0)
    assert back == wf
    for event in ALL_EVENTS:
        assert back.offer(event, 9.0) == wf.offer(event, 9.0)
    assert stored["marks"] == {"destination": [1.0, 2.0]} and stored["data_processed"] == 5
    if table is m.LIVE:
        assert stored["prepared"] is (state in m.HANDED_OVER)


@pytest.mark.parametrize("record, state", [
    ({"cold": True, "state": "requested"}, "stopping"),
    ({"state": "requested"}, "requested"),
    ({}, "requested"),
    ({"prepared": True, "state": "prepared"}, "prepared"),
    ({"prepared": True}, "prepared"),
    ({"prepared": True, "state": "copying"}, "copying"),
    ({"prepared": True, "state": "starting"}, "copying"),
    ({"prepared": True, "state": "failed", "outcome": {"state": "failed", "error": "x"}}, "failed"),
    ({"prepared": True, "state": "unknown", "outcome": {"state": "unknown"}}, "unknown"),
    ({"prepared": True, "state": "completed", "outcome": {"state": "completed"}}, "completed"),
    ({"prepared": True, "outcome": {"state": "stalled"}}, "silent"),
    ({"outcome": {"state": "stalled"}}, "stalled"),
    ({"prepared": True, "state": "nonsense"}, "prepared"),
    ({"prepared": True, "state": "prepared", "outcome": {"state": "stalled"}}, "silent"),  # said once already
    ({"state": "requested", "outcome": {"state": "stalled"}}, "stalled"),
    ({"prepared": True, "state": "nonsense", "steps": []}, "prepared"),  # damaged: read by its flags
])
def test_a_record_written_before_the_table_resumes_as_what_it_meant(record: dict[str, Any], state: str) -> None:
    wf = m.load({"to": "h2", "attempt": "a1", "since": 1.0, **record}, 50.0)
    assert wf.state == state and wf.attempt == "a1" and wf.since == 1.0
    saved = m.save({"to": "h2", **record}, wf)
    assert "outcome" not in saved and saved["state"] == state


def test_a_record_without_a_start_time_is_not_taken_for_an_old_one() -> None:
    assert m.load({"to": "h2", "attempt": "a1"}, 50.0).since == 50.0  # so it does not stall at once


# --- the reports' view mapped onto events -------------------------------------------------------


def _view(job: dict[str, Any] | None = None, **flags: bool) -> m.LiveView:
    return m.LiveView(job or {}, flags.get("prepared", False), flags.get("dest_runs", False),
                      flags.get("src_runs", True))


@pytest.mark.parametrize("view, age, events", [
    (_view(), 0.0, []),
    (_view(prepared=True), 0.0, [m.PREPARED]),
    (_view({"state": "copying"}, prepared=True), 0.0, [m.COPYING]),  # the job says more than `prepared`
    (_view({"state": "starting"}), 0.0, [m.COPYING]),
    (_view({"state": "recovered"}), 0.0, [m.COPYING]),
    (_view({"state": "completed"}, dest_runs=True), 0.0, [m.ARRIVED, m.COMPLETED]),
    (_view({}, dest_runs=True, src_runs=False), 0.0, [m.ARRIVED]),  # the source's `completed` was lost
    (_view({"state": "copying"}, dest_runs=True), 0.0, [m.COPYING]),  # both run it: not arrived
    (_view(), m.MIGRATION_STALL_S + 1, [m.STALL]),
    (_view({"state": "copying"}), m.MIGRATION_STALL_S + 1, [m.COPYING]),  # a job is news: no stall
    (_view({"state": "weird"}), 0.0, []),
])
def test_the_reports_become_events_in_the_tables_order(view: m.LiveView, age: float, events: list[str]) -> None:
    assert m.live_events(view, age) == events


def _live(state: str, since: float = 0.0) -> dict[str, Any]:
    return m.save({"to": "h2", "uri": "u"}, _at(m.LIVE, state, since))


def _dest(at: float, holds: bool = False) -> dict[str, Any]:
    return {"reported": at, "running": [], "sizes": {NAME: [1, 128]} if holds else {}}


def test_a_live_move_steps_from_request_to_done() -> None:
    record = m.begin("h2", "a1", 0.0, "u")
    record, wf, taken = m.observe_live(record, _view(prepared=True), _dest(1.0), NAME, 1.0)
    assert wf.state == "prepared" and record["state"] == "requested"  # the caller saves it
    record = m.save(record, wf)
    assert record["prepared"] is True and [t.event for t in taken] == [m.PREPARED]
    job = {"state": "copying", "data_total": 10, "data_processed": 4}
    record, wf, _ = m.observe_live(record, _view(job), _dest(2.0), NAME, 2.0)
    record = m.save(record, wf)
    assert (wf.state, record["data_processed"]) == ("copying", 4)
    record, wf, taken = m.observe_live(record, _view({"state": "completed"}, dest_runs=True), _dest(3.0), NAME, 3.0)
    assert wf.over and wf.state == "done" and [(t.before, t.after) for t in taken] == [("copying", "done")]


def test_a_failed_move_is_aborted_only_on_the_destinations_second_fresh_report() -> None:
    record = _live("copying")
    job = {"state": "failed", "error": "no route"}
    states = []
    for at in (10.0, 10.0, 11.0, 12.0):  # the same report twice, then two new ones
        record, wf, _ = m.observe_live(record, _view(job), _dest(at), NAME, at)
        record = m.save(record, wf)
        states.append(wf.state)
    assert states == ["failed", "failed", "failed", "aborted"] and record["error"] == "no route"


def test_a_destination_holding_the_domain_or_a_source_copying_again_never_aborts_it() -> None:
    record = _live("failed")
    for at in range(1, 6):
        record, wf, _ = m.observe_live(record, _view({"state": "failed"}), _dest(at, holds=True), NAME, at)
        record = m.save(record, wf)
    assert wf.state == "failed"
    record, wf, _ = m.observe_live(record, _view({"state": "copying"}), _dest(9.0), NAME, 9.0)
    assert wf.state == "copying"  # the source restarted the attempt: followed


def test_a_completed_move_the_destination_holds_stopped_is_done_on_its_second_fresh_report() -> None:
    """The guest crashed on arrival: the source handed it over (completed), the destination holds
    the domain shut off. The only copy is there: the move is done (the destination starts it)."""
    record = _live("copying")
    states = []
    for at in (10.0, 10.0, 11.0, 12.0):  # the same report twice, then two new ones
        record, wf, taken = m.observe_live(record, _view({"state": "completed"}, src_runs=False),
                                           _dest(at, holds=True), NAME, at)
        record = m.save(record, wf)
        states.append(wf.state)
    assert states == ["completed", "completed", "completed", "done"]
    assert [t.event for t in taken] == [m.ARRIVED_STOPPED]


@pytest.mark.parametrize("job, src_runs", [
    ({"state": "failed"}, True),  # failed: the source keeps it; a shut-off copy there is no arrival
    ({"state": "unknown"}, False),  # unknown: the source may still hold it (paused)
    ({"state": "completed"}, True),  # a source still running it: not handed over after all
    ({"state": "copying"}, False),  # still copying: the destination's word is not its last
])
def test_a_destination_holding_it_stopped_ends_nothing_but_a_completed_move(job: dict[str, Any],
                                                                            src_runs: bool) -> None:
    record = _live(m.job_event(job) or "copying")
    for at in range(1, 6):
        record, wf, _ = m.observe_live(record, _view(job, src_runs=src_runs), _dest(at, holds=True), NAME, at)
        record = m.save(record, wf)
    assert not wf.over


def test_a_stall_is_said_and_a_late_preparation_does_not_hand_the_move_over() -> None:
    """Before the table, a `prepared` arriving after a stall handed the source `migrate_to` while
    the manager was about to give the move up; now the stalled move only waits for the
    destination's word."""
    record = _live("requested")
    later = m.MIGRATION_STALL_S + 1
    record, wf, taken = m.observe_live(record, _view(), _dest(1.0), NAME, later)
    assert wf.state == "stalled" and [t.event for t in taken] == [m.STALL]
    record, wf, _ = m.observe_live(m.save(record, wf), _view(prepared=True), _dest(1.0), NAME, later)
    assert wf.state == "stalled" and not m.handed_over(m.save(record, wf))


def test_a_cold_move_completes_on_the_sources_fresh_word_or_times_out() -> None:
    record = m.begin("h2", "a1", 0.0, None)
    src = {"reported": 1.0, "running": [], "sizes": {}}
    for at in (1.0, 2.0):
        record, wf, _ = m.observe_cold(record, False, {**src, "reported": at}, NAME, at)
        record = m.save(record, wf)
        assert wf.state == "stopping"
    record, wf, _ = m.observe_cold(record, False, {**src, "reported": 3.0}, NAME, 3.0)
    assert wf.state == "done"
    record = m.begin("h2", "a1", 0.0, None)
    _, wf, _ = m.observe_cold(record, True, src, NAME, m.COLD_MOVE_TIMEOUT_S + 1)
    assert wf.state == "aborted"


def _drawn(doc: str) -> set[tuple[str, str, str]]:
    """The transitions the module docstring draws as `a, b ──e1|e2──► t1 | t2` lines."""
    out = set()
    for line in doc.splitlines():
        m_ = re.match(r"^\s+([a-z, ]+) ──([a-z_|]+)──► ([a-z |]+?)(\s{2,}\(.*)?$", line)
        if not m_:
            continue
        events, targets = m_.group(2).split("|"), [t.strip() for t in m_.group(3).split("|")]
        pairs = list(zip(events, targets, strict=True)) if len(targets) > 1 else [(e, targets[0]) for e in events]
        out |= {(s.strip(), e, t) for s in m_.group(1).split(",") for e, t in pairs}
    return out


def test_the_docstring_draws_exactly_the_tables() -> None:
    first_hops = {("requested", "prepared", "prepared"), ("prepared", "copying", "copying")}  # the chained line
    drawn = _drawn(m.__doc__ or "") | first_hops
    tables = {(s, e, t) for table in TABLES for s, moves in table.moves.items() for e, t in moves.items() if s != t}
    assert drawn == tables
