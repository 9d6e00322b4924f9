"""Fixtures for end-to-end tests: labs with unique names, packet captures, and a check that
nothing a test made survives it."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.lab import Lab, LabSpec, lab_down, lab_up, shell
from softudc.lab.endpoint import add_endpoint
from softudc.localapi import LocalApiClient


def _why_not_root() -> str | None:
    if os.geteuid() != 0:
        return "end-to-end tests need root (network namespaces)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (run `make bootstrap`)"
    return None


@pytest.fixture(autouse=True)
def _need_root() -> None:
    reason = _why_not_root()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()


def _print_logs(lab: Lab, lines: int = 40) -> None:
    """What the lab's daemons said, for a failed test's report (their files go with the lab)."""
    for log in sorted(lab.dir.rglob("*.log")):
        if "consoles" in log.parts:
            continue
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"----- {log.relative_to(lab.dir)} (last {len(tail)} lines)")
        print("\n".join(tail))


@pytest.fixture
def make_lab(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    made: list[Lab] = []
    # Short: unix socket paths (libvirtd's, the gatekeepers') must stay under 108 bytes.
    state = tempfile.mkdtemp(prefix="sudc")

    def make(**kwargs: Any) -> Lab:
        name = "t" + secrets.token_hex(3)
        lab = lab_up(LabSpec(name=name, **kwargs), state)
        made.append(lab)
        return lab

    yield make
    if request.node.stash.get(FAILED, False):
        for lab in made:
            _print_logs(lab)
    for lab in made:
        pids = [h.pid for h in lab.hosts if h.pid]
        lab_down(lab.spec.name, lab.state_dir)
        left = [ns for ns in shell.netns_list() if ns.startswith(lab.prefix)]
        assert not left, f"lab down left namespaces behind: {left}"
        alive = [p for p in pids if shell.pid_alive(p)]
        assert not alive, f"lab down left gatekeepers running: {alive}"
    shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def module_lab(prefix: str, **spec: Any) -> Iterator[Lab]:
    """A lab shared by one module's tests (for a module-scoped fixture; skipped without root),
    removed afterwards with no namespace left."""
    if os.geteuid() != 0:
        print("SKIP: end-to-end tests need root (network namespaces)")
        pytest.skip("needs root")
    state = tempfile.mkdtemp(prefix="sud" + prefix)
    lab = lab_up(LabSpec(name=prefix + secrets.token_hex(3), **spec), state)
    try:
        yield lab
    finally:
        lab_down(lab.spec.name, lab.state_dir)
        assert not [ns for ns in shell.netns_list() if ns.startswith(lab.prefix)]
        shutil.rmtree(state, ignore_errors=True)


def gk(lab: Lab, host: str) -> LocalApiClient:
    return LocalApiClient(lab.host(host).api_socket)


def create_vnet(lab: Lab, vnet: int, hosts: list[str] | None = None, **kwargs: Any) -> None:
    for h in hosts or [h.name for h in lab.hosts]:
        gk(lab, h).call("vnet.create", vnet=vnet, **kwargs)


def endpoints(lab: Lab, spec: dict[str, tuple[str, int, str]]) -> None:
    """spec: name -> (host, vnet, ip/prefix)."""
    for name, (host, vnet, addr) in spec.items():
        add_endpoint(lab, name, host, vnet, addr)


def ns_run(netns: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          check=check, timeout=timeout)


def ping(lab: Lab, src: str, dst_ip: str, count: int = 3, interval: float = 0.2, size: int | None = None,
         df: bool = False) -> subprocess.CompletedProcess[str]:
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2"]
    if size is not None:
        argv += ["-s", str(size)]
    if df:
        argv += ["-M", "do"]
    return ns_run(lab.endpoints[src].netns, *argv, dst_ip, check=False)


class Capture:
    """tcpdump on one interface of one namespace, written to a pcap; stopped by PID."""

    def __init__(self, netns: str, ifname: str, path: Path, bpf: str = "") -> None:
        self.path = path
        self._err = path.with_suffix(".err")
        argv = ["ip", "netns", "exec", netns, "tcpdump", "-i", ifname, "--immediate-mode", "-U", "-n", "-w", str(path)]
        if bpf:
            argv += bpf.split()
        with open(self._err, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 5
        while "listening on" not in self._err.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump on {netns}/{ifname} did not start: {self._err.read_text()}")
            time.sleep(0.02)

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path


@pytest.fixture
def captures(tmp_path: Path) -> Iterator[Callable[..., Capture]]:
    started: list[Capture] = []

    def start(netns: str, ifname: str, name: str, bpf: str = "") -> Capture:
        cap = Capture(netns, ifname, tmp_path / f"{name}.pcap", bpf)
        started.append(cap)
        return cap

    yield start
    for cap in started:
        cap.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
