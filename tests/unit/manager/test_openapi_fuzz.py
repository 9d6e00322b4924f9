"""schemathesis, driven by the manager's own OpenAPI document, finds no 5xx (loopback only)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from softudc.manager.daemon import serve
from softudc.manager.service import Manager, init


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.fail("schemathesis is not installed; run `make bootstrap`")
    token = init(tmp_path, ["127.0.0.1"])
    server = serve(Manager(tmp_path), "127.0.0.1", 0)
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/v1/openapi.json"
        out = subprocess.run([st, "run", url, "--checks", "not_a_server_error", "-H", f"Authorization: Bearer {token}",
                              "--tls-verify", "false", "--max-examples", "25", "--seed", "1798"],
                             capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
    assert " passed" in out.stdout
