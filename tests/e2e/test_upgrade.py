"""Rolling host maintenance on a real lab (3 hosts with libvirtd, a manager, the lab power driver, two
tiny guests kept apart by anti-affinity): `softudc host upgrade --hosts h1,h2,h3 --max-unavailable 1`
drains each host, runs the script in its namespace, power-cycles it once, waits for its report and
undrains it, while a pinger per guest keeps answering (no gap longer than one migration's
blackout); then a script that fails stops a rollout with its host left drained and not cycled, and
a manager restarted while a host's script runs continues that rollout to its end.

The pingers live in a lab endpoint, which must sit on a host holding a guest (a VNET's members are
the hosts with its instances) and not on the host being cycled: the test moves it off the host
under way, and the script of each host waits until it has (the marker file `moved-HOST`)."""

from __future__ import annotations

import fcntl
import functools
import itertools
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.cli.main import main as cli
from softudc.lab import Lab, load_lab
from softudc.lab.endpoint import add_endpoint, move_endpoint
from softudc.lab.manager import call, start_manager
from softudc.lab.shell import stop_pid
from softudc.manager.rollout import ACTIVE
from tests.e2e.conftest import wait_until
from tests.e2e.test_drain import FARM, answers, get, instances, running, three_hosts

pytestmark = [pytest.mark.balance, pytest.mark.vm]
INTERVAL = 0.1  # between pings
MAX_GAP_S = 5.0  # one live migration's blackout under TCG, VARP relearning included, with margin
SCRIPT = """#!/bin/sh
# the test's upgrade: wait until the pingers left this host, note where it ran, maybe fail
for i in $(seq 1 600); do [ -e {dir}/moved-$1 ] && break; sleep 0.1; done
echo "$(ip netns identify $$) $1 $2 $SOFTUDC_HOST $SOFTUDC_HOST_ADDRESS" > {dir}/ran-$1
exit {code}
"""


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    yield from three_hosts(request, "up")


def rollout(lab: Lab, name: str) -> dict[str, Any]:
    body: dict[str, Any] = get(lab, f"/v1/rollouts/{name}")
    return body


def pid(lab: Lab, host: str) -> int | None:
    return load_lab(lab.spec.name, lab.state_dir).host(host).pid  # as the power driver recorded it


def keep_pingers_off(lab: Lab, name: str, marks: Path) -> None:
    """Until the rollout ends: the endpoint off the host under way, onto one holding a guest;
    then the marker that lets that host's script go on."""
    while (r := rollout(lab, name))["state"] == "running":
        busy = [h for h in r["hosts"] if r["progress"][h]["phase"] in ACTIVE]
        ep = load_lab(lab.spec.name, lab.state_dir).endpoints["adm"]
        if busy and ep.host == busy[0]:
            holding = {i["host"] for i in instances(lab).values() if not i.get("migrating")} - {busy[0]}
            with open(lab.dir / "power.lock", "w") as lock:  # the lab's state as the power driver left it
                fcntl.flock(lock, fcntl.LOCK_EX)
                move_endpoint(load_lab(lab.spec.name, lab.state_dir), "adm", sorted(holding)[0])
        if busy and load_lab(lab.spec.name, lab.state_dir).endpoints["adm"].host != busy[0]:
            (marks / f"moved-{busy[0]}").touch()
        time.sleep(0.2)


def booted(console: Path) -> bool:
    return console.exists() and "GUEST_READY" in console.read_text(errors="replace")


def gaps(out: str) -> tuple[float, int]:
    """The longest gap between replies (s) and the replies."""
    seqs = sorted(int(s) for s in re.findall(r"icmp_seq=(\d+) ttl", out))
    return max((b - a for a, b in itertools.pairwise(seqs)), default=0) * INTERVAL, len(seqs)


