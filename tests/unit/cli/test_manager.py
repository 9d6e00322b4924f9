"""The admin commands against a manager reached by URL (not a lab): `softudc init` saves the admin
token where the CLI finds it; a viewer token reads but cannot apply; clear errors without a CA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from softudc.manager.auth import TokenStore
from softudc.manager.daemon import serve
from softudc.manager.service import Manager

ROOT = Path(__file__).parents[3]


def softudc(state: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTUDC_")}
    if token:
        env["SOFTUDC_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "softudc.cli", "--state-dir", str(state), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_init_then_apply_get_and_delete_by_url(tmp_path: Path) -> None:
    out = softudc(tmp_path, "init", "--address", "127.0.0.1")
    assert out.returncode == 0, out.stderr
    saved = tmp_path / "manager" / "admin.token"
    assert str(saved) in out.stdout and saved.stat().st_mode & 0o777 == 0o600
    server = serve(Manager(tmp_path / "manager"), "127.0.0.1", 0)
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        # No host has joined: stored, but nothing can be placed; apply says so and exits 1.
        applied = softudc(tmp_path, "apply", "-f", "configs/farms/demo.yaml", "--manager", url)
        assert applied.returncode == 1 and "farm demo applied" in applied.stdout
        assert "4 instance(s) of demo cannot be placed" in applied.stderr, applied.stderr
        assert "web-0: cannot be placed: there are no hosts" in applied.stdout
        farms = json.loads(softudc(tmp_path, "get", "farms", "-o", "json", "--manager", url).stdout)
        assert [f["name"] for f in farms] == ["demo"]
        # A viewer token (from $SOFTUDC_TOKEN) reads, and is refused an apply with a clear message.
        viewer = TokenStore(tmp_path / "manager" / "tokens.json").create("ann", "viewer", ["demo"])
        assert softudc(tmp_path, "get", "farms", "--manager", url, token=viewer).returncode == 0
        refused = softudc(tmp_path, "apply", "-f", "configs/farms/demo.yaml", "--manager", url, token=viewer)
        assert refused.returncode == 1 and "may not change farm 'demo'" in refused.stderr
        gone = softudc(tmp_path, "delete", "farm", "demo", "--manager", url, "--wait")
        assert gone.returncode == 0, gone.stderr
        assert softudc(tmp_path, "get", "farms", "--manager", url).stderr.strip() == "no farms"
    finally:
        server.shutdown()


def test_without_a_ca_the_cli_says_what_to_pass(tmp_path: Path) -> None:
    out = softudc(tmp_path, "get", "farms", "--manager", "https://127.0.0.1:1")
    assert out.returncode == 1 and "--ca" in out.stderr and "no CA certificate" in out.stderr
