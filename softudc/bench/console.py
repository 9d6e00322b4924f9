"""`softudc bench console`: the web console's server time per page and how soon a change reaches
an open browser page (issue 15's targets: every page <= 300 ms server time, updates in the
browser <= 1 s after the event).

In one run, in a temporary directory (progress on stderr):
  inventory   a Manager with HOSTS simulated hosts (64 vCPUs, 64 GiB each) and FARMS farms of
              VMS_PER_FARM VMs (the demo farm's web tier, spread by the planner), filled directly:
              the hosts report through Manager.host_status (running what they were given, with a
              load sample per host and VM), as softudc/bench/hostsim.py's gatekeepers would
  pages       each main page and the fragments live updates fetch, REQUESTS times through
              FastAPI's TestClient (in process: server time, no network), p50 and p99
  browser     the app served by uvicorn on 127.0.0.1; Debian's Chromium (Playwright, executable_path)
              logged in on a farm's page, its event stream open. EVENTS times: a store change (the
              farm's spec written), then the wall time a MutationObserver in the page first sees the
              new revision in the DOM, minus the time of the write
"""

from __future__ import annotations

import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from softudc.manager.auth import Principal
from softudc.manager.service import Manager, init

HOSTS, FARMS, VMS_PER_FARM = 100, 10, 100
REQUESTS, EVENTS = 40, 20
CHROMIUM = "/usr/bin/chromium"
TARGET_PAGE_MS, TARGET_EVENT_MS = 300.0, 1000.0
ADMIN = Principal("bench", "admin")
DEMO = Path(__file__).parents[2] / "configs" / "farms" / "demo.yaml"
PAGES = {  # name -> path (farm f0; its first web VM)
    "hosts": "/console/", "farms": "/console/farms", "farm": "/console/farms/f0", "vm": "/console/farms/f0/vms/web-0",
    "vnet": "/console/farms/f0/vnets/front", "events": "/console/events", "tasks": "/console/tasks",
    "usage": "/console/usage", "apply": "/console/apply?farm=f0",
    "fragment_hosts": "/console/fragments/hosts", "fragment_farm": "/console/fragments/farms/f0",
    "fragment_vm": "/console/fragments/farms/f0/vms/web-0",
}


def _say(msg: str) -> None:
    print(f"bench console: {msg}", file=sys.stderr, flush=True)


def _descriptor(name: str) -> str:
    text = re.sub(r"\n\s+placementGroup: web-spread", "", DEMO.read_text())
    return text.replace("replicas: 3", f"replicas: {VMS_PER_FARM - 1}", 1).replace("name: demo", f"name: {name}", 1)


def _report(m: Manager, host: str, running: list[str]) -> None:
    now = time.time()
    fig = {"cpu_cores": {"short": 0.3, "long": 0.25}, "memory_mib": {"short": 100.0, "long": 96.0}}
    load = {"at": now, "samples": 6, "vms": {v: fig for v in running},
            "host": {"cpu_cores": {"short": 0.3 * len(running), "long": 0.25 * len(running)},
                     "memory_mib": {"short": 100.0 * len(running), "long": 96.0 * len(running)}}}
    n = int(host[1:])
    m.host_status(host, host, {"vcpus": 64, "memory_mib": 65536, "running": running,
                               "sizes": {v: [1, 128] for v in running}, "underlay": f"10.1.{n // 250}.{n % 250 + 1}",
                               "migration_uri": "qemu+tcp://127.0.0.1/system", "load": load})


def _reports(m: Manager) -> None:
    """Every host reports what it was given (so none is `down`)."""
    where: dict[str, list[str]] = {f"h{i}": [] for i in range(HOSTS)}
    for o in m.store.objects("farm"):
        for i in o.status.get("instances", []):
            where.setdefault(i["host"], []).append(f"{o.name}--{i['name']}")
    for h, running in where.items():
        _report(m, h, sorted(running))


def inventory(state_dir: Path) -> tuple[Manager, str]:
    """The simulated inventory; the Manager and an admin token."""
    token = init(state_dir, ["127.0.0.1"])
    m = Manager(state_dir)
    for i in range(HOSTS):
        m.store.put("host", f"h{i}", {"joined": time.time()})
        _report(m, f"h{i}", [])
        m.note_address(f"h{i}", "127.0.0.1")
    m.settle()
    for f in range(FARMS):
        m.put_farm(ADMIN, f"f{f}", _descriptor(f"f{f}"), None)
        _say(f"farm f{f} applied ({(f + 1) * VMS_PER_FARM} VMs)")
    m.settle(60.0)
    _reports(m)
    m.settle()
    return m, token


