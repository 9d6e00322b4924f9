from __future__ import annotations

import io
import os
import posixpath
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softudc.images.importtar import import_tar, member_path, symlink_escapes
from softudc.images.importtree import ImportRefused
from softudc.images.manifest import digest_of, index
from softudc.images.store import ImageStore


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644 if kind != tarfile.DIRTYPE else 0o755
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes], compression: str = "") -> bytes:
    buf = io.BytesIO()
    mode = f"w:{compression}"
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as t:  # type: ignore[call-overload]
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


class Pipe(io.RawIOBase):
    """A stream that cannot seek, like stdin."""

    def __init__(self, data: bytes) -> None:
        self.src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        chunk = self.src.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore.open(tmp_path / "store")


GOOD = [
    member("./", tarfile.DIRTYPE, mode=0o750),
    member("./etc/", tarfile.DIRTYPE),
    member("./etc/passwd", data=b"root\n", uid=0, gid=0),
    member("./etc/hl", tarfile.LNKTYPE, linkname="./etc/passwd"),
    member("./usr/bin/su", data=b"su", mode=0o4755, uid=3, gid=4),
    member("./usr/bin/vi", tarfile.SYMTYPE, linkname="/etc/alternatives/vi"),
    member("./usr/bin/rel", tarfile.SYMTYPE, linkname="../../etc/passwd"),
    member("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
    member("./dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
    member("./run/fifo", tarfile.FIFOTYPE),
    member("./etc/passwd", data=b"root:x\n"),  # repeated: the last one wins
]


@pytest.mark.parametrize("compression", ["", "gz", "xz"])
def test_tar_becomes_entries(store: ImageStore, compression: str) -> None:
    v = import_tar(store, io.BytesIO(tar_bytes(*GOOD, compression=compression)), name="t", source="x.tar")
    assert v.how == "import tar x.tar"
    m = index(store.manifest("t"))
    assert m["/"].mode == 0o750
    assert m["/etc/passwd"].digest == digest_of(b"root:x\n")
    assert m["/etc/hl"].digest == digest_of(b"root\n")  # linked to the member before it was replaced
    assert (m["/usr/bin/su"].mode, m["/usr/bin/su"].uid, m["/usr/bin/su"].gid) == (0o4755, 3, 4)
    assert (m["/usr"].type, m["/usr"].mode, m["/usr/bin"].type) == ("dir", 0o755, "dir")  # implied
    assert m["/usr/bin/vi"].target == "/etc/alternatives/vi"
    assert m["/usr/bin/rel"].target == "../../etc/passwd"
    assert m["/dev/null"].device == "c 1 3" and m["/dev/sda"].device == "b 8 0"
    assert m["/run/fifo"].type == "fifo"


@pytest.mark.parametrize("pipe", [False, True])
def test_zstd_tar(store: ImageStore, pipe: bool) -> None:
    data = zstandard.ZstdCompressor().compress(tar_bytes(*GOOD))
    stream = Pipe(data) if pipe else io.BytesIO(data)
    v = import_tar(store, stream, name="z")  # type: ignore[arg-type]
    assert v.digest == import_tar(store, io.BytesIO(tar_bytes(*GOOD)), name="plain").digest
    with pytest.raises(ImportRefused, match="not a readable tar"):
        import_tar(store, io.BytesIO(data[: len(data) // 2]), name="z")


def test_pipe_is_spooled(store: ImageStore) -> None:
    notes: list[str] = []
    v = import_tar(store, Pipe(tar_bytes(*GOOD)), name="t", progress=notes.append)  # type: ignore[arg-type]
    assert store.resolve("t").digest == v.digest
    assert any("spooling" in n for n in notes)


def test_xattrs_from_pax(store: ImageStore) -> None:
    info, data = member("f", data=b"x")
    info.pax_headers = {"SCHILY.xattr.security.capability": b"\x01\x00\xff".decode("utf-8", "surrogateescape"),
                        "SCHILY.xattr.user.a": "b"}
    acl, _ = member("g", data=b"y")
    acl.pax_headers = {"SCHILY.acl.access": "user::rw-,group::r--,other::r--"}
    notes: list[str] = []
    import_tar(store, io.BytesIO(tar_bytes((info, data), (acl, b"y"))), name="t", progress=notes.append)
    assert index(store.manifest("t"))["/f"].xattrs == (("security.capability", "AQD/"), ("user.a", "Yg=="))
    assert any("1 members carry POSIX ACLs" in n for n in notes)


BAD = {
    "absolute": [member("/etc/passwd", data=b"x")],
    "dotdot": [member("a/../../etc/passwd", data=b"x")],
    "dotdot-inside": [member("a/../b", data=b"x")],
    "symlink-escape": [member("a/l", tarfile.SYMTYPE, linkname="../../etc/shadow")],
    "abs-symlink-escape": [member("l", tarfile.SYMTYPE, linkname="/../../etc/shadow")],
    "through-symlink": [member("evil", tarfile.SYMTYPE, linkname="/etc"), member("evil/passwd", data=b"x")],
    "below-file": [member("f", data=b"x"), member("f/g", data=b"y")],
    "hardlink-out": [member("h", tarfile.LNKTYPE, linkname="/etc/shadow")],
    "hardlink-dotdot": [member("h", tarfile.LNKTYPE, linkname="../etc/shadow")],
    "hardlink-missing": [member("h", tarfile.LNKTYPE, linkname="nothere")],
    "dir-replaced": [member("d/f", data=b"x"), member("d", data=b"y")],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tar_is_refused_and_nothing_stored(store: ImageStore, case: str) -> None:
    members = [member("ok", data=b"stored before the bad member"), *BAD[case]]
    bad_name = members[-1][0].name
    with pytest.raises(ImportRefused) as e:
        import_tar(store, io.BytesIO(tar_bytes(*members)), name="t", source="bad.tar")
    assert "bad.tar" in str(e.value) and repr(bad_name) in str(e.value)
    assert list(store.content.objects()) == [] and store.tags() == {}


@pytest.mark.parametrize(("compression", "keep"), [("", 0), ("", 100), ("", 700), ("", 3000), ("gz", 0),
                                                  ("gz", 0.5), ("bz2", 0.5), ("xz", 0.5)])
def test_truncated_or_empty_tar(store: ImageStore, compression: str, keep: float) -> None:
    data = tar_bytes(member("f", data=os.urandom(10000)), member("g", data=b"y"), compression=compression)
    cut = int(len(data) * keep) if keep < 1 else int(keep)
    with pytest.raises(ImportRefused, match=r"cut\.tar: not a readable tar archive"):
        import_tar(store, io.BytesIO(data[:cut]), name="t", source="cut.tar")
    assert store.tags() == {} and list(store.content.objects()) == []


def test_symlink_escapes() -> None:
    assert not symlink_escapes("/a/b/l", "../../x")
    assert symlink_escapes("/a/b/l", "../../../x")
    assert not symlink_escapes("/l", "/etc/../etc/x")
    assert symlink_escapes("/l", "/../x")
    assert symlink_escapes("/a/l", "x/../../../y")
    assert not symlink_escapes("/a/l", "./x/./y/../..")


_names = st.lists(st.sampled_from(["a", "b", ".", "..", "", "é", "x y"]), min_size=1, max_size=6).map("/".join)


@given(_names)
def test_member_path_never_escapes(name: str) -> None:
    try:
        path = member_path(name)
    except ValueError:
        assert name.startswith("/") or ".." in name.split("/")
        return
    assert path.startswith("/")
    assert posixpath.normpath(path) == path
    assert ".." not in path.split("/")


@given(st.text(alphabet="ab./", max_size=12), st.text(alphabet="ab./", min_size=1, max_size=12))
def test_symlink_escape_agrees_with_normpath(name: str, target: str) -> None:
    try:
        path = member_path(name)
    except ValueError:
        return
    base = "/" if target.startswith("/") else posixpath.dirname(path)
    joined = posixpath.join("/r" + base, target.lstrip("/"))  # under a fake root /r
    if not symlink_escapes(path, target):
        assert posixpath.normpath(joined) == "/r" or posixpath.normpath(joined).startswith("/r/")


_part = st.sampled_from(["a", "b", "é", "x y", ".", "..", ""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_part, min_size=1, max_size=4).map("/".join), min_size=1, max_size=5),
       st.booleans())
def test_random_archives_import_or_are_refused_whole(tmp_path: Path, names: list[str], lead: bool) -> None:
    """An archive of files under random names: either every name is safe and the manifest holds
    exactly the normalised names (and their implied parents), or nothing is stored."""
    store = ImageStore.open(tmp_path / f"s{len(list(tmp_path.iterdir()))}")
    members = [member(("/" if lead and i == 0 else "") + n, data=n.encode()) for i, n in enumerate(names)]
    try:
        import_tar(store, io.BytesIO(tar_bytes(*members)), name="t")
    except ImportRefused:
        assert list(store.content.objects()) == [] and store.tags() == {}
        return
    paths = {e.path for e in store.manifest("t")}
    for n in names:
        p = member_path(n)
        assert p in paths
        while p != "/":
            p = posixpath.dirname(p)
            assert p in paths


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("fmt", ["gnu", "posix", "oldgnu"])
def test_gnu_sparse_members(tmp_path: Path, store: ImageStore, fmt: str) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    with open(tree / "s", "wb") as f:
        f.seek(300000)
        f.write(b"mid")
        f.truncate(1 << 20)
    archive = tmp_path / "s.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-C", str(tree), "-cf", str(archive), "."], check=True)
    with open(archive, "rb") as f:
        v = import_tar(store, f, name="s")
    e = index(store.manifest(v.digest))["/s"]
    assert (e.size, e.digest) == (1 << 20, digest_of((tree / "s").read_bytes()))
