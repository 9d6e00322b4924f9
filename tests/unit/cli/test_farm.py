"""`softudc plan`: the admin's view of validation errors and of a plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[3]


def softudc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "softudc.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_a_good_farm_prints_its_plan() -> None:
    out = softudc("plan", "-f", "configs/farms/demo.yaml", "--host", "h1:8:16Gi", "--host", "h2:8:16Gi",
                  "--host", "h3:8:16Gi")
    assert out.returncode == 0, out.stderr
    assert "+ web-2" in out.stdout and "db-0" in out.stdout


def test_a_broken_farm_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: softudc.io/v1alpha1\nkind: Farm\nmetadata: {name: X}\nspec:\n"
                   "  vnets: [{name: a, subnet: nope}]\n  vms: []\n  extra: 1\n")
    out = softudc("plan", "-f", str(bad), "--host", "h1:8:16Gi")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert f"{bad}:3:18: metadata.name: 'X' is not a name" in lines[0]
    assert any(f"{bad}:5:29: spec.vnets[0].subnet" in line for line in lines)
    assert any(f"{bad}:7:3: spec.extra: unknown field" in line for line in lines)
    assert lines[-1].endswith("3 problem(s); nothing was changed")


def test_an_impossible_farm_says_why_and_exits_1() -> None:
    out = softudc("plan", "-f", "configs/farms/demo.yaml", "--host", "h1:8:16Gi", "--host", "h2:8:16Gi")
    assert out.returncode == 1
    assert "cannot be placed" in out.stdout and "anti-affinity group web-spread" in out.stdout
