"""The volumes on the console: the farm page's section (and its fragment) and the VM page's, with
each volume's VM, size, class, storage host and state (planned, held once its host reports it,
unplaced with why); the VM page's image as the descriptor names it."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.console.volumespage import image_of
from softudc.model.farm import VmDef
from tests.unit.console.test_views import ADMIN, DEMO, Lab

GiB = 1 << 30
VOLUMES = """      volumes:
        - {name: data, size: 2Gi, class: remote, keep: true}
        - {name: big, size: 64Ti}
"""
FARM = DEMO.replace("        - {vnet: back, address: 10.0.0.20}\n",
                    "        - {vnet: back, address: 10.0.0.20}\n" + VOLUMES, 1)


def report(lab: Lab, host: str, **extra: object) -> None:
    lab.m.host_status(host, host, {"vcpus": 8, "memory_mib": 8192, "running": [], "contract": 3,
                                   "pool": {"capacity_bytes": 10 * GiB, "free_bytes": 10 * GiB}, **extra})


def farm_with_volumes(lab: Lab) -> str:
    """The demo farm with db's volumes on one pooled host h1; the data volume's planned host."""
    assert FARM != DEMO
    lab.m.store.put("host", "h1", {"joined": time.time()})
    report(lab, "h1")
    lab.m.settle()
    lab.m.put_farm(ADMIN, "demo", FARM, None)
    lab.m.settle()
    return "h1"


def test_the_farm_page_lists_its_volumes_planned_then_held(lab: Lab) -> None:
    host = farm_with_volumes(lab)
    page = lab.client(lab.viewer).get("/console/farms/demo").text
    assert 'id="volumes"' in page and 'hx-trigger="sse:farm-demo, sse:hosts"' in page
    assert '<tr data-volume="demo--db-0--data">' in page and "/console/farms/demo/vms/db-0" in page
    assert "2Gi" in page and f"<td>{host}" in page and 'data-state="planned"' in page
    assert 'data-state="unplaced"' in page and "the volume needs 70368744177664" in page
    export = {"address": "192.0.2.1", "port": 10810, "allowed": [host]}
    report(lab, host, volumes={"demo--db-0--data": export})
    frag = lab.client(lab.viewer).get("/console/fragments/farms/demo/volumes").text
    assert 'data-state="held"' in frag and "<code>192.0.2.1:10810</code>" in frag
    assert "<html" not in frag


def test_the_volumes_fragment_of_a_farm_out_of_reach_says_gone(lab: Lab) -> None:
    farm_with_volumes(lab)
    lab.m.put_farm(ADMIN, "other", FARM.replace("name: demo", "name: other", 1), None)
    v = lab.client(lab.viewer)
    assert "farm gone" in v.get("/console/fragments/farms/other/volumes").text
    assert "demo--db-0--data" in v.get("/console/fragments/farms/demo/volumes").text
    assert "other--db-0" not in v.get("/console/fragments/farms/demo/volumes").text


def test_a_farm_without_volumes_says_so(lab: Lab) -> None:
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    assert "no volume" in lab.client(lab.admin).get("/console/farms/demo").text


def test_the_vm_page_shows_its_own_volumes_and_image(lab: Lab) -> None:
    farm_with_volumes(lab)
    c = lab.client(lab.admin)
    html = c.get("/console/farms/demo/vms/db-0").text
    assert 'data-volume="demo--db-0--data"' in html and 'data-volume="demo--db-0--big"' in html
    assert 'data-field="image">test-guest<' in html and "no version named" in html
    web = c.get("/console/fragments/farms/demo/vms/web-0").text
    assert "data-volume=" not in web and "no volume" in web


@pytest.mark.parametrize(("image", "name", "version"), [
    ("test-guest", "test-guest", ""), ("debian:12.5", "debian", "12.5"), ("base@3", "base", "3"),
    ("odd:", "odd:", ""), (":x", ":x", "")])
def test_image_of_names_the_version_the_descriptor_gives(image: str, name: str, version: str) -> None:
    vm = VmDef("db", 1, 1, 128, image, ())
    assert image_of(vm) == {"name": name, "version": version}
    assert image_of(None) is None


def test_a_named_version_is_shown_apart_from_the_image_name(lab: Lab) -> None:
    lab.m.put_farm(ADMIN, "demo", DEMO.replace("image: test-guest", "image: test-guest:7"), None)
    lab.m.store.put("host", "h1", {"joined": time.time()})
    report(lab, "h1")
    lab.m.settle()
    html = lab.client(lab.admin).get("/console/fragments/farms/demo/vms/db-0").text
    assert 'data-field="image">test-guest<' in html and 'data-field="image-version">version 7<' in html


@given(st.text(min_size=1, max_size=40))
def test_image_of_splits_without_losing_or_inventing_text(image: str) -> None:
    got = image_of(VmDef("db", 1, 1, 128, image, ()))
    assert got is not None and got["name"]
    if got["version"]:
        assert image in (f"{got['name']}@{got['version']}", f"{got['name']}:{got['version']}")
    else:
        assert got["name"] == image
