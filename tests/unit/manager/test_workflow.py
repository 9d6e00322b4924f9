"""The workflow machinery (softudc/manager/workflow.py): tables are checked when written, events a
state does not list are refused or ignored, the history is bounded, and a stored record loads
back as it was (and a damaged one is refused or cleaned, never trusted)."""

from __future__ import annotations

import json

import pytest

from softudc.manager.workflow import HISTORY_KEPT, Refused, Step, Table, Workflow

PING = Table("ping", "idle", {"idle": {"go": "busy", "stop": "off"}, "busy": {"go": "busy", "done": "idle"}},
             frozenset({"off"}))


def test_a_table_with_a_typo_in_a_target_or_a_final_state_with_moves_is_refused() -> None:
    with pytest.raises(ValueError, match="bsy"):
        Table("t", "a", {"a": {"x": "bsy"}}, frozenset())
    with pytest.raises(ValueError):
        Table("t", "a", {"a": {"x": "b"}, "b": {}}, frozenset({"b"}))
    with pytest.raises(ValueError):
        Table("t", "nowhere", {"a": {}}, frozenset())
    assert PING.states == {"idle", "busy", "off"} and PING.events == {"go", "stop", "done"}


def test_events_move_the_workflow_and_every_step_is_kept_with_its_time() -> None:
    wf = Workflow.begin(PING, "a1", 10.0)
    assert wf.state == "idle" and wf.steps == (Step("idle", "request", 10.0),)
    wf = wf.fire("go", 11.0).fire("done", 12.0).fire("stop", 13.0)
    assert wf.over and [s.state for s in wf.steps] == ["idle", "busy", "idle", "off"]
    assert [s.at for s in wf.steps] == [10.0, 11.0, 12.0, 13.0] and wf.since == 10.0


def test_an_event_the_state_does_not_list_is_refused_by_fire_and_ignored_by_offer() -> None:
    wf = Workflow.begin(PING, "a1", 0.0)
    with pytest.raises(Refused, match="'done' is not possible in state 'idle' \\(it accepts: go, stop\\)"):
        wf.fire("done", 1.0)
    assert wf.offer("done", 1.0) is wf
    over = wf.fire("stop", 1.0)
    with pytest.raises(Refused, match="it is over"):
        over.fire("go", 2.0)


def test_a_state_entered_again_by_its_own_event_is_no_step() -> None:
    wf = Workflow.begin(PING, "a1", 0.0).fire("go", 1.0)
    assert wf.fire("go", 2.0) is wf and len(wf.steps) == 2


def test_the_history_is_bounded() -> None:
    wf = Workflow.begin(PING, "a1", 0.0)
    for t in range(1, 1000):
        wf = wf.fire("go" if wf.state == "idle" else "done", float(t))
    assert len(wf.steps) == HISTORY_KEPT and wf.steps[-1].at == 999.0
    assert len(Workflow.load(PING, {**wf.record(), "steps": [["busy", "go", 1.0]] * 10_000}).steps) == HISTORY_KEPT


def test_a_stored_workflow_loads_back_as_it_was() -> None:
    wf = Workflow.begin(PING, "a1", 5.0).fire("go", 6.0)
    stored = json.loads(json.dumps(wf.record()))
    assert Workflow.load(PING, stored) == wf


@pytest.mark.adversarial
@pytest.mark.parametrize("record", [{"state": "gone", "attempt": "a"}, {"state": "idle", "attempt": 1},
                                    {"state": "idle", "attempt": "a", "since": "now"},
                                    {"state": "idle", "attempt": "a", "since": True}, {}])
def test_a_record_that_is_not_one_of_the_table_is_refused(record: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not a ping record"):
        Workflow.load(PING, record)


@pytest.mark.adversarial
def test_damaged_steps_are_dropped_not_trusted() -> None:
    steps = [["busy", "go", 1.0], ["busy", "go"], "x", [1, "go", 1.0], ["busy", "go", True], ["idle", "done", 2]]
    wf = Workflow.load(PING, {"state": "idle", "attempt": "a", "since": 0.0, "steps": steps})
    assert wf.steps == (Step("busy", "go", 1.0), Step("idle", "done", 2.0))
    assert Workflow.load(PING, {"state": "idle", "attempt": "a", "steps": {"no": "list"}}).steps == ()
