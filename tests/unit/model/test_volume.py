"""Volumes in the Farm descriptor: what validates, and each mistake at its line and field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.model.farm import validate
from softudc.model.source import DescriptorError
from softudc.model.volume import MAX_SIZE, VolumeDef, backing_name, parse_size_bytes, split_volume_id, volume_id

FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {{name: shop}}
spec:
  vnets:
    - {{name: front, subnet: 10.0.0.0/24}}
  vms:
    - name: db
      memory: 256Mi
      image: test-guest
      nics: [{{vnet: front}}]
      volumes:
{volumes}
"""


def farm(*volumes: str) -> str:
    return FARM.format(volumes="\n".join(f"        - {v}" for v in volumes))


def problems(*volumes: str) -> list[str]:
    with pytest.raises(DescriptorError) as e:
        validate(farm(*volumes), "f.yaml")
    return [str(p) for p in e.value.problems]


def test_volumes_validate_with_their_defaults() -> None:
    f = validate(farm("{name: data, size: 10Gi, class: remote, from: empty, keep: true}",
                      "{name: root, size: 2Gi, from: image}", "{name: ref, size: 1Ti, from: pg-master}"))
    data, root, ref = f.vms[0].volumes
    assert data == VolumeDef("data", 10 << 30, "remote", "empty", True)
    assert root == VolumeDef("root", 2 << 30, "local", "image", False) and root.master is None
    assert ref.master == "pg-master" and ref.size_bytes == 1 << 40


def test_encrypted_and_qos_attributes_validate() -> None:
    f = validate(farm("{name: sec, size: 1Gi, class: remote, encrypted: true, iops: 200, mbps: 5}",
                      "{name: plain, size: 1Gi}"))
    sec, plain = f.vms[0].volumes
    assert sec == VolumeDef("sec", 1 << 30, "remote", "empty", False, True, 200, 5)
    assert (plain.encrypted, plain.iops, plain.mbps) == (False, None, None)


def test_a_clone_of_a_snapshot_backs_on_the_snapshot_s_volume() -> None:
    f = validate(farm("{name: a, size: 1Gi, from: gold@v1}", "{name: b, size: 1Gi, from: shop--db-0--data@s1}"))
    a, b = f.vms[0].volumes
    assert (a.master, backing_name(a.source)) == ("gold@v1", "gold.snap.v1")
    assert backing_name(b.source) == "shop--db-0--data.snap.s1" and backing_name("gold") == "gold"


def test_a_vm_without_volumes_has_none() -> None:
    text = farm("{name: a, size: 1Mi}").split("      volumes:")[0]
    assert validate(text).vms[0].volumes == ()


