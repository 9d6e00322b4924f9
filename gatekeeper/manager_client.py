"""The gatekeeper's side of the manager: report this host, fetch what it should run, converge.
Everything over mutual TLS with the certificate the host got when it joined."""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from typing import Any
from urllib.parse import urlparse

from gatekeeper.converge import MANAGED, converge
from gatekeeper.vms import VmService
from gatekeeper.vnet.service import VnetService

log = logging.getLogger("gatekeeper.manager")


class ManagerClient:
    def __init__(self, url: str, ca: str, cert: str, key: str, host: str, vnets: VnetService,
                 vms: VmService | None, vcpus: int, memory_mib: int) -> None:
        u = urlparse(url)
        self.address, self.port = u.hostname or "127.0.0.1", u.port or 8443
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)
        self.host = host
        self.vnets, self.vms = vnets, vms
        self.capacity = {"vcpus": vcpus, "memory_mib": memory_mib}
        self.managed_vnets: set[int] = set()
        self.errors: list[str] = []

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPSConnection(self.address, self.port, context=self.ctx, timeout=10)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = json.loads(r.read() or b"null")
        finally:
            conn.close()
        if r.status != 200:
            raise RuntimeError(f"manager: {method} {path}: {r.status} {data.get('error') if data else ''}")
        return data

    def sync(self) -> list[str]:
        """One round: report, fetch, converge. Returns what was done (for the log)."""
        vms_here = self.vms.hv.domains() if self.vms else []
        running = [v["name"] for v in vms_here if MANAGED in v["name"] and v["state"] == "running"]
        self._call("PUT", f"/v1/hosts/{self.host}/status",
                   {**self.capacity, "state": "ready", "running": running, "errors": self.errors[-5:]})
        desired = self._call("GET", f"/v1/hosts/{self.host}/desired")
        here = [v["vnet"] for v in self.vnets.list_vnets()]
        done = []
        self.errors = []
        for action in converge(desired, here, vms_here, self.managed_vnets):
            try:
                self._apply(action.op, action.args, desired)
                done.append(str(action))
            except Exception as e:
                self.errors.append(f"{action}: {e}")
                log.warning("%s failed: %s", action, e)
        return done

    def _apply(self, op: str, args: dict[str, Any], desired: dict[str, Any]) -> None:
        if op == "vnet.create":
            vnet = next(v for v in desired["vnets"] if v["id"] == args["vnet"])
            security = vnet.get("security", "none")
            self.vnets.create_vnet(args["vnet"], security=security if security != "none" else None,
                                   keys=vnet.get("keys"))
            self.managed_vnets.add(args["vnet"])
        elif op == "vnet.delete":
            self.vnets.delete_vnet(args["vnet"])
            self.managed_vnets.discard(args["vnet"])
        elif op == "vm.start":
            if self.vms is None:
                raise RuntimeError("this host has no hypervisor configured")
            self.vms.start(args["name"], args["nics"],
                           args["vcpus"], args["memory_mib"])
        elif op == "vm.stop" and self.vms is not None:
            self.vms.hv.stop(args["name"], force=True)
