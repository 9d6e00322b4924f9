"""softudc bench volumes, the parts without a lab: clone timing in a real thin pool, the guest's
answers parsed, ratios to local, and the farm it boots validates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.bench.volumes import KINDS, classes, clone_ms, farm, parse, rates, ratios
from softudc.model.farm import validate


def test_clones_of_a_1gib_and_a_1tib_master_take_about_as_long(tmp_path: Path) -> None:
    got = clone_ms(tmp_path / "pool", clones=3)
    assert set(got) == {"1GiB", "1TiB"} and all(0 < v < 2000 for v in got.values())
    assert len(list((tmp_path / "pool").glob("*.qcow2"))) == 8  # 2 masters, 3 clones each


def test_the_farm_of_every_class_this_version_has_validates() -> None:
    kinds = classes()
    assert {"local", "remote"} <= set(kinds) <= set(KINDS)
    f = validate(farm(kinds))
    assert [vm.name for vm in f.vms] == list(kinds)
    assert {vm.name: vm.volumes[0].cls for vm in f.vms}["remote"] == "remote"


def test_a_guest_s_answers_become_rates() -> None:
    answers = {"write=48": "bytes=33554432 ms=1000", "read=48": "bytes=33554432 ms=500", "iops=2000": "ops=400 ms=200"}
    assert rates(lambda q: answers[q]) == {"seq_mbps": 67.1, "seq_write_mbps": 33.6, "rand_iops": 2000}
    with pytest.raises(ValueError, match="diskrate said 'no virtio disk'"):
        parse("no virtio disk")


MEASURED = st.fixed_dictionaries({"seq_mbps": st.floats(0, 1e4), "rand_iops": st.integers(0, 10**6)})


@given(st.dictionaries(st.sampled_from(["remote", "mirrored"]), st.none() | MEASURED), st.floats(0.1, 1e4),
       st.integers(1, 10**6))
def test_ratios_are_to_local_and_skip_what_was_not_measured(io: dict[str, dict[str, float] | None], seq: float,
                                                             iops: int) -> None:
    got = ratios({"local": {"seq_mbps": seq, "rand_iops": iops}, **io})
    assert set(got) == {k for k, v in io.items() if v}
    for kind, r in got.items():
        measured = io[kind]
        assert measured is not None and r["rand_iops"] == round(measured["rand_iops"] / iops, 2)
