"""A migration as one state table: what the manager, the destination, the source's migration job
and libvirt's view (as the gatekeepers report it) say, mapped onto one vocabulary. Pure: reports
and the time come in, the instance's `migrating` record and the steps taken go out; the record is
stored in the farm's status, so a restarted manager resumes every move where it stood.

Live (the source's gatekeeper migrates peer to peer)::

    requested ──prepared──► prepared ──copying──► copying       (copying again: progress)
    requested ──stall──► stalled                                (the destination never prepared)
    requested ──cancel──► cancelled
    prepared, copying ──stall──► silent                         (handed over, no job for MIGRATION_STALL_S)
    prepared, copying, silent ──completed|failed|unknown──► completed | failed | unknown
    silent, failed, unknown ──copying──► copying                (the source (re)started the job)
    prepared, copying, silent, completed, failed, unknown ──arrived──► done
    completed ──arrived_stopped──► done                         (it crashed or stopped on arrival)
    stalled, silent, completed, failed, unknown ──holds_none──► aborted

  - `arrived`: the destination runs it, and the source says completed or no longer runs it. Only
    from the states after `prepared` (HANDED_OVER): before that the source was never handed the
    move, so a copy at the destination is not this migration's.
  - `holds_none`: a destination report built after the outcome (see `fresh`) says it holds no
    such domain in any state. Only that ends a move that did not arrive (AWAITING): nothing that
    could leave a second copy running is concluded from silence (audit R12).
  - `arrived_stopped`: the source said completed (libvirt handed the VM over and undefined it
    there), runs it nowhere, and a fresh destination report holds the domain but does not run it:
    the guest stopped or crashed on arrival (seen under TCG: a panic in its first ticks there). The
    only copy is the destination's, so the move is over and the destination starts it again;
    without this the instance waited for an arrival that could never come.
  - `cancel`: only from `requested`; later the source has been handed the move (API: 409).

Cold (stopped here, started there)::

    stopping ──stopped──► done         (the source freshly reports holding no such domain)
    stopping ──timeout──► aborted      (not confirmed within COLD_MOVE_TIMEOUT_S: it stays)
    stopping ──cancel──► cancelled

Events a state does not list are ignored when they come from reports (news that does not apply,
e.g. a late `prepared` after a stall) and refused when they come from the API (`cancel`).
Final states are not stored: the record goes, and the farm's events say how it ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from softudc.manager.workflow import Table, Workflow

MIGRATION_STALL_S = 600.0  # a requested live migration the source never started: settled after this
COLD_MOVE_TIMEOUT_S = 300.0  # a cold move whose source never confirmed the VM stopped: given up after this

# Events. The manager's: request (begin), cancel (API), stall and timeout (the clock).
REQUEST, CANCEL, STALL, TIMEOUT = "request", "cancel", "stall", "timeout"
# The destination's: VNETs made; runs it; freshly holds it, not running; freshly holds no such domain.
PREPARED, ARRIVED, ARRIVED_STOPPED, HOLDS_NONE = "prepared", "arrived", "arrived_stopped", "holds_none"
# The source's: its migration job (live), its fresh word that the domain is gone (cold).
COPYING, COMPLETED, FAILED, UNKNOWN, STOPPED = "copying", "completed", "failed", "unknown", "stopped"

# The host's job vocabulary (hoststate.JobState) onto events: a job that is starting, copying or
# was recovered after a gatekeeper restart is under way; the others are its end.
SOURCE_JOB_EVENTS: dict[str, str] = {"starting": COPYING, "copying": COPYING, "recovered": COPYING,
                     "completed": COMPLETED, "failed": FAILED, "unknown": UNKNOWN}

_JOB = {COPYING: "copying", COMPLETED: "completed", FAILED: "failed", UNKNOWN: "unknown"}
_SETTLE = {ARRIVED: "done", HOLDS_NONE: "aborted"}
LIVE = Table("live migration", "requested", {
    "requested": {PREPARED: "prepared", STALL: "stalled", CANCEL: "cancelled"},
    "prepared": {**_JOB, STALL: "silent", ARRIVED: "done"},
    "copying": {**_JOB, STALL: "silent", ARRIVED: "done"},
    "silent": {**_JOB, **_SETTLE},  # handed over, but the source reports no job
    "completed": {COMPLETED: "completed", ARRIVED_STOPPED: "done", **_SETTLE},
    "failed": {FAILED: "failed", COPYING: "copying", **_SETTLE},  # copying: the source restarted it
    "unknown": {UNKNOWN: "unknown", COPYING: "copying", **_SETTLE},
    "stalled": {HOLDS_NONE: "aborted"},  # the destination never prepared: the source has nothing
}, frozenset({"done", "aborted", "cancelled"}))
COLD = Table("cold move", "stopping", {
    "stopping": {STOPPED: "done", TIMEOUT: "aborted", CANCEL: "cancelled"},
}, frozenset({"done", "aborted", "cancelled"}))

HANDED_OVER = frozenset({"prepared", "copying", "silent", "completed", "failed", "unknown"})  # source: migrate_to
AWAITING = frozenset({"silent", "completed", "failed", "unknown", "stalled"})  # the destination's word settles it


@dataclass(frozen=True)
class Transition:
    before: str
    event: str
    after: str


@dataclass(frozen=True)
class LiveView:
    """What the reports say of one live move (libvirt's view, as the gatekeepers report it)."""

    job: Mapping[str, Any]  # the source's job for this attempt, {} when it reports none
    dest_prepared: bool  # the destination made the VNETs
    dest_runs: bool  # the destination runs the domain
    src_runs: bool  # the source runs it


def begin(to: str, attempt: str, now: float, uri: str | None) -> dict[str, Any]:
    """The `migrating` record of a new move: live when there is a URI to dial, cold otherwise."""
    wf = Workflow.begin(LIVE if uri else COLD, attempt, now)
    return {"to": to, **wf.record(), **({"uri": uri} if uri else {"cold": True})}


def load(record: Mapping[str, Any], now: float) -> Workflow:
    """The workflow a stored `migrating` record holds. Records written before the table (no
    `steps`; their `state` was the job's, with `prepared` and `outcome` beside it) and damaged
    ones are read as what their flags meant."""
    table = COLD if record.get("cold") else LIVE
    try:
        if "steps" in record:
            return Workflow.load(table, record)
    except ValueError:
        pass
    since = record.get("since", now)
    return Workflow.load(table, {**record, "state": _legacy_state(record), "attempt": str(record.get("attempt")),
                                 "since": since if isinstance(since, int | float) else now})


def _legacy_state(record: Mapping[str, Any]) -> str:
    if record.get("cold"):
        return "stopping"
    handed = bool(record.get("prepared"))
    outcome = record.get("outcome")
    if isinstance(outcome, Mapping):
        ended = outcome.get("state")
        return str(ended) if ended in ("completed", "failed", "unknown") else "silent" if handed else "stalled"
    if handed:
        return "copying" if record.get("state") in ("starting", "copying") else "prepared"
    return "requested"


def save(record: Mapping[str, Any], wf: Workflow) -> dict[str, Any]:
    """`record` with the workflow's state and steps. A live one keeps `prepared` (the source has
    been handed the move: what the desired state's `migrate_to` is built from) as the table says."""
    out = {**{k: v for k, v in record.items() if k not in ("prepared", "outcome")}, **wf.record()}
    return out if record.get("cold") else {**out, "prepared": wf.state in HANDED_OVER}


def handed_over(record: Mapping[str, Any]) -> bool:
    """The source has been handed the move (its desired state carries `migrate_to`)."""
    return not record.get("cold") and load(record, 0.0).state in HANDED_OVER


def cancel(record: Mapping[str, Any], now: float) -> Workflow:
    """The move cancelled; workflow.Refused once that is no longer safe."""
    return load(record, now).fire(CANCEL, now)


def holds_none(report: Mapping[str, Any], name: str) -> bool:
    """The host says it has no domain `name` at all: `sizes` lists every managed domain there in any
    state (running, paused for an incoming migration, shut off but defined). No `sizes`, no evidence."""
    sizes = report.get("sizes")
    return isinstance(sizes, dict) and name not in sizes and name not in report.get("running", [])


def holds_stopped(report: Mapping[str, Any], name: str) -> bool:
    """The host holds domain `name` (defined, in `sizes`) but does not run it."""
    sizes = report.get("sizes")
    return isinstance(sizes, dict) and name in sizes and name not in report.get("running", [])


def fresh(marks: dict[str, Any], key: str, report: Mapping[str, Any]) -> bool:
    """True once `report` was built after the first time this was asked for `key`. A report stored
    after that moment may have been built before it, so freshness is proven without comparing
    clocks: the first report stored after the mark may be old, but the next one was built after
    the host got the answer to the first (a gatekeeper reports, fetches, converges, reports).
    `marks` (kept in the `migrating` record) remembers [report seen then, the next one]."""
    at = report.get("reported")
    if not isinstance(at, int | float):
        return False
    base, after = marks.get(key) or (None, None)
    if base is None:
        marks[key] = [at, None]
        return False
    if after is None:
        if at > base:
            marks[key] = [base, at]
        return False
    return bool(at > after)


def job_event(job: Mapping[str, Any]) -> str | None:
    """The event a source's job record (as its report carries it) stands for; None for no job or
    a state outside the vocabulary (which the manager's report check refuses anyway)."""
    state = job.get("state")
    return SOURCE_JOB_EVENTS.get(state) if isinstance(state, str) else None


def live_events(view: LiveView, age: float) -> list[str]:
    """The news in the reports, in the order the table takes it: an arrival first (it settles
    everything), then the source's job, else the destination's preparation, then the clock."""
    events = []
    job = job_event(view.job)
    if view.dest_runs and (job == COMPLETED or not view.src_runs):
        events.append(ARRIVED)
    if job:
        events.append(job)
    elif view.dest_prepared:
        events.append(PREPARED)
    if not view.job and age > MIGRATION_STALL_S:
        events.append(STALL)
    return events


class _Run:
    """A workflow stepped through events, remembering the transitions taken."""

    def __init__(self, wf: Workflow, now: float) -> None:
        self.wf, self.now, self.taken = wf, now, list[Transition]()

    def offer(self, event: str) -> None:
        after = self.wf.offer(event, self.now)
        if after.state != self.wf.state:
            self.taken.append(Transition(self.wf.state, event, after.state))
        self.wf = after


def observe_live(record: Mapping[str, Any], view: LiveView, dest: Mapping[str, Any], name: str,
                 now: float) -> tuple[dict[str, Any], Workflow, list[Transition]]:
    """One look at a live move: its record (progress, error, freshness marks) and workflow after
    the reports, and the transitions taken. `dest` is the destination's report."""
    out = {**record, "marks": {k: list(v) for k, v in (record.get("marks") or {}).items()}}
    run = _Run(load(record, now), now)
    for event in live_events(view, now - run.wf.since):
        run.offer(event)
    if view.job:
        out.update({k: view.job[k] for k in ("data_total", "data_processed") if k in view.job})
        if run.wf.state in ("failed", "unknown") and view.job.get("error") is not None:
            out["error"] = view.job["error"]
    # A source still copying this attempt: whatever the destination says now is not its last word.
    if run.wf.state in AWAITING and job_event(view.job) != COPYING and fresh(out["marks"], "destination", dest):
        if holds_none(dest, name):
            run.offer(HOLDS_NONE)
        elif run.wf.state == "completed" and not view.src_runs and holds_stopped(dest, name):
            run.offer(ARRIVED_STOPPED)
    return out, run.wf, run.taken


def observe_cold(record: Mapping[str, Any], runs_anywhere: bool, src: Mapping[str, Any], name: str,
                 now: float) -> tuple[dict[str, Any], Workflow, list[Transition]]:
    """One look at a cold move. It completes once the source has reported, freshly, that it holds
    no such domain: only then may the destination start it (a stale report, or none from a silent
    source, proves nothing). Until then giving up is always safe: the destination has not started it."""
    out = {**record, "marks": {k: list(v) for k, v in (record.get("marks") or {}).items()}}
    run = _Run(load(record, now), now)
    if not runs_anywhere and fresh(out["marks"], "source", src) and holds_none(src, name):
        run.offer(STOPPED)
    elif now - run.wf.since > COLD_MOVE_TIMEOUT_S:
        run.offer(TIMEOUT)
    return out, run.wf, run.taken
