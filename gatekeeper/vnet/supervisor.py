"""Keeping the forwarding threads alive, and saying so when they are not.

Every receive/forward loop guards each datagram on its own (one bad input costs one drop, counted
by reason). This module is the second line (audit R2): a worker thread that ends anyway, through
a bug outside that guard, is started again after a backoff, the restart is counted, and `health()`
says which workers run, so the gatekeeper never reports itself ready with a dead data plane.

    worker state   meaning                                         in health()
    ------------   ---------------------------------------------   -----------
    running        its thread is alive                             "running"
    restarting     its thread ended; the supervisor restarts it    "restarting"
    dead           its thread ended and nothing will restart it    "dead"
                   (the supervisor itself has stopped or died)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

log = logging.getLogger("gatekeeper.vnet.supervisor")

MIN_BACKOFF = 0.5  # seconds before the first restart of a worker
MAX_BACKOFF = 30.0  # a worker that keeps dying is retried at least this often
STABLE_AFTER = 60.0  # a worker that ran this long before dying starts again at MIN_BACKOFF
CHECK_PERIOD = 0.2  # how often the supervisor looks at its workers
LOG_INTERVAL = 10.0  # at most one log line per (worker, reason) this often


def reason_of(exc: BaseException) -> str:
    """The drop reason an unexpected exception is counted under: its class, which says where to look."""
    return f"error_{type(exc).__name__}"


class RateLimitedLog:
    """Log an unexpected per-datagram error at most once per `interval` per (worker, reason),
    with how many were left out since: a flood of bad datagrams must not become a flood of logs."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic,
                 interval: float = LOG_INTERVAL) -> None:
        self.logger = logger
        self.clock = clock
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def __call__(self, worker: str, reason: str, exc: BaseException) -> bool:
        """Log `exc` unless this (worker, reason) was logged recently; True when it was logged."""
        key = (worker, reason)
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            left_out = self._suppressed.pop(key, 0)
        more = f" ({left_out} more since the last report)" if left_out else ""
        # The traceback is what a developer needs; the drop itself is already counted.
        self.logger.warning("%s: dropped one input after an unexpected %s: %s%s; the worker carries on "
                            "(softudc_dataplane_drops{reason=%r} counts them; please report this with the "
                            "traceback)", worker, type(exc).__name__, exc, more, reason, exc_info=exc)
        return True


class Health(TypedDict):
    workers: dict[str, str]  # worker name -> running | restarting | dead
    restarts: int  # restarts of all workers since the gatekeeper started
    healthy: bool  # every worker runs


@dataclass
class Worker:
    name: str
    target: Callable[[], None]
    thread: threading.Thread | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = MIN_BACKOFF
    restart_at: float | None = None  # set while it is dead and waiting for its restart
    last_error: str | None = None


class Supervisor:
    """Runs named worker threads and restarts any that end before `stop()`, with backoff."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, min_backoff: float = MIN_BACKOFF,
                 max_backoff: float = MAX_BACKOFF, stable_after: float = STABLE_AFTER,
                 period: float = CHECK_PERIOD) -> None:
        self.clock = clock
        self.min_backoff, self.max_backoff, self.stable_after = min_backoff, max_backoff, stable_after
        self.period = period
        self.workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching (workers added before or after this start at once)."""
        self._thread = threading.Thread(target=self._watch, name="fwd-supervisor", daemon=True)
        self._thread.start()

    def add(self, name: str, target: Callable[[], None]) -> None:
        with self._lock:
            worker = self.workers[name] = Worker(name, target, backoff=self.min_backoff)
            self._launch(worker)

    def halt(self) -> None:
        """No more restarts from now on: the workers are about to be told to return."""
        self._stop.set()

    def stop(self, timeout: float = 2.0) -> None:
        """No more restarts; wait up to `timeout` for every worker (the caller made them return)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for w in list(self.workers.values()):
            if w.thread is not None:
                w.thread.join(timeout)

    # --- watching -----------------------------------------------------------------------------

    def _launch(self, worker: Worker) -> None:
        worker.thread = threading.Thread(target=self._run, args=(worker,), name=worker.name, daemon=True)
        worker.started, worker.restart_at = self.clock(), None
        worker.thread.start()

    def _run(self, worker: Worker) -> None:
        try:
            worker.target()
        except BaseException as e:  # the thread ends either way; record why for health() and the log
            worker.last_error = f"{type(e).__name__}: {e}"
            if not self._stop.is_set():
                log.exception("worker %s died; the supervisor restarts it", worker.name)
            return
        if not self._stop.is_set():
            worker.last_error = "returned before stop"
            log.error("worker %s ended before the gatekeeper stopped; the supervisor restarts it", worker.name)

    def _watch(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.check()
            except Exception:  # never let the watcher itself die of a bug
                log.exception("supervisor check failed; trying again in %.1f s", self.period)

    def check(self) -> list[str]:
        """One pass over the workers: schedule dead ones for a restart, restart those due.
        Returns the names restarted in this pass."""
        restarted = []
        now = self.clock()
        with self._lock:
            for w in self.workers.values():
                if self._stop.is_set() or (w.thread is not None and w.thread.is_alive()):
                    continue
                if w.restart_at is None:
                    if now - w.started >= self.stable_after:
                        w.backoff = self.min_backoff  # it had been fine for a long time: retry soon
                    w.restart_at = now + w.backoff
                    w.backoff = min(w.backoff * 2, self.max_backoff)
                    continue
                if now >= w.restart_at:
                    w.restarts += 1
                    self._launch(w)
                    restarted.append(w.name)
                    log.warning("worker %s restarted (restart %d; it ended with %s)", w.name, w.restarts,
                                w.last_error)
        return restarted

    # --- reporting ----------------------------------------------------------------------------

    def state_of(self, worker: Worker) -> str:
        if worker.thread is not None and worker.thread.is_alive():
            return "running"
        watching = self._thread is not None and self._thread.is_alive() and not self._stop.is_set()
        return "restarting" if watching else "dead"

    def health(self) -> Health:
        """What the host report and the local status show: each worker's state, restarts so far,
        and whether every worker runs."""
        with self._lock:
            workers = {name: self.state_of(w) for name, w in sorted(self.workers.items())}
            restarts = sum(w.restarts for w in self.workers.values())
        return {"workers": workers, "restarts": restarts,
                "healthy": all(s == "running" for s in workers.values())}

    def restarts(self) -> dict[str, int]:
        with self._lock:
            return {name: w.restarts for name, w in self.workers.items()}
