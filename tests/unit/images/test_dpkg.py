"""The dpkg status parser against dpkg-query itself (run on the same file with --admindir), its
errors, package specs and the parse cache."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.images.dpkg import (
    DpkgError,
    Package,
    StatusCache,
    listed,
    native_arch,
    parse_spec,
    parse_status,
)


def stanza(name: str, status: str, version: str = "1.0", arch: str = "amd64", extra: str = "") -> str:
    return (f"Package: {name}\nStatus: {status}\nPriority: optional\nInstalled-Size: 12\n"
            f"Maintainer: Someone <someone@example.org>\nArchitecture: {arch}\n{extra}"
            f"Version: {version}\nDescription: a package\n second line\n .\n more\n")


STATUS = "\n".join([
    stanza("dpkg", "install ok installed", "1.21.22"),
    stanza("libc6", "install ok installed", "2.36-9+deb12u4", extra="Multi-Arch: same\n"),
    stanza("libc6", "install ok installed", "2.36-9+deb12u4", arch="i386", extra="Multi-Arch: same\n"),
    stanza("oldconf", "deinstall ok config-files", "2.0",
           extra="Conffiles:\n /etc/oldconf.conf 0123456789abcdef0123456789abcdef\n"),
    stanza("gone", "purge ok not-installed", "").replace("Version: \n", ""),
    stanza("broken", "install reinstreq half-installed", "3.0"),
    stanza("unpacked", "install ok unpacked", "1:4.0~rc1"),
    stanza("foreign", "install ok installed", "5", arch="arm64"),
    stanza("held", "hold ok installed", "6", arch="all"),
    stanza("openssl", "install ok installed", "3.0.11-1~deb12u2"),
]).encode()


def test_parses_every_paragraph_with_offsets() -> None:
    pkgs = parse_status(STATUS)
    assert [p.name for p in pkgs][:3] == ["dpkg", "libc6", "libc6"]
    assert len(pkgs) == 10
    for p in pkgs:
        assert STATUS[p.start:p.end].startswith(b"Package: " + p.name.encode())
    oldconf = pkgs[3]
    assert oldconf.state == "config-files" and oldconf.want == "deinstall"
    assert oldconf.conffiles == (("/etc/oldconf.conf", "0123456789abcdef0123456789abcdef"),)
    assert pkgs[0].installed_size == 12 and pkgs[1].info_name == "libc6:amd64" and pkgs[0].info_name == "dpkg"


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query")
def test_listed_is_what_dpkg_query_shows(tmp_path: Path) -> None:
    (tmp_path / "status").write_bytes(STATUS)
    (tmp_path / "available").write_bytes(b"")
    (tmp_path / "info").mkdir()
    (tmp_path / "updates").mkdir()
    # dpkg-query's own native architecture is the build machine's; the image's is its dpkg's (amd64)
    out = subprocess.run(["dpkg-query", f"--admindir={tmp_path}", "-W"], capture_output=True, text=True,
                         check=True).stdout
    pkgs = parse_status(STATUS)
    arch = native_arch(pkgs)
    ours = "".join(f"{p.shown_name(arch)}\t{p.version}\n" for p in listed(pkgs))
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    if host == arch:
        assert ours == out
    assert "gone" not in ours and "oldconf\t2.0" in ours and "foreign:arm64\t5" in ours


def test_native_arch_without_dpkg_is_the_commonest() -> None:
    pkgs = [Package("a", "1", "arm64", "install", "installed"), Package("b", "1", "arm64", "install", "installed"),
            Package("c", "1", "all", "install", "installed"), Package("d", "1", "amd64", "install", "installed")]
    assert native_arch(pkgs) == "arm64"
    assert native_arch([]) == ""


@pytest.mark.parametrize(("text", "message"), [
    (b"Package: a\nStatus: install ok installed\nVersion: 1\nthis is not a field\n", "line 8: not a field"),
    (b"Package: a\nStatus: install ok\nVersion: 1\n", "field Status"),
    (b"Package: a\nStatus: install ok sideways\nVersion: 1\n", "field Status"),
    (b"Package: a\nVersion: 1\n", "no Status field"),
    (b"Package: A_b\nStatus: install ok installed\n", "field Package"),
    (b"Status: install ok installed\n", "field Package"),
    (b"Package: a\nStatus: install ok installed\nVersion: 1 2\n", "field Version"),
    (b"Package: a\nStatus: install ok installed\nVersion: 1\nInstalled-Size: lots\n", "field Installed-Size"),
])
def test_errors_name_line_and_field(text: bytes, message: str) -> None:
    with pytest.raises(DpkgError, match=message) as e:
        parse_status(b"Package: ok\nStatus: install ok installed\nVersion: 1\n\n" + text, source="img:/status")
    assert "img:/status line " in str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_raises_only_dpkg_error(data: bytes) -> None:
    with contextlib.suppress(DpkgError):
        parse_status(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9][a-z0-9+.-]{0,12}", fullmatch=True),
                          st.from_regex(r"([1-9]:)?[0-9][0-9a-z.+~]{0,6}(-[0-9a-z.+~]{1,4})?", fullmatch=True)),
                max_size=8))
def test_round_trip_of_written_paragraphs(pkgs: list[tuple[str, str]]) -> None:
    text = "\n".join(stanza(n, "install ok installed", v) for n, v in pkgs).encode()
    got = parse_status(text)
    assert [(p.name, p.version) for p in got] == pkgs


def test_specs_follow_debian_version_order() -> None:
    openssl = Package("openssl", "3.0.11-1~deb12u2", "amd64", "install", "installed")
    assert parse_spec("openssl<3.0.15").matches(openssl)
    assert parse_spec("openssl < 3.0.11-1").matches(openssl)        # ~ sorts before anything
    assert not parse_spec("openssl<=3.0.11-1~deb12u1").matches(openssl)
    assert parse_spec("openssl>=3.0.11-1~deb12u2").matches(openssl)
    assert parse_spec("openssl=3.0.11-1~deb12u2").matches(openssl)
    assert not parse_spec("openssl>1:0").matches(openssl)            # an epoch outweighs the rest
    assert parse_spec("openssl").matches(openssl) and not parse_spec("libssl3").matches(openssl)
    assert parse_spec("openssl:amd64").matches(openssl) and not parse_spec("openssl:i386").matches(openssl)
    assert parse_spec("openssl>>3").op == ">"
    gone = Package("openssl", "3.0", "amd64", "deinstall", "not-installed")
    assert not parse_spec("openssl").matches(gone)


@pytest.mark.parametrize("text", ["", "Openssl", "openssl<", "openssl<3 0", "openssl!3", "openssl<=a b"])
def test_bad_specs(text: str) -> None:
    with pytest.raises(DpkgError, match="spec"):
        parse_spec(text)


def test_cache_parses_once() -> None:
    cache = StatusCache(size=2)
    reads: list[str] = []

    def reader(d: str) -> bytes:
        reads.append(d)
        return STATUS

    for d in ("a", "a", "b", "a", "c", "b"):
        cache.get(d, lambda d=d: reader(d))  # type: ignore[misc]
    assert reads == ["a", "b", "c", "b"]


LINES = st.sampled_from(["Package: a", "Package: b+c", "Package: ", "Status: install ok installed",
                         "Status: purge ok not-installed", "Status: x", "Version: 1:2.0-1", "Version: ",
                         "Version: a b", " continuation", " .", "\t tab", "Installed-Size: 12",
                         "Installed-Size: x", "Conffiles:", " /etc/x 0123 obsolete", "Multi-Arch: same",
                         "", " ", "\x1c", "Architecture: amd64", "garbage", ":", "Description: é", "\r"])


@settings(max_examples=400, deadline=None)
@given(st.lists(LINES, max_size=30))
def test_structured_garbage_raises_only_dpkg_error(lines: list[str]) -> None:
    with contextlib.suppress(DpkgError):
        for p in parse_status("\n".join(lines).encode()):
            assert p.name and p.state
