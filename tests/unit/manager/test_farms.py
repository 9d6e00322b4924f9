"""Farms computed once (audit R11): the validated descriptor per text, and every farm's usage of
the hosts summed once, each farm then seeing the total less its own share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from softudc.manager.farms import FarmCache, Usage
from softudc.manager.store import Obj
from softudc.model.farm import validate
from softudc.model.source import DescriptorError
from softudc.placement import Host, Request, charge

SHOP = (Path(__file__).parents[3] / "configs" / "farms" / "shop.yaml").read_text()


def _obj(name: str, text: str, status: dict[str, object] | None = None) -> Obj:
    return Obj("farm", name, 1, {"descriptor": text}, status or {})


def test_r11_a_descriptor_is_parsed_once_per_text_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting(text: str, file: str = "<farm>", strict: bool = True) -> object:
        calls.append(file)
        return validate(text, file, strict)

    monkeypatch.setattr("softudc.manager.farms.validate", counting)
    cache = FarmCache(size=2)
    shop = _obj("shop", SHOP)
    assert cache.farm(shop) is cache.farm(shop) and calls == ["shop"]
    bad = _obj("bad", "kind: Farm\n")
    for _ in range(3):
        with pytest.raises(DescriptorError):
            cache.farm(bad)
    assert calls == ["shop", "bad"]  # the error is remembered too
    cache.farm(_obj("shop", SHOP.replace("vcpus: 1", "vcpus: 2")))  # a new text: parsed, oldest evicted
    assert len(cache._farms) == 2 and calls[-1] == "shop"


def test_r11_usage_summed_once_equals_charging_every_other_farm() -> None:
    farm = validate(SHOP, "shop")
    vm = farm.vms[0]
    statuses: dict[str, dict[str, Any]] = {
        f"f{i}": {"instances": [{"name": f"{vm.name}-{j}", "vm": vm.name, "host": f"h{(i + j) % 3}"}
                                for j in range(i + 1)]} for i in range(4)}
    statuses["f1"]["instances"][0]["migrating"] = {"to": "h2"}  # counts on both hosts while it moves
    usage = Usage([(n, farm, s) for n, s in statuses.items()])
    base = [Host(f"h{i}", 64, 65536) for i in range(3)]
    for me in statuses:
        expected = [Host(h.name, h.vcpus, h.memory_mib) for h in base]
        by_name = {h.name: h for h in expected}
        for name, status in statuses.items():
            if name == me:
                continue
            for inst in status["instances"]:
                for where in [inst["host"], *([inst["migrating"]["to"]] if inst.get("migrating") else [])]:
                    charge(by_name[where], Request(inst["name"], vm.vcpus, vm.memory_mib,
                                                   f"{name}/{vm.group}" if vm.group else None))
        assert usage.hosts(base, me) == expected
    assert base == [Host(f"h{i}", 64, 65536) for i in range(3)]  # copies: the base is not charged
    usage.update("f3", farm, {"instances": []})  # f3 deleted its instances
    assert sum(h.used_vcpus for h in usage.hosts(base)) == vm.vcpus * (1 + 2 + 1 + 3)