def test_a_rolling_upgrade_cycles_each_host_once_while_every_guest_answers(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(lab, "PUT", "/v1/farms/dr", FARM)[0] == 200
    assert wait_until(lambda: get(lab, "/v1/farms/dr")["status"]["conditions"]["Ready"], timeout=120, interval=1)
    placed = {n: i["host"] for n, i in instances(lab).items()}
    for n, h in placed.items():  # migrate booted guests only
        console = lab.dir / h / "consoles" / f"dr--{n}.log"
        assert wait_until(functools.partial(booted, console), timeout=120, interval=1), f"{n} did not boot"
    add_endpoint(lab, "adm", placed["a-0"], get(lab, "/v1/farms/dr")["status"]["vnet_ids"]["net"], "10.8.0.200/24")
    ns = lab.endpoints["adm"].netns
    answers(lab, ns)
    marks = Path(tempfile.mkdtemp(prefix="sudcupm"))
    script = marks / "upgrade.sh"
    script.write_text(SCRIPT.format(dir=marks, code=0))
    pids = {h.name: pid(lab, h.name) for h in lab.hosts}
    pingers = {n: subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-i", str(INTERVAL),
                                    i["addresses"]["net"]], stdout=subprocess.PIPE, text=True)
               for n, i in instances(lab).items()}
    t = time.monotonic()
    try:
        cli(["--state-dir", lab.state_dir, "host", "upgrade", "--hosts", "h1,h2,h3", "--run", str(script),
             "--max-unavailable", "1", "--name", "up1", "--no-wait", "--lab", lab.spec.name])
        keep_pingers_off(lab, "up1", marks)
        took = time.monotonic() - t
        time.sleep(2)  # the last host's undrain: the guests stay put, the pingers go on
    finally:
        for p in pingers.values():
            p.terminate()
    r = rollout(lab, "up1")
    assert r["state"] == "done", r
    measured = {n: gaps(p.communicate(timeout=10)[0]) for n, p in pingers.items()}
    with capsys.disabled():
        print(f"\nmeasured: rollout of 3 hosts {took:.1f} s; longest ping gap per guest: "
              + ", ".join(f"{n} {g:.1f} s ({k} replies)" for n, (g, k) in measured.items()))
    for n, (gap, replies) in measured.items():
        assert replies > 0.6 * took / INTERVAL, f"{n}: only {replies} replies in {took:.0f} s"
        assert gap <= MAX_GAP_S, f"{n} did not answer for {gap:.1f} s"
    for h in lab.hosts:
        ran = (marks / f"ran-{h.name}").read_text().split()
        assert ran[0] == h.netns and ran[1] == ran[3] == h.name and ran[2] == ran[4], ran  # in its namespace
        assert pid(lab, h.name) not in (None, pids[h.name]), f"{h.name} was not power-cycled"
        msgs = [e["message"] for e in get(lab, f"/v1/events?kind=host&name={h.name}") if e["type"] == "Rollout"]
        assert sum("cycling -> rejoining" in m for m in msgs) == 1, msgs  # cycled once
        assert next(x for x in get(lab, "/v1/hosts") if x["name"] == h.name)["state"] == "ready"
    assert running(lab) == {f"dr--{n}": [i["host"]] for n, i in instances(lab).items()}  # each runs once
    answers(lab, ns)
    capsys.readouterr()
    cli(["--state-dir", lab.state_dir, "host", "upgrade-status", "up1", "--lab", lab.spec.name])
    assert capsys.readouterr().out.splitlines() == ["rollout up1: done: all 3 host(s) done", "  h1: done",
                                                    "  h2: done", "  h3: done"]
    shutil.rmtree(marks, ignore_errors=True)


def test_a_failing_script_stops_the_rollout_with_that_host_drained(lab: Lab) -> None:
    marks = Path(tempfile.mkdtemp(prefix="sudcupm"))
    script = marks / "fail.sh"
    script.write_text(SCRIPT.format(dir=marks, code=7))
    host = next(iter({i["host"] for i in instances(lab).values()}))  # one holding a guest
    (marks / f"moved-{host}").touch()
    before = pid(lab, host)
    with pytest.raises(SystemExit):
        cli(["--state-dir", lab.state_dir, "host", "upgrade", "--hosts", host, "--run", str(script), "--name", "up2",
             "--lab", lab.spec.name])
    r = rollout(lab, "up2")
    assert r["state"] == "failed" and r["reason"].startswith(f"{host}: script: script fail.sh exited 7"), r
    assert get(lab, f"/v1/hosts/{host}/drain")["state"] == "maintenance"  # left drained
    assert host not in {i["host"] for i in instances(lab).values()}
    assert pid(lab, host) == before  # not cycled
    assert call(lab, "POST", f"/v1/hosts/{host}/undrain", "{}")[0] == 200
    shutil.rmtree(marks, ignore_errors=True)


def test_a_manager_restart_in_the_middle_of_a_rollout_continues_it(lab: Lab) -> None:
    marks = Path(tempfile.mkdtemp(prefix="sudcupm"))
    script = marks / "upgrade.sh"
    script.write_text(SCRIPT.format(dir=marks, code=0))
    empty = next(h.name for h in lab.hosts if h.name not in {i["host"] for i in instances(lab).values()})
    before = pid(lab, empty)
    cli(["--state-dir", lab.state_dir, "host", "upgrade", "--hosts", empty, "--run", str(script), "--name", "up3",
         "--no-wait", "--lab", lab.spec.name])
    assert wait_until(lambda: rollout(lab, "up3")["progress"][empty]["phase"] == "script", timeout=60, interval=0.5)
    with open(lab.dir / "power.lock", "w") as lock:  # the lab's state as the power driver left it
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = load_lab(lab.spec.name, lab.state_dir)
        assert now.manager_pid
        stop_pid(now.manager_pid)  # its script goes on, orphaned, waiting for the marker
        now.manager_pid, _ = start_manager(now, fresh=False)
        now.save()
    (marks / f"moved-{empty}").touch()
    assert wait_until(lambda: rollout(lab, "up3")["state"] != "running", timeout=90, interval=1), rollout(lab, "up3")
    r = rollout(lab, "up3")
    assert r["state"] == "done", r
    assert pid(lab, empty) not in (None, before)  # cycled, by the restarted manager
    msgs = [e["message"] for e in get(lab, f"/v1/events?kind=host&name={empty}") if e["type"] == "Rollout"]
    assert sum("up3: cycling -> rejoining" in m for m in msgs) == 1, msgs
    shutil.rmtree(marks, ignore_errors=True)
