"""Simulated gatekeepers for `softudc bench manager`: one asyncio process runs many hosts, each
doing what a real gatekeeper's sync round does (gatekeeper/reconciler.py `sync`) on one kept-alive
mutual-TLS connection: PUT its report (the contract's HostReport), then GET its desired state as a
long poll (`since` = its etag, `wait` = the interval), then "converge" (the VMs it was told to run
count as running in its next report), round after round.

Run as `python -m softudc.bench.hostsim` by the bench; it reads one JSON line of configuration on
stdin, then commands, one a line: `measure` (record report latencies from now), `collect` (stop
recording, write them), `stop`. It writes JSON lines on stdout: `{"ready": n, "errors": n}` every
second, `{"host": h, "t": wall time, "vms": n}` when the number of VMs of the watched farm in a
host's desired state changes, `{"latencies_ms": [...], ...}` after `collect`. HTTP/1.1 is spoken
by hand (request line, Content-Length, a body) to keep the clients' own cost small: the bench
measures the manager, and shares two cores with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from softudc.model.hoststate import CONTRACT_VERSION

IO_TIMEOUT_S = 30.0  # beyond a long poll's wait: a call that takes longer counts as an error


def host_report(underlay: str, running: list[str], vcpus: int, memory_mib: int) -> dict[str, Any]:
    """What a healthy gatekeeper with `running` VMs (1 vCPU, 64 MiB each) reports."""
    return {"contract": CONTRACT_VERSION, "vcpus": vcpus, "memory_mib": memory_mib, "state": "ready",
            "underlay": underlay, "migration_uri": f"qemu+tls://{underlay}/system",
            "dataplane": {"workers": {"udp-rx": "running", "raw-rx": "running", "tx": "running"}, "restarts": 0,
                          "healthy": True},
            "running": sorted(running), "prepared": [], "errors": [], "notes": [],
            "sizes": {vm: [1, 64] for vm in sorted(running)}, "migrations": {}, "arrivals": {}, "departed": {},
            "vnets": []}


class HttpError(RuntimeError):
    pass


class Connection:
    """One kept-alive HTTPS connection; requests one at a time (as a gatekeeper's link)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, ctx: ssl.SSLContext) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: manager\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            data = await self._chunked()
        else:
            raise HttpError(f"{method} {path}: an answer without Content-Length")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, data

    async def _chunked(self) -> bytes:
        out = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return out
            out += chunk[:-2]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class Stats:
    measuring: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    polls_ms: list[float] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    errors: int = 0
    last_error: str = ""


@dataclass
class Host:
    name: str
    ctx: ssl.SSLContext
    underlay: str
    etag: str = ""
    running: list[str] = field(default_factory=list)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Simulator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.addr, self.port = str(config["address"]), int(config["port"])
        self.interval = float(config["interval"])
        self.farm_prefix = f"{config['farm']}--"
        self.vcpus, self.memory_mib = int(config["vcpus"]), int(config["memory_mib"])
        self.ramp_s = float(config["ramp_s"])
        self.hosts = [Host(h["name"], self._context(config["ca"], h["cert"]), h["underlay"]) for h in config["hosts"]]
        self.stats = Stats()
        self.stopping = asyncio.Event()

    @staticmethod
    def _context(ca: str, cert: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        ctx.load_cert_chain(cert)
        return ctx

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._host(h, self.ramp_s * i / max(len(self.hosts), 1)), name=h.name)
                 for i, h in enumerate(self.hosts)]
        tasks.append(asyncio.create_task(self._ticker(), name="ticker"))
        await self._commands()
        self.stopping.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _commands(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command = line.strip()
            if command in ("", "stop"):
                return
            if command == "measure":
                self.stats.latencies_ms, self.stats.polls_ms, self.stats.measuring = [], [], True
            elif command == "collect":
                self.stats.measuring = False
                usage = resource.getrusage(resource.RUSAGE_SELF)
                emit({"latencies_ms": self.stats.latencies_ms, "polls": len(self.stats.polls_ms),
                      "errors": self.stats.errors, "last_error": self.stats.last_error,
                      "cpu_s": usage.ru_utime + usage.ru_stime})

    async def _ticker(self) -> None:
        while True:
            emit({"ready": len(self.stats.ready), "errors": self.stats.errors})
            await asyncio.sleep(1.0)

    async def _host(self, h: Host, delay: float) -> None:
        await asyncio.sleep(delay)
        conn: Connection | None = None
        while not self.stopping.is_set():
            try:
                if conn is None:
                    conn = await asyncio.wait_for(Connection.open(self.addr, self.port, h.ctx), IO_TIMEOUT_S)
                await self._round(h, conn)
            except HttpError as e:  # an answer, not 200: the connection is fine (as httpx's pool keeps it)
                self.stats.errors += 1
                self.stats.last_error = f"{h.name}: {e}"
                await asyncio.sleep(self.interval * (0.5 + random.random()))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                    ValueError) as e:
                self.stats.errors += 1
                self.stats.last_error = f"{h.name}: {type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(self.interval * (0.5 + random.random()))

    async def _round(self, h: Host, conn: Connection) -> None:
        body = json.dumps(host_report(h.underlay, h.running, self.vcpus, self.memory_mib)).encode()
        start = time.perf_counter()
        status, data = await asyncio.wait_for(conn.request("PUT", f"/v1/hosts/{h.name}/status", body), IO_TIMEOUT_S)
        took = (time.perf_counter() - start) * 1000
        if status != 200:
            raise HttpError(f"report: {status} {data[:200]!r}")
        if self.stats.measuring:
            self.stats.latencies_ms.append(round(took, 2))
        start = time.perf_counter()
        status, data = await asyncio.wait_for(
            conn.request("GET", f"/v1/hosts/{h.name}/desired?since={h.etag}&wait={self.interval:g}"), IO_TIMEOUT_S)
        if status != 200:
            raise HttpError(f"desired: {status} {data[:200]!r}")
        if self.stats.measuring:
            self.stats.polls_ms.append(time.perf_counter() - start)
        desired = json.loads(data)
        h.etag = str(desired.get("etag", ""))
        vms = sorted(str(v["name"]) for v in desired.get("vms", []))
        mine = sum(1 for v in vms if v.startswith(self.farm_prefix))
        if mine != sum(1 for v in h.running if v.startswith(self.farm_prefix)):
            emit({"host": h.name, "t": time.time(), "vms": mine})
        h.running = vms  # converged at once: they run from the next report on
        self.stats.ready.add(h.name)


def main() -> None:
    config = json.loads(sys.stdin.readline())
    asyncio.run(Simulator(config).run())


if __name__ == "__main__":
    main()
