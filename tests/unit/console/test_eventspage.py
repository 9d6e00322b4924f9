"""The event log page: filters by kind, name and type; a viewer sees its farms' events only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.console.test_views import ADMIN, DEMO, Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    lab.m.put_farm(ADMIN, "other", DEMO.replace("name: demo", "name: other", 1), None)
    lab.m.store.event("host", "h1", "Draining", "by admin: 2 VM(s) to move")
    lab.m.store.event("farm", "demo", "Migrating", "by admin: web-0 h1 -> h2 (live)")
    yield lab
    lab.m.close()


def test_filters(lab: Lab) -> None:
    c = lab.client(lab.admin)
    everything = c.get("/console/events").text
    assert "Draining" in everything and "Migrating" in everything and "other" in everything
    hosts = c.get("/console/events?kind=host").text
    assert 'data-type="Draining"' in hosts and 'data-type="Applied"' not in hosts
    migr = c.get("/console/fragments/events?type=migr").text  # part of the type, any case
    assert 'data-type="Migrating"' in migr and 'data-type="Applied"' not in migr
    demo = c.get("/console/events?kind=farm&name=demo").text
    assert "hx-get=\"/console/fragments/events?kind=farm&amp;name=demo\"" in demo
    assert "by admin: revision" in demo and ">other<" not in demo


def test_a_viewer_sees_its_farms_only_and_bad_filters_say_why(lab: Lab) -> None:
    v = lab.client(lab.viewer)
    html = v.get("/console/events").text
    assert "Migrating" in html and "Draining" not in html and ">other<" not in html
    assert "403" in v.get("/console/events?kind=host").text
    assert "kind: &#39;bogus&#39;" in lab.client(lab.admin).get("/console/events?kind=bogus").text
