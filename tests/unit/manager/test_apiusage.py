"""GET /v1/usage (softudc/manager/apiusage.py): a viewer sees the farms it may read, a farm it may
not read is refused (403), and this manager's unwritten books are counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from softudc.manager.apiusage import usage
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager, init
from tests.unit.manager.test_apiload import ADMIN, VIEWER
from tests.unit.manager.test_loop import FakeStore
from tests.unit.manager.test_usage import a_load, sample


@pytest.fixture
def m(tmp_path: Path) -> Iterator[Manager]:
    init(tmp_path, ["127.0.0.1"])
    store = FakeStore()
    mgr = Manager(tmp_path, store=store)
    store.put("host", "h1", {"joined": time.time(), "certificate": "f1"})
    mgr.host_status("h1", "h1", {"vcpus": 4, "memory_mib": 8192, "running": ["web--a", "db--x"],
                                 "load": a_load(time.time(), {"web--a": sample(3), "db--x": sample(7)})})
    yield mgr
    mgr.close()
    mgr.close_hosts()


def test_a_viewer_sees_its_farms_only(m: Manager) -> None:
    assert {f["farm"]: f["cpu_seconds"] for f in usage(m, ADMIN)["farms"]} == {"web": 3.0, "db": 7.0}
    assert [f["farm"] for f in usage(m, VIEWER)["farms"]] == ["web"]
    assert [f["farm"] for f in usage(m, ADMIN, farm="db")["farms"]] == ["db"]
    with pytest.raises(ApiError) as e:
        usage(m, VIEWER, farm="db")
    assert e.value.status == 403 and "db" in str(e.value)
