"""Prometheus for a lab: the project's configuration (configs/prometheus/: scrape jobs by
file-based service discovery, recording and alerting rules) copied into the lab's state directory,
with targets/*.json naming this lab's managers and gatekeepers. A real pool writes the same target
files from its own inventory (docs/monitoring.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from softudc.atomicfile import write_atomic
from softudc.lab.lab import METRICS_PORT as GATEKEEPER_METRICS_PORT
from softudc.lab.manager import MANAGER_ADDR
from softudc.lab.manager import METRICS_PORT as MANAGER_METRICS_PORT
from softudc.lab.state import Lab

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "prometheus"
JOBS = ("manager", "gatekeeper", "vnetd")


def targets(lab: Lab) -> dict[str, list[dict[str, Any]]]:
    """Per job, the file_sd groups of this lab: every manager (the HA lab's, or the one manager) and
    every host's gatekeeper, on the management network. Lab vnetds listen in their segment's
    namespace, which the management network does not reach: their job is empty."""
    lab_label = {"lab": lab.spec.name}
    managers: list[str] = []
    if lab.managers:
        managers = [m.address for m in lab.managers]
    elif lab.manager_pid:
        managers = [MANAGER_ADDR]
    return {
        "manager": [{"targets": [f"{a}:{MANAGER_METRICS_PORT}" for a in managers], "labels": lab_label}]
        if managers else [],
        "gatekeeper": [{"targets": [f"{h.mgmt_ip}:{GATEKEEPER_METRICS_PORT}"], "labels": {**lab_label, "host": h.name}}
                       for h in lab.hosts],
        "vnetd": [],
    }


def write_config(lab: Lab, out: Path | None = None) -> Path:
    """configs/prometheus/ copied to `out` (default: the lab's `prometheus/` directory) with this
    lab's target files; returns the path of prometheus.yml there. Run again after the lab changes:
    Prometheus re-reads target files on its own."""
    out = out or lab.dir / "prometheus"
    for sub in ("rules", "tests"):
        shutil.copytree(CONFIG_DIR / sub, out / sub, dirs_exist_ok=True)
    shutil.copy2(CONFIG_DIR / "prometheus.yml", out / "prometheus.yml")
    (out / "targets").mkdir(parents=True, exist_ok=True)
    for job, groups in targets(lab).items():
        write_atomic(out / "targets" / f"{job}.json", (json.dumps(groups, indent=2) + "\n").encode(), mode=0o644)
    return out / "prometheus.yml"
