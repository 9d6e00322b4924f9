"""Moves: the address a host reports from is known to every manager of a group (audit R20 with
several managers: a migrate request may reach a manager the destination does not report to)."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.manager.errors import ApiError
from softudc.manager.service import Manager, init
from softudc.manager.store import SqliteStore


def test_a_reporting_address_noted_by_one_manager_builds_the_uri_on_another(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    store = SqliteStore(tmp_path / "state.db")
    one, other = Manager(tmp_path, store=store), Manager(tmp_path, store=store)
    try:
        store.put("host", "h2", {"joined": 1.0})
        report = {"migration_uri": "qemu+tcp://10.99.0.12/system"}
        with pytest.raises(ApiError):  # nobody has seen h2 report over the network yet
            other._migration_uri("h2", report)
        one.note_address("h2", "10.99.0.12")
        assert other._migration_uri("h2", report) == "qemu+tcp://10.99.0.12/system"
        spec = store.get("host", "h2")
        assert spec is not None and spec.spec["address"] == "10.99.0.12"
        rev = spec.revision
        one.note_address("h2", "10.99.0.12")  # unchanged: nothing written again
        assert store.get("host", "h2").revision == rev  # type: ignore[union-attr]
        one.note_address("h2", "10.99.0.22")  # it moved: the new address is the one named
        with pytest.raises(ApiError):  # the report names an address it does not come from
            other._migration_uri("h2", report)
    finally:
        one.close()
        other.close()
        store.close()
