"""The desired-state cache per generation and the long polls: woken only when their host's etag
moved, from another thread, and answered at their deadline otherwise."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from softudc.manager.longpoll import JITTER, MAX_WAIT_S, LongPolls, etag


class World:
    """What the store would say each host should run; counts how often it is asked."""

    def __init__(self) -> None:
        self.vms: dict[str, list[str]] = {"h1": [], "h2": []}
        self.asked: Counter[str] = Counter()

    def desired(self, host: str) -> dict[str, Any]:
        self.asked[host] += 1
        return {"vnets": [], "vms": list(self.vms[host])}


def test_the_desired_state_is_computed_once_per_generation() -> None:
    world = World()
    polls = LongPolls(world.desired)
    first = polls.current("h1")
    assert polls.current("h1") == first and world.asked["h1"] == 1  # reused within the generation
    assert first["etag"] == etag({"vnets": [], "vms": []})
    world.vms["h1"] = ["f--a-0"]
    assert polls.current("h1") == first  # the store moved, but no pass has ended: still the cached one
    polls.new_generation()
    assert polls.current("h1")["vms"] == ["f--a-0"] and world.asked["h1"] == 2  # dropped after


def test_a_new_generation_recomputes_only_waiting_hosts_and_names_those_that_moved() -> None:
    world = World()
    polls = LongPolls(world.desired)
    key1, key2 = polls._add("h1", lambda: None), polls._add("h2", lambda: None)
    polls.current("h1"), polls.current("h2")
    world.vms["h2"] = ["f--a-0"]
    assert polls.new_generation() == ["h2"]
    polls._remove("h1", key1)
    polls._remove("h2", key2)
    assert polls.waiting() == 0
    asked = dict(world.asked)
    assert polls.new_generation() == [] and dict(world.asked) == asked  # nobody waits: nothing computed


def test_a_new_generation_also_computes_the_hosts_that_asked_in_the_one_before() -> None:
    """A host between its report and its next poll when a pass ends finds its state computed (in
    the pass's one read), not a miss of its own; a host that stopped asking is not computed again."""
    world = World()
    many: list[list[str]] = []

    def compute_many(hosts: list[str]) -> dict[str, Any]:
        many.append(hosts)
        return {h: world.desired(h) for h in hosts}

    polls = LongPolls(world.desired, compute_many)
    polls.current("h1")  # asked, not waiting
    assert polls.new_generation() == [] and many == [["h1"]]
    asked = dict(world.asked)
    polls.current("h1")
    assert dict(world.asked) == asked  # a hit
    polls.new_generation()
    polls.new_generation()  # nobody asked in the generation before: nothing computed
    assert many == [["h1"], ["h1"]]


def test_wait_async_wakes_only_its_host_and_holds_no_thread() -> None:
    world = World()
    polls = LongPolls(world.desired)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[int]]:
        since = {h: polls.current(h)["etag"] for h in ("h1", "h2")}
        one = asyncio.create_task(polls.wait_async("h1", since["h1"], 30))
        two = asyncio.create_task(polls.wait_async("h2", since["h2"], 0.3))
        while polls.waiting() < 2:
            await asyncio.sleep(0.01)
        threads = [threading.active_count()]
        world.vms["h1"] = ["f--a-0"]

        def controller_pass() -> None:  # as the controller loop does, from its own thread
            polls.new_generation()

        worker = threading.Thread(target=controller_pass)
        worker.start()
        worker.join()
        got_one = await asyncio.wait_for(one, 10)  # woken, long before its 30 s
        assert not two.done()  # h2's state did not move: it sleeps on
        got_two = await two  # and answers at its deadline, unchanged
        return got_one, got_two, threads

    got_one, got_two, threads = asyncio.run(scenario())
    assert got_one["vms"] == ["f--a-0"] and got_one["etag"] != etag({"vnets": [], "vms": []})
    assert got_two["etag"] == etag({"vnets": [], "vms": []}) and got_two["vms"] == []
    assert threads[0] <= threading.active_count() + 8  # two waiters cost no thread each (the pool is shared)
    assert polls.waiting() == 0


