"""`softudc usage` through the manager's app (TestClient): table, CSV, JSON, --farm, --since (and
its parser), GET /v1/usage refusing a bad since."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from softudc.cli.errors import CliError
from softudc.cli.main import build_parser
from softudc.cli.usage import parse_since
from softudc.manager.api import make_app
from softudc.manager.service import Manager, init
from tests.unit.cli.test_top import Api
from tests.unit.manager.test_loop import FakeStore
from tests.unit.manager.test_usage import a_load, sample


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    token = init(tmp_path, ["127.0.0.1"])
    store = FakeStore()
    m = Manager(tmp_path, store=store)
    store.put("host", "h1", {"joined": time.time(), "certificate": "f1"})
    now = time.time()
    for i, cpu in enumerate((10, 40)):  # web--a: 40 CPU-seconds in all, 1 GiB held for 30 s
        m.host_status("h1", "h1", {"vcpus": 4, "memory_mib": 4096, "running": ["web--a", "db--b"], "load": a_load(
            now - 30 + 30 * i, {"web--a": sample(cpu, net=[(3, 1000 * (i + 1), 500)]), "db--b": sample(2)})})
    with TestClient(make_app(m), base_url="https://testserver") as client:
        a = Api(client, token)
        monkeypatch.setattr("softudc.cli.usage.connect", lambda _: a)
        yield a
    m.close()
    m.close_hosts()


def run(*args: str) -> None:
    a = build_parser().parse_args(["usage", *args])
    a.fn(a)


def test_table_rows_per_vm_then_farm(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    run()
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0][:3] == ["FARM", "VM", "CPU_SECONDS"]
    assert ["web", "web--a", "40.0", "0.0083", "0.0000", "2000", "500"] in lines  # 1 GiB x 30 s = 0.0083 GiB-h
    assert ["web", "*", "40.0", "0.0083", "0.0000", "2000", "500"] in lines and lines[2][:2] == ["db", "*"]


def test_json_csv_farm_and_since(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    run("-o", "json", "--farm", "web")
    body = json.loads(capsys.readouterr().out)
    assert [f["farm"] for f in body["farms"]] == ["web"]
    assert body["farms"][0]["network"] == [{"vnet": 3, "rx_bytes": 2000, "tx_bytes": 500}]
    run("-o", "csv", "--since", "1d")
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0][:2] == ["farm", "vm"] and len(table) == 5
    run("-o", "csv", "--since", str(time.time() + 7200))
    assert capsys.readouterr().out.strip() == "farm,vm,cpu_seconds,memory_gib_hours,volume_gib_hours,rx_bytes,tx_bytes"
    with pytest.raises(CliError, match="expected an ISO date"):
        run("--since", "yesterday")


def test_the_api_answers_and_refuses_a_negative_since(api: Api) -> None:
    code, body = api.call("GET", "/v1/usage?farm=web&since=-1")
    assert code == 400 and "since" in json.dumps(body)
    code, body = api.call("GET", "/v1/usage")
    assert code == 200 and {f["farm"] for f in body["farms"]} == {"web", "db"} and body["since"] is None


def test_parse_since_forms() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2026-11-27T00:00") == parse_since("2026-11-27T00:00+00:00") == 1795737600.0


@given(st.text(max_size=30))
def test_parse_since_takes_a_time_or_says_what_it_expects(text: str) -> None:
    try:
        assert isinstance(parse_since(text, now=0.0), float)
    except ValueError as e:
        assert "--since" in str(e)
