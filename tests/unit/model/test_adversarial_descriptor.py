"""Descriptors built to be expensive or to smuggle in what the manager owns (audit R9, R24, R25,
R28): each is refused with a positioned problem, and the work to refuse it is linear in its text."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.vnet.port import mtu_for
from softudc.model import source
from softudc.model.farm import MAX_INSTANCES, MAX_MTU, MAX_NICS, MAX_VCPUS, MAX_VMS, MAX_VNETS, validate
from softudc.model.source import MAX_DEPTH, DescriptorError

pytestmark = pytest.mark.adversarial

HEAD = "apiVersion: softudc.io/v1alpha1\nkind: Farm\nmetadata: {name: f}\n"
GOOD_SPEC = "spec:\n  vnets: [{name: front, subnet: 10.0.0.0/24}]\n" \
            "  vms: [{name: web, memory: 128Mi, image: test-guest, nics: [{vnet: front}]}]\n"


def _problems(text: str) -> list[str]:
    with pytest.raises(DescriptorError) as e:
        validate(text, "farms/f")
    return [str(p) for p in e.value.problems]


def _alias_bomb(levels: int, width: int = 10) -> str:
    lines = ["status:", "  l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return HEAD + GOOD_SPEC + "\n".join(lines) + "\n"


def test_r9_the_audit_alias_bomb_under_status_is_refused_at_once() -> None:
    start = time.monotonic()
    problems = _problems(_alias_bomb(9))  # 10^9 values once expanded: out of memory on f836a52
    assert time.monotonic() - start < 2.0  # generous: refusing does not expand anything
    assert any("anchors and aliases are not allowed" in p and p.startswith("farms/f:8:7:") for p in problems), problems


def test_r9_the_status_key_is_the_managers_and_is_refused() -> None:
    problems = _problems(HEAD + GOOD_SPEC + "status: {instances: [{name: web-0, host: evil}]}\n")
    assert problems == ["farms/f:7:1: status: is written by the manager, not part of a descriptor; remove it "
                        "(`softudc get farm` output is not a descriptor)"]


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "&a [*a, *a]\n", "- &x {k: *x}\n"])
def test_r28_recursive_aliases_are_a_positioned_problem_not_a_recursion_error(text: str) -> None:
    problems = _problems(text)
    assert problems and problems[0].startswith("farms/f:1:") and "aliases are not allowed" in problems[0]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 100_000])
def test_r28_deep_nesting_is_a_positioned_problem_not_a_recursion_error(depth: int) -> None:
    problems = _problems("a: " + "[" * depth + "]" * depth + "\n")
    assert len(problems) == 1 and f"nested more than {MAX_DEPTH} levels" in problems[0]
    assert problems[0].startswith(f"farms/f:1:{4 + MAX_DEPTH - 1}:")  # where the limit was crossed


@pytest.mark.parametrize("subnet", ["10.0.0.0/8", "10.0.0.0/12", "0.0.0.0/0", "10.0.0.0/15"])
def test_r9_subnets_larger_than_a_slash_16_are_refused_with_the_limit(subnet: str) -> None:
    problems = _problems(HEAD + GOOD_SPEC.replace("10.0.0.0/24", subnet))
    assert any(f"{subnet} is too large: at most a /16" in p for p in problems), problems
    validate(HEAD + GOOD_SPEC.replace("10.0.0.0/24", "10.0.0.0/16"), "farms/f")  # the limit itself is fine


def _farm(vnets: int = 1, vms: int = 1, replicas: int = 1, nics: int = 1) -> str:
    vnet_lines = "".join(f"    - {{name: v{i}, subnet: 10.{i % 256}.0.0/22}}\n" for i in range(vnets))
    nic_list = ", ".join(f"{{vnet: v{i % vnets}}}" for i in range(nics))
    vm_lines = "".join(f"    - {{name: vm{i}, replicas: {replicas}, memory: 64Mi, image: g, nics: [{nic_list}]}}\n"
                       for i in range(vms))
    return HEAD + "spec:\n  vnets:\n" + vnet_lines + "  vms:\n" + vm_lines


@pytest.mark.parametrize(("kw", "message"), [
    ({"vnets": MAX_VNETS + 1}, f"{MAX_VNETS + 1} VNETs, at most {MAX_VNETS} per farm"),
    ({"vms": MAX_VMS + 1}, f"{MAX_VMS + 1} VMs, at most {MAX_VMS} per farm"),
    ({"vms": 3, "replicas": 400}, f"1200 instances in all, at most {MAX_INSTANCES} per farm"),
    ({"nics": MAX_NICS + 1}, f"{MAX_NICS + 1} NICs, at most {MAX_NICS} per VM"),
])
def test_r9_r10_farm_sizes_are_capped_and_the_error_names_the_limit(kw: dict[str, int], message: str) -> None:
    assert any(message in p for p in _problems(_farm(**kw))), _problems(_farm(**kw))


def test_r9_the_largest_allowed_farm_still_validates() -> None:
    farm = validate(_farm(vnets=MAX_VNETS, vms=2, replicas=MAX_INSTANCES // 2, nics=MAX_NICS), "farms/f")
    assert len(farm.vnets) == MAX_VNETS and sum(v.replicas for v in farm.vms) == MAX_INSTANCES


def test_r24_names_with_the_separator_are_refused() -> None:
    problems = _problems(HEAD.replace("name: f", "name: a--b") + GOOD_SPEC.replace("name: web", "name: b--web"))
    assert sum("contains '--'" in p for p in problems) == 2


def test_r25_limits_match_the_gatekeepers() -> None:
    for level, limit in MAX_MTU.items():  # what a gatekeeper on a 1500-byte underlay accepts
        assert limit == mtu_for("udp", 1500, level)
    assert any(f"must be an integer from 1 to {MAX_VCPUS}" in p
               for p in _problems(HEAD + GOOD_SPEC.replace("memory: 128Mi", "memory: 128Mi, vcpus: 65")))
    # farm (6) + '--' + VM (40) + '-9' = 50: the longest name a host accepts; one more is refused.
    ok = HEAD.replace("name: f", "name: ffffff") + GOOD_SPEC.replace("name: web", "replicas: 10, name: w" + "e" * 39)
    validate(ok, "farms/f")
    assert any("over the hosts' limit of 50" in p for p in _problems(ok.replace("replicas: 10", "replicas: 11")))


class _Counting(source._BoundedLoader):
    composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        _Counting.composed += 1
        return super().compose_node(parent, index)


@st.composite
def _expensive(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["bomb", "deep", "wide", "subnet", "replicas", "mixed"]))
    if kind == "bomb":
        return _alias_bomb(draw(st.integers(1, 12)), draw(st.integers(2, 12)))
    if kind == "deep":
        d = draw(st.integers(1, 3000))
        return HEAD + GOOD_SPEC + "x: " + draw(st.sampled_from(["[", "{a: "])) * d + "\n"
    if kind == "wide":
        many = "{name: n}, " * draw(st.integers(0, 3000))
        return HEAD + GOOD_SPEC.replace("[{name: front", "[" + many + "{name: front")
    if kind == "subnet":
        return HEAD + GOOD_SPEC.replace("/24", f"/{draw(st.integers(0, 32))}")
    if kind == "replicas":
        return _farm(vnets=draw(st.integers(1, 20)), vms=draw(st.integers(1, 70)), replicas=draw(st.integers(0, 2000)),
                     nics=draw(st.integers(1, 10)))
    return HEAD + GOOD_SPEC + draw(st.text(alphabet="&*[]{}:,- ab\n", max_size=400))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expensive())
def test_r9_expensive_descriptors_cost_work_linear_in_their_text(text: str) -> None:
    _Counting.composed = 0
    original = source._BoundedLoader
    source._BoundedLoader = _Counting  # type: ignore[misc]
    try:
        start = time.monotonic()
        try:
            validate(text, "farms/f")
        except DescriptorError as e:
            assert all(str(p).startswith("farms/f:") for p in e.problems)
        elapsed = time.monotonic() - start
    finally:
        source._BoundedLoader = original  # type: ignore[misc]
    assert _Counting.composed <= len(text)  # no value is built twice: no expansion
    assert elapsed < 5.0  # generous; the alias bombs took minutes or all memory on f836a52


def test_descriptors_stored_before_the_limits_still_read_without_them() -> None:
    """A farm stored before these rules is Degraded (strict) but its hosts keep running it (lenient)."""
    old = HEAD.replace("name: f", "name: a--b") + GOOD_SPEC.replace("/24", "/8").replace(
        "memory: 128Mi", "memory: 128Mi, vcpus: 128") + "status: {}\n"
    assert len(_problems(old)) >= 4
    farm = validate(old, "farms/f", strict=False)
    assert farm.name == "a--b" and farm.vms[0].vcpus == 128
    with pytest.raises(DescriptorError, match="aliases"):  # what makes parsing itself costly stays refused
        validate(HEAD + GOOD_SPEC + "x: &a [1]\n", "farms/f", strict=False)
