"""Farm descriptors: the samples validate; every broken one in broken/ gets its precise errors
(file:line:col: field.path: message, all at once)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.model.farm import validate
from softudc.model.source import DescriptorError

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
BROKEN = sorted((HERE / "broken").glob("*.yaml"))


def test_there_are_at_least_twenty_broken_descriptors() -> None:
    assert len(BROKEN) >= 20


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "farms").glob("*.yaml")), ids=lambda p: p.name)
def test_sample_farms_validate(path: Path) -> None:
    farm = validate(path.read_text(), str(path))
    assert farm.vms and farm.vnets


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_descriptor_reports_its_errors(path: Path) -> None:
    text = path.read_text()
    # Positions count from the first line after the `# expect:` header (which is stripped).
    header = [line[len("# expect: "):] for line in text.splitlines() if line.startswith("# expect: ")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("# expect: ")) + "\n"
    with pytest.raises(DescriptorError) as e:
        validate(body, path.name)
    got = [str(p) for p in e.value.problems]
    for expected in header:
        positioned = expected[:1].isdigit()
        assert any(g.startswith(f"{path.name}:{expected}") if positioned else expected in g for g in got), \
            f"expected {expected!r} among:\n" + "\n".join(got)


def test_the_demo_farm_expands_replicas_to_stable_names() -> None:
    farm = validate((ROOT / "configs" / "farms" / "demo.yaml").read_text(), "demo.yaml")
    web = next(v for v in farm.vms if v.name == "web")
    assert web.instance_names() == ["web-0", "web-1", "web-2"]
    assert web.memory_mib == 128 and web.group == "web-spread"


@given(st.text(max_size=300))
def test_arbitrary_text_gives_a_farm_or_a_descriptor_error(text: str) -> None:
    try:
        validate(text, "fuzz.yaml")
    except DescriptorError as e:
        assert all(str(p).startswith("fuzz.yaml:") for p in e.problems)
