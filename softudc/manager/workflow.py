"""Workflows as state tables: the small machinery every long-running operation of the manager
shares (a live or cold migration today; drain, HA restart, volume moves and rollouts next).

A `Table` is data: per state, the events it accepts and the state each leads to, plus the final
states. A `Workflow` is one run of a table: its state, the attempt it belongs to, when it began
and a bounded history of the steps it took. Pure: no I/O, the time is passed in, and a workflow
is stored as a plain JSON record (`record()` / `Workflow.load`), so a restarted manager resumes
it from the store where it stood.

Rules (as in h11's `_state.py`): an event a state does not list is either *refused* (`fire`:
the caller asked for something impossible, e.g. an admin cancelling a move that is past its
point of no return) or *ignored* (`offer`: news that does not apply in this state, e.g. a host
repeating what it said before). A state entered again by its own event is no step: progress
reports do not fill the history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

HISTORY_KEPT = 16  # steps a workflow keeps (the oldest go first): enough to read what happened


class Refused(Exception):
    """An event the workflow's current state does not accept; the message says what it does."""

    def __init__(self, table: Table, state: str, event: str) -> None:
        accepted = ", ".join(sorted(table.moves.get(state, {}))) or "nothing (it is over)"
        super().__init__(f"{table.name}: {event!r} is not possible in state {state!r} (it accepts: {accepted})")
        self.state, self.event = state, event


@dataclass(frozen=True)
class Table:
    """States and transitions: `moves[state][event]` is the next state."""

    name: str
    start: str
    moves: Mapping[str, Mapping[str, str]]
    final: frozenset[str]

    def __post_init__(self) -> None:
        # A table is written by hand: a typo in a target state would strand a workflow there.
        known = set(self.moves) | self.final
        targets = {t for m in self.moves.values() for t in m.values()}
        if self.start not in self.moves or not targets <= known or self.final & set(self.moves):
            raise ValueError(f"table {self.name}: start {self.start!r}, targets {sorted(targets - known)} "
                             f"unknown or final states {sorted(self.final & set(self.moves))} with moves")

    @property
    def states(self) -> frozenset[str]:
        return frozenset(self.moves) | self.final

    @property
    def events(self) -> frozenset[str]:
        return frozenset(e for m in self.moves.values() for e in m)

    def next(self, state: str, event: str) -> str | None:
        """The state `event` leads to from `state`, None when the table has no such move."""
        return self.moves.get(state, {}).get(event)


@dataclass(frozen=True)
class Step:
    state: str  # entered
    event: str  # by this event
    at: float  # at this time (the caller's clock)


@dataclass(frozen=True)
class Workflow:
    table: Table
    state: str
    attempt: str
    since: float  # when it began
    steps: tuple[Step, ...] = field(default=())

    @classmethod
    def begin(cls, table: Table, attempt: str, now: float, event: str = "request") -> Workflow:
        return cls(table, table.start, attempt, now, (Step(table.start, event, now),))

    @property
    def over(self) -> bool:
        return self.state in self.table.final

    def fire(self, event: str, now: float) -> Workflow:
        """The workflow after `event`; Refused when its state does not accept it."""
        target = self.table.next(self.state, event)
        if target is None:
            raise Refused(self.table, self.state, event)
        if target == self.state:
            return self
        steps = (*self.steps, Step(target, event, now))[-HISTORY_KEPT:]
        return replace(self, state=target, steps=steps)

    def offer(self, event: str, now: float) -> Workflow:
        """The workflow after `event`, or unchanged when its state does not accept it."""
        try:
            return self.fire(event, now)
        except Refused:
            return self

    def record(self) -> dict[str, Any]:
        """The JSON the store keeps (the table is the caller's: it knows which one it stored)."""
        return {"state": self.state, "attempt": self.attempt, "since": self.since,
                "steps": [[s.state, s.event, s.at] for s in self.steps]}

    @classmethod
    def load(cls, table: Table, record: Mapping[str, Any]) -> Workflow:
        """A stored workflow, as it stood. ValueError when the record is not one of `table`'s
        (the caller decides what a foreign or damaged record means for its operation)."""
        state, attempt, since = record.get("state"), record.get("attempt"), record.get("since", 0.0)
        if state not in table.states or not isinstance(attempt, str) or \
                not isinstance(since, int | float) or isinstance(since, bool):
            raise ValueError(f"not a {table.name} record: state {state!r}, attempt {attempt!r}, since {since!r}")
        return cls(table, str(state), attempt, float(since), _steps(record.get("steps")))


def _steps(raw: Any) -> tuple[Step, ...]:
    """Stored steps, the well-formed ones only: the history is for reading, never for deciding."""
    if not isinstance(raw, list):
        return ()
    out = [Step(s[0], s[1], float(s[2])) for s in raw[-HISTORY_KEPT:]
           if isinstance(s, list) and len(s) == 3 and isinstance(s[0], str) and isinstance(s[1], str)
           and isinstance(s[2], int | float) and not isinstance(s[2], bool)]
    return tuple(out)
