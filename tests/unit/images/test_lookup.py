"""Path lookups inside a manifest follow the image's symlinks and stay inside the image."""

from __future__ import annotations

from softudc.images.lookup import children, resolve, top_dir
from softudc.images.manifest import Entry

D = "sha256:" + "0" * 64


def tree() -> dict[str, Entry]:
    entries = [
        Entry("/", "dir", 0o755), Entry("/usr", "dir", 0o755), Entry("/usr/lib", "dir", 0o755),
        Entry("/usr/lib/os-release", "file", 0o644, size=1, digest=D),
        Entry("/usr/lib/modules", "dir", 0o755), Entry("/usr/lib/modules/6.1.0-1-amd64", "dir", 0o755),
        Entry("/usr/lib/modules/6.1.0-1-amd64/modules.dep", "file", 0o644, size=1, digest=D),
        Entry("/lib", "symlink", 0o777, target="usr/lib"),
        Entry("/etc", "dir", 0o755), Entry("/etc/os-release", "symlink", 0o777, target="../usr/lib/os-release"),
        Entry("/etc/abs", "symlink", 0o777, target="/usr/lib/os-release"),
        Entry("/etc/escape", "symlink", 0o777, target="../../../../usr/lib/os-release"),
        Entry("/etc/loop", "symlink", 0o777, target="loop"),
        Entry("/etc/dangling", "symlink", 0o777, target="nowhere"),
    ]
    return {e.path: e for e in entries}


def test_follows_relative_absolute_and_directory_links() -> None:
    idx = tree()
    target = idx["/usr/lib/os-release"]
    assert resolve(idx, "/etc/os-release") is target
    assert resolve(idx, "/etc/abs") is target
    assert resolve(idx, "/etc/escape") is target          # ".." stops at the image's root
    assert resolve(idx, "/lib/os-release") is target
    assert resolve(idx, "/lib/modules") is idx["/usr/lib/modules"]
    assert resolve(idx, "/etc/os-release", follow_last=False) is idx["/etc/os-release"]
    assert resolve(idx, "/") is idx["/"]


def test_missing_dangling_and_loops_are_none() -> None:
    idx = tree()
    assert resolve(idx, "/etc/loop") is None
    assert resolve(idx, "/etc/dangling") is None
    assert resolve(idx, "/nope/x") is None


def test_children_and_top_dir() -> None:
    idx = tree()
    assert [e.path for e in children(idx.values(), "/usr/lib/modules")] == ["/usr/lib/modules/6.1.0-1-amd64"]
    assert [e.path for e in children(idx.values(), "/")] == ["/usr", "/lib", "/etc"]
    assert top_dir("/usr/bin/ls") == "/usr" and top_dir("/vmlinuz") == "/" and top_dir("/") == "/"
