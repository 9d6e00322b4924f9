"""Every daemon exposes Prometheus metrics: the gatekeeper's endpoint answers on the management
network, in the text format, with the data plane's counters, on either data path (`auto`: the
VNET on eBPF, its frames counted by the programs; forced `userspace`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

from softudc.lab import Lab
from softudc.lab.lab import METRICS_PORT
from tests.e2e.conftest import create_vnet, endpoints, ns_run, ping

pytestmark = pytest.mark.vnet

SCRAPE = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


@pytest.mark.parametrize("datapath", ["auto", "userspace"])
def test_gatekeeper_metrics_count_frames_and_varp(make_lab: Callable[..., Lab], datapath: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", datapath)
    lab = make_lab(hosts=2)
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    assert ping(lab, "a1", "10.0.0.2", count=3).returncode == 0
    h1 = lab.host("h1")
    # Scraped from the management namespace, as a Prometheus there would.
    text = ns_run(lab.mgmt_ns, sys.executable, "-c", SCRAPE, f"http://{h1.mgmt_ip}:{METRICS_PORT}/metrics").stdout
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    tx = samples['softudc_vnet_frames_total{direction="tx",host="h1",vnet="10"}']
    rx = samples['softudc_vnet_frames_total{direction="rx",host="h1",vnet="10"}']
    assert tx >= 3 and rx >= 3
    assert samples['softudc_varp_messages_total{host="h1",kind="announce_tx"}'] >= 1
    assert samples['softudc_vnets{host="h1"}'] == 1
    path = "ebpf" if datapath == "auto" else "userspace"
    assert [k for k in samples if k.startswith("softudc_vnet_datapath{")] == \
        [f'softudc_vnet_datapath{{host="h1",path="{path}",vnet="10"}}'], text
    ebpf = {k: v for k, v in samples.items() if k.startswith("softudc_vnet_ebpf_packets_total{")}
    if path == "ebpf":  # the replies, decapsulated in BPF
        assert ebpf['softudc_vnet_ebpf_packets_total{host="h1",verdict="dec_ok"}'] >= 3, ebpf
    else:
        assert ebpf == {}, ebpf  # no programs loaded
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