@pytest.mark.parametrize(("volume", "expected"), [
    ("{name: a, size: 10GB}", "f.yaml:13:27: spec.vms[0].volumes[0].size: '10GB' is not a size"),
    ("{name: a, size: 0Mi}", "spec.vms[0].volumes[0].size: '0Mi' is not a size"),
    ("{name: a, size: 65Ti}", "spec.vms[0].volumes[0].size"),
    ("{name: a, size: 1Gi, class: raid5}", "spec.vms[0].volumes[0].class: 'raid5', expected one of: local, "
                                             "remote, mirrored"),
    ("{name: a, size: 1Gi, class: mirrored, from: gold}", "spec.vms[0].volumes[0].from: a mirrored volume starts "
                                                          "empty"),
    ("{name: a, size: 1Gi, from: Bad_Master}", "spec.vms[0].volumes[0].from: 'Bad_Master' is not a name"),
    ("{name: a, size: 1Gi, keep: yes please}", "spec.vms[0].volumes[0].keep: 'yes please' must be true or false"),
    ("{name: a, size: 1Gi, qos: gold}", "spec.vms[0].volumes[0].qos: unknown field"),
    ("{size: 1Gi}", "spec.vms[0].volumes[0].name: required field is missing"),
    ("{name: a, size: 1Gi, encrypted: true}", "spec.vms[0].volumes[0].encrypted: an encrypted volume must be "
                                              "`class: remote`"),
    ("{name: a, size: 1Gi, class: remote, encrypted: 1}", "volumes[0].encrypted: 1 must be true or false"),
    ("{name: a, size: 1Gi, class: remote, encrypted: true, from: image}", "f.yaml:13:70: spec.vms[0].volumes[0]"
                                                                          ".from: an encrypted volume cannot start "
                                                                          "from the image"),
    ("{name: a, size: 1Gi, iops: 0}", "spec.vms[0].volumes[0].iops: 0 must be a whole number from 1 to 1000000"),
    ("{name: a, size: 1Gi, mbps: fast}", "spec.vms[0].volumes[0].mbps: 'fast' must be a whole number from 1"),
    ("{name: a, size: 1Gi, mbps: true}", "spec.vms[0].volumes[0].mbps: True must be a whole number"),
    ("{name: a--b, size: 1Gi}", "spec.vms[0].volumes[0].name: 'a--b' contains '--'"),
    ("{name: a, size: 1Gi, from: gold@}", "volumes[0].from: 'gold@' is not VOLUME@SNAPSHOT"),
    ("{name: a, size: 1Gi, from: g@a@b}", "volumes[0].from: 'g@a@b' is not VOLUME@SNAPSHOT"),
    ("{name: a, size: 1Gi, from: shop--db-0--data}", "volumes[0].from: 'shop--db-0--data' is a farm's volume: "
                                                     "clone a snapshot of it"),
])
def test_each_mistake_is_named_at_its_field(volume: str, expected: str) -> None:
    got = problems(volume)
    assert any(expected in g for g in got), got


def test_a_volume_from_the_image_needs_an_image_name_the_host_can_find() -> None:
    assert validate(farm("{name: root, size: 1Gi, from: image}")).vms[0].volumes[0].source == "image"
    text = farm("{name: root, size: 1Gi, from: image}").replace("image: test-guest", "image: lib/web")
    with pytest.raises(DescriptorError) as e:
        validate(text, "f.yaml")
    assert "f.yaml:10:14: spec.vms[0].image: 'lib/web': a VM with a volume `from: image` needs an image name" \
        in str(e.value)
    assert validate(farm("{name: a, size: 1Gi}").replace("image: test-guest", "image: lib/web")).vms[0].image \
        == "lib/web"  # without such a volume any image name goes


def test_duplicate_and_too_many_volumes_are_refused() -> None:
    got = problems("{name: a, size: 1Gi}", "{name: a, size: 2Gi}")
    assert any("volumes[1].name: duplicate volume name 'a' (first at spec.vms[0].volumes[0])" in g for g in got), got
    got = problems(*[f"{{name: v{i}, size: 1Gi}}" for i in range(9)])
    assert any("9 volumes, at most 8 per VM" in g for g in got), got


def test_volume_ids_round_trip() -> None:
    vid = volume_id("shop", "db-0", "data")
    assert vid == "shop--db-0--data" and split_volume_id(vid) == ("shop", "db-0", "data")
    assert split_volume_id("shop--db-0") is None and split_volume_id("a----b") is None


@given(st.text(max_size=12))
def test_sizes_parse_or_are_refused(text: str) -> None:
    size = parse_size_bytes(text)
    assert size is None or (size >= 1 << 20 and size <= MAX_SIZE and size % (1 << 20) == 0)


@given(st.integers(0, 1 << 20), st.sampled_from(["Mi", "Gi", "Ti"]))
def test_sizes_in_range_parse_exactly(n: int, unit: str) -> None:
    size = parse_size_bytes(f"{n}{unit}")
    exact = n * {"Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}[unit]
    assert size == (exact if 1 << 20 <= exact <= MAX_SIZE else None)