def _quantiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {"p50_ms": round(statistics.median(ms), 1), "p99_ms": round(p99, 1)}


def pages(m: Manager, token: str, requests: int = REQUESTS) -> dict[str, dict[str, Any]]:
    """Server time of each page: {name: {p50_ms, p99_ms, kib}}."""
    from fastapi.testclient import TestClient

    from softudc.manager.api import make_app

    out: dict[str, dict[str, Any]] = {}
    with TestClient(make_app(m), base_url="https://testserver", follow_redirects=False) as c:
        assert c.post("/console/login", data={"token": token}).status_code == 303, "login refused"
        for name, path in PAGES.items():
            ms = []
            size = 0
            for _ in range(requests):
                t0 = time.perf_counter()
                r = c.get(path)
                ms.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
                size = len(r.content)
            out[name] = {**_quantiles(ms), "kib": round(size / 1024)}
            _say(f"{name}: {out[name]}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


OBSERVE = """() => { window.__seen = [];
  const note = () => { const t = document.querySelector('#farm p.meta');
    const m = t && t.textContent.match(/revision (\\d+)/); if (m) window.__seen.push([+m[1], Date.now()]); };
  new MutationObserver(note).observe(document.querySelector('#farm'), {childList: true, subtree: true}); }"""
SEEN = "(rev) => { const s = (window.__seen || []).find(x => x[0] >= rev); return s ? s[1] : null; }"


def event_to_browser(m: Manager, token: str, events: int = EVENTS) -> dict[str, Any]:
    """Milliseconds from a store write to the DOM showing it, in Chromium: {p50, p99, samples}."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    from softudc.manager.api import make_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(m), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="bench-console-uvicorn", daemon=True)
    thread.start()
    base = f"http://localhost:{port}/console"  # localhost: a secure context, the Secure cookie is kept
    lat: list[float] = []
    try:
        while not server.started:
            time.sleep(0.05)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(f"{base}/login")
            page.fill("#token", token)
            page.keyboard.press("Enter")
            page.wait_for_url(f"{base}/")
            page.goto(f"{base}/farms/f0")
            page.wait_for_timeout(1500)  # the event stream is open
            page.evaluate(OBSERVE)
            obj = m.store.get("farm", "f0")
            assert obj is not None
            for k in range(events):
                spec = {**obj.spec, "descriptor": obj.spec["descriptor"] + f"\n# bench {k}\n"}
                t0 = time.time()
                rev = m.store.put("farm", "f0", spec)
                page.wait_for_function(f"({SEEN})({rev}) !== null", timeout=10_000)
                lat.append(page.evaluate(SEEN, rev) - t0 * 1000)
                page.wait_for_timeout(300)  # apart, as changes come
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    _say(f"event to browser: {[round(x) for x in lat]}")
    q = _quantiles(lat)
    return {"p50": q["p50_ms"], "p99": q["p99_ms"], "samples": len(lat)}


def run_console(requests: int = REQUESTS, events: int = EVENTS) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="sudc-bench-console-"))
    try:
        t0 = time.monotonic()
        m, token = inventory(d)
        setup = time.monotonic() - t0
        try:
            vms = sum(len(o.status.get("instances", [])) for o in m.store.objects("farm"))
            measured = pages(m, token, requests)
            _reports(m)  # fresh again: the hosts stay up while the browser runs
            e2b: dict[str, Any] = event_to_browser(m, token, events) if Path(CHROMIUM).exists() \
                else {"skipped": f"no {CHROMIUM}"}
        finally:
            m.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    worst = max(v["p99_ms"] for v in measured.values())
    return {"inventory": {"hosts": HOSTS, "farms": FARMS, "vms": vms, "setup_s": round(setup, 1)},
            "requests_per_page": requests, "pages": measured, "event_to_browser_ms": e2b,
            "targets": {"page_p99_ms": TARGET_PAGE_MS, "event_ms": TARGET_EVENT_MS,
                        "pages_met": worst <= TARGET_PAGE_MS,
                        "events_met": e2b.get("p99", TARGET_EVENT_MS + 1) <= TARGET_EVENT_MS}}


def print_console(result: dict[str, Any]) -> None:
    print("inventory:", result["inventory"])
    print(f"{'page':16}{'p50 ms':>10}{'p99 ms':>10}{'KiB':>8}")
    for name, r in result["pages"].items():
        print(f"{name:16}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['kib']:>8}")
    print("event to browser (ms):", result["event_to_browser_ms"])
    print("targets:", result["targets"])
