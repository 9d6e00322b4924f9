"""Status paragraphs in dpkg's field order, paragraphs replaced or inserted in name order, and
dpkg-divert's database."""

from __future__ import annotations

from pathlib import Path

from debian.deb822 import Deb822
from hypothesis import given
from hypothesis import strategies as st

from softudc.images.debpackage import DebPackage
from softudc.images.dpkg import Package, parse_status
from softudc.images.dpkgwrite import diversions, statoverrides, status_paragraph, with_paragraph


def deb(name: str, **fields: str) -> DebPackage:
    control = Deb822()
    control["Package"] = name
    for k, v in {"Version": "1.0", "Architecture": "amd64", "Description": "x\n y", **fields}.items():
        control[k.replace("_", "-")] = v
    return DebPackage(Path(f"{name}.deb"), control)


def test_field_order_and_conffiles() -> None:
    text = status_paragraph(deb("a", Homepage="https://x", Depends="b", Maintainer="m"), "hold",
                            [" /etc/a 0123"]).decode()
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
    assert keys == ["Package", "Status", "Maintainer", "Architecture", "Version", "Depends", "Conffiles",
                    "Description", "Homepage"]
    assert "Status: hold ok installed\n" in text and "Conffiles:\n /etc/a 0123\n" in text


def status_of(names: list[str]) -> bytes:
    return "\n".join(f"Package: {n}\nStatus: install ok installed\nVersion: 1\n" for n in names).encode()


@given(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True), unique=True, max_size=6),
       st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True))
def test_inserted_in_name_order_or_replaced(names: list[str], new: str) -> None:
    names = sorted(names)
    status = status_of(names)
    pkgs = parse_status(status)
    para = status_paragraph(deb(new), "install", [])
    old = next((p for p in pkgs if p.name == new), Package(new, "", "amd64", "install", "not-installed",
                                                            start=-1, end=-1))
    got = parse_status(with_paragraph(status, pkgs, old, para))
    assert [p.name for p in got] == sorted({*names, new})
    assert next(p for p in got if p.name == new).version == "1.0"


def test_diversions() -> None:
    data = b"/bin/sh\n/bin/sh.distrib\ndash\n/usr/bin/x\n/usr/bin/x.real\nother\n"
    assert diversions(data, "dash") == {"/usr/bin/x": "/usr/bin/x.real"}
    assert diversions(data, "bash") == {"/bin/sh": "/bin/sh.distrib", "/usr/bin/x": "/usr/bin/x.real"}
    assert diversions(b"/truncated\n", "x") == {}


def test_statoverrides_resolve_names_in_the_image() -> None:
    data = b"root staff 4750 /usr/bin/a\n#7 #8 0600 /etc/b\nnobody nogroup 0644 /c\nroot root bad /d\nshort line\n"
    passwd, group = b"root:x:0:0::/root:/bin/sh\n", b"root:x:0:\nstaff:x:50:\n"
    assert statoverrides(data, passwd, group) == {"/usr/bin/a": (0, 50, 0o4750), "/etc/b": (7, 8, 0o600)}
