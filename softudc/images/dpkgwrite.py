"""Writing an image's dpkg database the way dpkg writes it: a status paragraph in dpkg's field
order, the status file with one paragraph replaced or inserted in name order, and reading
dpkg-divert's diversions and dpkg-statoverride's overrides. Bytes in, bytes out: patch.py puts
the results into the tree."""

from __future__ import annotations

from debian.deb822 import Deb822

from softudc.images import dpkg
from softudc.images.debpackage import DebPackage

# The order dpkg writes a status paragraph's fields in (lib/dpkg/parse.c fieldinfos[]); any other
# field (Homepage, Built-Using, ...) follows, in the control file's order. Written the same way,
# a patched paragraph reads like one dpkg wrote.
FIELD_ORDER = ("Package", "Essential", "Protected", "Status", "Priority", "Section", "Installed-Size", "Origin",
               "Maintainer", "Bugs", "Architecture", "Multi-Arch", "Source", "Version", "Config-Version",
               "Replaces", "Provides", "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks", "Conflicts",
               "Enhances", "Conffiles", "Description", "Triggers-Pending", "Triggers-Awaited")


def status_paragraph(deb: DebPackage, want: str, conffiles: list[str], *, state: str = "installed",
                     config_version: str = "") -> bytes:
    """The package's status paragraph: its control fields with Status (and Conffiles, and the
    configured version of an unpacked package) added, in dpkg's order."""
    fields = {k: v for k, v in deb.control.items() if k not in ("Status", "Conffiles", "Config-Version")}
    fields["Status"] = f"{want} ok {state}"
    if config_version:
        fields["Config-Version"] = config_version
    if conffiles:
        fields["Conffiles"] = "\n" + "\n".join(conffiles)
    out = Deb822()
    for key in [k for k in FIELD_ORDER if k in fields] + [k for k in fields if k not in FIELD_ORDER]:
        out[key] = fields[key]
    return str(out.dump()).encode()


def with_paragraph(status: bytes, pkgs: list[dpkg.Package], old: dpkg.Package, paragraph: bytes) -> bytes:
    """The status file with `old`'s paragraph replaced by `paragraph`, or, for a package new to the
    image, the paragraph inserted where dpkg keeps it (the file is sorted by package name)."""
    if old.start >= 0:
        return status[:old.start] + paragraph + status[old.end:]
    after = [p for p in pkgs if p.name > old.name]
    if after:
        return status[:after[0].start] + paragraph + b"\n" + status[after[0].start:]
    return status.rstrip(b"\n") + b"\n\n" + paragraph if status.strip() else paragraph


def diversions(data: bytes, package: str) -> dict[str, str]:
    """dpkg-divert's database (/var/lib/dpkg/diversions: path, diverted-to, diverting package, three
    lines each): where `package`'s files go instead, for the paths other packages diverted."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return {lines[i]: lines[i + 1] for i in range(0, len(lines) - 2, 3) if lines[i + 2] != package}


def _ids(table: bytes) -> dict[str, int]:
    """name -> id from /etc/passwd or /etc/group (NAME:x:ID:...)."""
    out: dict[str, int] = {}
    for line in table.decode("utf-8", errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            out.setdefault(fields[0], int(fields[2]))
    return out


def statoverrides(data: bytes, passwd: bytes, group: bytes) -> dict[str, tuple[int, int, int]]:
    """dpkg-statoverride's database (/var/lib/dpkg/statoverride: `USER GROUP MODE PATH` a line,
    USER and GROUP names or #IDs) as path -> (uid, gid, mode), names looked up in the image's own
    passwd and group; a line that cannot be resolved is skipped, as dpkg skips it."""
    users, groups = _ids(passwd), _ids(group)
    out: dict[str, tuple[int, int, int]] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        words = line.split(maxsplit=3)
        if len(words) != 4:
            continue
        user, grp, mode, path = words
        uid = int(user[1:]) if user.startswith("#") and user[1:].isdigit() else users.get(user)
        gid = int(grp[1:]) if grp.startswith("#") and grp[1:].isdigit() else groups.get(grp)
        try:
            bits = int(mode, 8) & 0o7777
        except ValueError:
            continue
        if uid is not None and gid is not None:
            out[path] = (uid, gid, bits)
    return out
