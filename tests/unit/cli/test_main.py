"""The `softudc` command line's own commands: `lab status` as text."""

from __future__ import annotations

import argparse

import pytest

import softudc.cli.main as cli_main


def test_lab_status_lists_an_ha_labs_managers_and_etcd_members(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    status = {"hosts": [{"host": "h1", "segment": "a", "underlay": "10.0.0.11", "gatekeeper_alive": True}],
              "endpoints": [],
              "managers": [{"id": "m1", "address": "10.99.0.1", "pid": 41, "alive": True},
                           {"id": "m2", "address": "10.99.0.2", "pid": 42, "alive": False}],
              "etcd": [{"name": "e1", "host": "10.99.0.5", "client_port": 2379, "peer_port": 2380, "pid": 51,
                        "alive": True}]}
    monkeypatch.setattr(cli_main, "lab_status", lambda name, state_dir: status)
    cli_main.cmd_lab_status(argparse.Namespace(name="x", state_dir=None, json=False))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("h1  segment=a")
    assert out[1] == "manager m1  https://10.99.0.1:8443  pid=41  up"
    assert out[2] == "manager m2  https://10.99.0.2:8443  pid=42  DOWN"
    assert out[3] == "etcd e1  http://10.99.0.5:2379  pid=51  up"


def test_lab_status_of_a_plain_lab_says_nothing_of_managers(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    status: dict[str, list[object]] = {"hosts": [], "endpoints": []}
    monkeypatch.setattr(cli_main, "lab_status", lambda name, state_dir: status)
    cli_main.cmd_lab_status(argparse.Namespace(name="x", state_dir=None, json=False))
    assert capsys.readouterr().out == ""
