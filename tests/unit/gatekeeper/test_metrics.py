"""The gatekeeper's collector says which data path each VNET runs on and what the eBPF programs
did with each packet, by verdict."""

from __future__ import annotations

from types import SimpleNamespace

from gatekeeper.metrics import GatekeeperCollector
from gatekeeper.vnet.bpf.gro import GroChoice
from gatekeeper.vnet.bpf.selection import PathChoice


def test_the_data_path_of_each_vnet_and_the_ebpf_verdicts_are_exported() -> None:
    fastpath = SimpleNamespace(choices={7: PathChoice(7, "ebpf", "plain UDP VNET"),
                                        3: PathChoice(3, "userspace", "secured: ESP")},
                               status=lambda: {"counters": {"enc_ok": 12, "dec_drop_not_member": 2}})
    service = SimpleNamespace(config=SimpleNamespace(host="h1"), fastpath=fastpath)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for m in GatekeeperCollector(service)._datapath("h1")  # type: ignore[arg-type]
               for s in m.samples}
    assert samples[("softudc_vnet_datapath", (("host", "h1"), ("path", "ebpf"), ("vnet", "7")))] == 1
    assert samples[("softudc_vnet_datapath", (("host", "h1"), ("path", "userspace"), ("vnet", "3")))] == 1
    assert samples[("softudc_vnet_ebpf_packets_total", (("host", "h1"), ("verdict", "enc_ok")))] == 12
    assert samples[("softudc_vnet_ebpf_packets_total", (("host", "h1"), ("verdict", "dec_drop_not_member")))] == 2
    assert not any(s[0] == "softudc_vnet_gro_after_decap" for s in samples)  # not chosen yet
    fastpath.gro = GroChoice("ul0", "veth", False, "a virtual device passing GSO super-frames whole")
    chosen = [s for m in GatekeeperCollector(service)._datapath("h1")  # type: ignore[arg-type]
              for s in m.samples if s.name == "softudc_vnet_gro_after_decap"]
    assert [(s.labels, s.value) for s in chosen] == [({"host": "h1", "device": "ul0"}, 0)]
    assert list(GatekeeperCollector(SimpleNamespace())._datapath("h1")) == []  # type: ignore[arg-type]
