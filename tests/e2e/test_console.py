"""The web console in a real browser (issue 15): Playwright drives Debian's Chromium against a
lab's manager. Chromium runs in the lab's management namespace, where the manager listens on
10.99.0.1:8443: Playwright starts it through a wrapper (`ip netns exec NS chromium ...`) and talks
to it over a pipe, so no port is forwarded. Three hosts with libvirtd (tiny TCG guests): the demo
farm's db-0 is migrated from its page (the move shown, the farm page's topology following it with
no reload), then its new host is drained from the hosts page (the drain's progress, maintenance,
undrain). Screenshots of every page go to $SOFTUDC_ARTIFACTS/console (default
/tmp/softudc-artifacts/console)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from softudc.lab import Lab
from softudc.lab.manager import MANAGER_ADDR, admin_token, call, manager_dir
from softudc.manager.auth import TokenStore
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.console

ROOT = Path(__file__).parents[2]
# two hosts: web's anti-affinity (one per host) allows two replicas
DEMO = (ROOT / "configs" / "farms" / "demo.yaml").read_text().replace("replicas: 3", "replicas: 2", 1)
BASE = f"https://{MANAGER_ADDR}:8443/console"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("SOFTUDC_ARTIFACTS", "/tmp/softudc-artifacts")) / "console"


SAW_MOVING = """() => { window.sudcSawMoving = false;
  new MutationObserver(() => {
    if (document.querySelector('g.vm.moving[data-vm="db-0"]')) window.sudcSawMoving = true; })
    .observe(document.querySelector('#farm'), {childList: true, subtree: true}); }"""


def _wrapper(ns: str, where: Path) -> str:
    """A browser 'executable' that runs Chromium in namespace `ns` (Playwright passes its flags)."""
    script = where / "chromium-in-ns"
    script.write_text(f"#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def test_console_in_a_browser(make_lab: Callable[..., Lab]) -> None:
    if not Path(CHROMIUM).exists() or os.geteuid() != 0:
        pytest.skip("needs root and Debian's chromium (make bootstrap)")
    assert (ROOT / "softudc/console/static/vendor/htmx.min.js").exists(), "run scripts/build-console.sh"
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lab = make_lab(hosts=3, manager=True, vms=True)
    viewer = TokenStore(manager_dir(lab) / "tokens.json").create("eve", "viewer", ["demo"])
    tmp = Path(tempfile.mkdtemp(prefix="sudc-console-"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_wrapper(lab.mgmt_ns, tmp), args=FLAGS, headless=True)
            _as_admin(browser.new_context(ignore_https_errors=True, viewport={"width": 1366, "height": 768}),
                      admin_token(lab), lab)
            _as_viewer(browser.new_context(ignore_https_errors=True, viewport={"width": 1366, "height": 768}),
                       viewer)
            browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _login(page: Page, token: str) -> None:
    page.goto(f"{BASE}/login")
    page.fill("#token", token)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{BASE}/")


def _as_admin(ctx: BrowserContext, token: str, lab: Lab) -> None:
    page = ctx.new_page()
    page.goto(f"{BASE}/")
    expect(page).to_have_url(f"{BASE}/login")  # no session: the login page
    page.screenshot(path=str(ARTIFACTS / "login.png"))
    _login(page, token)
    for h in ("h1", "h2", "h3"):
        expect(page.locator(f'tr[data-host="{h}"]')).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "hosts.png"))

    page.goto(f"{BASE}/apply")
    page.fill("#name", "demo")
    page.fill("#descriptor", DEMO.replace("replicas: 2", "replicas: many", 1))
    page.click("button:has-text('Apply')")
    bad = page.locator("#line-21.bad .problem")
    expect(bad).to_contain_text("farms/demo:21:17: spec.vms[0].replicas")
    page.screenshot(path=str(ARTIFACTS / "apply-error.png"), full_page=True)
    page.fill("#descriptor", DEMO)
    page.click("button:has-text('Apply')")
    page.wait_for_url(f"{BASE}/farms/demo")
    expect(page.locator('tr[data-instance="web-1"]')).to_be_visible()
    expect(page.locator("button:has-text('Delete farm')")).to_be_visible()

    # live: a change made elsewhere (the API) shows without a reload
    page.evaluate("window.sudcKept = 1")  # gone if the page reloads
    status, _ = call(lab, "PUT", "/v1/farms/demo", DEMO.replace("replicas: 2", "replicas: 1", 1))
    assert status == 200
    expect(page.locator('tr[data-instance="web-1"]')).to_have_count(0, timeout=5000)
    assert page.evaluate("window.sudcKept") == 1  # swapped in by the event stream, no reload
    expect(page.locator('g.vm[data-vm="db-0"]')).to_be_visible()  # the topology
    page.screenshot(path=str(ARTIFACTS / "farm-admin.png"), full_page=True)
    to = _migrate_from_the_vm_page(ctx.new_page(), page, lab)
    _drain_from_the_hosts_page(ctx.new_page(), to)
    page.goto(f"{BASE}/farms")
    page.screenshot(path=str(ARTIFACTS / "farms.png"))
    page.goto(f"{BASE}/farms/demo/vnets/back")
    expect(page.locator("tr[data-mac]", has_text="db-0")).not_to_contain_text(to)  # drained off `to`
    page.screenshot(path=str(ARTIFACTS / "vnet.png"), full_page=True)
    page.goto(f"{BASE}/events?kind=host&type=drain")  # Draining, DrainMove: a part of the type, any case
    expect(page.locator('tr[data-type="Draining"]')).to_have_count(1)
    expect(page.locator('tr[data-type="DrainMove"]')).not_to_have_count(0)
    assert page.locator('tr[data-type="Maintenance"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "events.png"), full_page=True)
    page.goto(f"{BASE}/usage")
    expect(page.locator('tr[data-usage-vm="demo--db-0"]')).to_be_visible()  # the guests' CPU-seconds so far
    page.screenshot(path=str(ARTIFACTS / "usage.png"), full_page=True)
    page.goto(f"{BASE}/plans")
    page.click("button:has-text('Preview a rebalance')")  # a dry run: stored, nothing moves
    expect(page.locator('[data-field="plan-state"]')).to_have_text("planned")
    page.screenshot(path=str(ARTIFACTS / "plan.png"), full_page=True)


def _migrate_from_the_vm_page(vm: Page, farm: Page, lab: Lab) -> str:
    """db-0 moved from its page; the farm page (open, never reloaded) draws it moving, then there."""
    src = farm.locator('g.vm[data-vm="db-0"]').get_attribute("data-host") or ""
    console = lab.dir / src / "consoles" / "demo--db-0.log"  # a guest moved in its first second can panic
    assert wait_until(lambda: console.exists() and "GUEST_READY" in console.read_text(errors="replace"),
                      timeout=120, interval=1), "db-0 did not boot"
    vm.goto(f"{BASE}/farms/demo/vms/db-0")
    expect(vm.locator('[data-field="host"]')).to_have_text(src)
    expect(vm.locator('[data-field="image"]')).to_have_text("test-guest")
    vm.screenshot(path=str(ARTIFACTS / "vm.png"), full_page=True)
    to = vm.locator("#to option").first.get_attribute("value") or ""
    vm.select_option("#to", to)
    farm.evaluate(SAW_MOVING)  # a move can be over in seconds: the farm page remembers it drew one
    vm.click("#migrate button")
    vm.wait_for_url(f"{BASE}/farms/demo/vms/db-0")
    expect(vm.locator("div.move")).to_contain_text(f"Moving to {to} (live)")
    vm.screenshot(path=str(ARTIFACTS / "vm-migrating.png"), full_page=True)
    tasks = vm.context.new_page()
    tasks.goto(f"{BASE}/tasks")
    expect(tasks.locator('tr[data-move="demo/db-0"]')).to_contain_text(to)
    tasks.screenshot(path=str(ARTIFACTS / "tasks.png"), full_page=True)
    farm.wait_for_function("window.sudcSawMoving === true", timeout=15_000)
    farm.screenshot(path=str(ARTIFACTS / "topology-moving.png"), full_page=True)
    expect(farm.locator(f'g.vm[data-vm="db-0"][data-host="{to}"]:not(.moving)')).to_be_visible(timeout=120_000)
    expect(tasks.locator('tr[data-move="demo/db-0"]')).to_have_count(0, timeout=10_000)  # done: gone, no reload
    tasks.close()
    expect(vm.locator('[data-field="host"]')).to_have_text(to, timeout=10_000)
    expect(vm.locator("div.move")).to_have_count(0)
    assert farm.evaluate("window.sudcKept") == 1  # followed the move over the event stream
    vm.screenshot(path=str(ARTIFACTS / "vm-moved.png"), full_page=True)
    return to


def _drain_from_the_hosts_page(page: Page, host: str) -> None:
    """`host` (now db-0's) drained from the hosts page: db-0 moves away, maintenance, then undrain."""
    page.goto(f"{BASE}/")
    page.evaluate("window.sudcKept = 1")
    page.click(f'button[aria-label="drain {host}"]')
    page.wait_for_url(f"{BASE}/")
    row = page.locator(f'tr[data-host="{host}"]')
    expect(row.locator(".state")).to_have_text(re.compile("draining|maintenance"))
    page.screenshot(path=str(ARTIFACTS / "hosts-draining.png"), full_page=True)
    page.evaluate("window.sudcKept = 2")
    expect(row.locator(".state")).to_have_text("maintenance", timeout=120_000)  # refreshed by the stream
    assert page.evaluate("window.sudcKept") == 2
    expect(row.locator(".drain")).to_contain_text(re.compile(r"(\d) / \1 moved"))
    page.screenshot(path=str(ARTIFACTS / "hosts-maintenance.png"), full_page=True)
    page.click(f'button[aria-label="undrain {host}"]')
    page.wait_for_url(f"{BASE}/")
    expect(row.locator(".state")).to_have_text("ready")


def _as_viewer(ctx: BrowserContext, token: str) -> None:
    page = ctx.new_page()
    _login(page, token)
    page.goto(f"{BASE}/farms/demo")
    expect(page.locator("#farm")).to_contain_text("web-0")
    assert page.locator("button:has-text('Migrate'), button:has-text('Delete farm')").count() == 0
    assert page.locator("a[href='/console/apply']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "farm-viewer.png"), full_page=True)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""  # its logout form's
    # Posted by the browser itself (Playwright's page.request would run outside the namespace).
    post = """async ([url, csrf]) => (await fetch(url, {method: "POST",
        body: new URLSearchParams({confirm: "demo", csrf: csrf})})).status"""
    for token in (csrf, "forged"):
        assert page.evaluate(post, [f"{BASE}/farms/demo/delete", token]) == 403
    page.goto(f"{BASE}/farms/demo")
    expect(page.locator("#farm")).to_contain_text("web-0")  # still there
