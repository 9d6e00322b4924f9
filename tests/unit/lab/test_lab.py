"""softudc/lab/lab.py: the pieces that need no namespaces (the rest is exercised by tests/e2e)."""

import pytest

from softudc.lab.lab import _datapath_line
from softudc.lab.state import LabSpec


def test_the_lab_s_datapath_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", "ebpf")
    assert _datapath_line(LabSpec("a", datapath="userspace")) == 'datapath = "userspace"\n'
    assert _datapath_line(LabSpec("a")) == 'datapath = "ebpf"\n'


def test_neither_leaves_the_gatekeeper_s_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOFTUDC_LAB_DATAPATH", raising=False)
    assert _datapath_line(LabSpec("a")) == ""