def test_wait_async_answers_at_once_when_the_etag_differs_and_bounds_the_wait() -> None:
    polls = LongPolls(World().desired)
    got = asyncio.run(polls.wait_async("h1", "not-this", 30))
    assert got["etag"] == polls.current("h1")["etag"]
    got = asyncio.run(polls.wait_async("h1", got["etag"], -5))  # no negative waits: answered now
    assert got["vms"] == []
    assert MAX_WAIT_S <= 60


def test_many_async_waiters_on_one_host_all_wake_once() -> None:
    world = World()
    polls = LongPolls(world.desired)

    calls: list[int] = []  # into the loop from the waking thread

    async def scenario() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return real(*args, **kwargs)

        since = polls.current("h1")["etag"]
        tasks = [asyncio.create_task(polls.wait_async("h1", since, 30)) for _ in range(200)]
        while polls.waiting() < 200:
            await asyncio.sleep(0.01)
        world.vms["h1"] = ["f--a-0"]
        loop.call_soon_threadsafe = counted  # type: ignore[method-assign, assignment]
        await asyncio.to_thread(polls.new_generation)
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
        return await asyncio.wait_for(asyncio.gather(*tasks), 20)

    got = asyncio.run(scenario())
    assert {g["etag"] for g in got} == {polls.current("h1")["etag"]}
    assert world.asked["h1"] <= 3  # 200 waiters, one state: computed once per generation (+1 racing)
    assert len(calls) <= 2  # the 200 woken by one call into their loop (+ to_thread's own answer)


def test_a_wait_on_another_threads_loop_wakes_on_its_host_and_times_out_otherwise() -> None:
    world = World()
    polls = LongPolls(world.desired)
    since = polls.current("h1")["etag"]
    assert asyncio.run(polls.wait_async("h1", since, 0.05))["etag"] == since  # nothing moved: the deadline answers
    result: list[dict[str, Any]] = []
    waiter = threading.Thread(target=lambda: result.append(asyncio.run(polls.wait_async("h1", since, 30))))
    waiter.start()
    while polls.waiting() < 1:
        threading.Event().wait(0.01)
    world.vms["h1"] = ["f--a-0"]
    polls.new_generation()
    waiter.join(10)
    assert not waiter.is_alive() and result[0]["vms"] == ["f--a-0"]


def test_a_new_generation_reads_the_store_once_for_all_waiting_hosts() -> None:
    world = World()
    batches: list[list[str]] = []

    def many(hosts: list[str]) -> dict[str, dict[str, Any]]:
        batches.append(list(hosts))
        return {h: world.desired(h) for h in hosts}

    polls = LongPolls(world.desired, many)
    world.vms["h3"] = []
    for h in ("h1", "h2", "h3"):
        polls._add(h, lambda: None)
    world.vms["h2"] = ["f--a-0"]
    assert polls.new_generation() == ["h1", "h2", "h3"]  # none was cached before: all "moved"
    assert batches == [["h1", "h2", "h3"]] and polls.current("h2")["vms"] == ["f--a-0"]
    assert sum(world.asked.values()) == 3  # one batch, then the cache answers


def test_a_poll_with_nothing_new_is_answered_within_its_wait_less_the_jitter() -> None:
    """Deadlines spread over [wait * (1 - JITTER), wait]: polls that began together end apart."""
    polls = LongPolls(World().desired)
    since = polls.current("h1")["etag"]

    async def one() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert (await polls.wait_async("h1", since, 0.4))["etag"] == since
        return loop.time() - t0

    async def together() -> list[float]:
        return list(await asyncio.gather(*(one() for _ in range(40))))

    took = asyncio.run(together())
    assert all(0.4 * (1 - JITTER) - 0.01 <= t <= 0.4 + 0.2 for t in took)
    assert max(took) - min(took) > 0.4 * JITTER / 4  # apart, not all at once
