"""An image's dpkg database, read from the bytes of /var/lib/dpkg/status (deb822 paragraphs,
dpkg(1) "status" file; parsed with python-debian's deb822, versions compared with its Version).

Which packages an image "has" is what `dpkg-query -W` prints inside it: every paragraph whose
state (the third word of Status) is not `not-installed`. That includes half-installed, unpacked
and config-files packages, not only `install ok installed` ones: dpkg-query's show command skips
only not-installed packages when given no pattern (dpkg's querycmd.c), and inspect must print the
same list. `Package.state` says which is which. Names are printed as dpkg-query prints them:
qualified by architecture (`libc6:i386`) for Multi-Arch: same packages and for packages of a
foreign architecture.

The parser never raises anything but `DpkgError` (a ValueError), whose message names the file,
the line and the field: a broken status file in one image must not break a search over all."""

from __future__ import annotations

import operator
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from debian.deb822 import Deb822
from debian.debian_support import Version

STATUS_PATH = "/var/lib/dpkg/status"
INFO_DIR = "/var/lib/dpkg/info"

# dpkg's own vocabulary for the three words of Status (lib/dpkg/parse.c, dpkg(1) "Package states").
WANTS = frozenset({"unknown", "install", "hold", "deinstall", "purge"})
FLAGS = frozenset({"ok", "reinstreq"})
STATES = frozenset({"not-installed", "config-files", "half-installed", "unpacked", "half-configured",
                    "triggers-awaited", "triggers-pending", "installed"})
NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]*\Z")  # Debian policy 5.6.1 (dpkg also accepts one-letter names)
FIELD_RE = re.compile(r"[!-9;-~][!-9;-~]*:")       # a field line: a name of printable non-colon bytes, ":"


class DpkgError(ValueError):
    """A status file (or a package spec) that cannot be read; the message names where and what."""


@dataclass(frozen=True, slots=True)
class Package:
    """One paragraph of the status file: what inspect, diff, search and patch need of it."""

    name: str
    version: str                 # as written ("1:2.36-9+deb12u4"); "" for a not-installed package
    architecture: str            # "amd64", "all", ...
    want: str                    # Status word 1: install, hold, deinstall, purge, unknown
    state: str                   # Status word 3: installed, config-files, half-installed, ...
    flag: str = "ok"             # Status word 2: ok or reinstreq
    installed_size: int | None = None  # KiB, the Installed-Size field
    multi_arch: str = ""
    conffiles: tuple[tuple[str, str], ...] = ()  # (path, md5 of the shipped version) as recorded
    start: int = 0               # byte offsets of the paragraph in the status file (patch rewrites it)
    end: int = 0
    line: int = 1                # its first line (for messages)

    @property
    def listed(self) -> bool:
        """Whether `dpkg-query -W` (no pattern) prints it."""
        return self.state != "not-installed"

    @property
    def info_name(self) -> str:
        """The stem of its files under /var/lib/dpkg/info: `name:arch` for Multi-Arch: same."""
        return f"{self.name}:{self.architecture}" if self.multi_arch == "same" else self.name

    def shown_name(self, native: str) -> str:
        """The name as `dpkg-query -W` prints it in an image of `native` architecture."""
        foreign = self.architecture not in ("all", native, "")
        return f"{self.name}:{self.architecture}" if self.multi_arch == "same" or foreign else self.name

    def as_dict(self, native: str) -> dict[str, object]:
        return {"name": self.shown_name(native), "version": self.version, "architecture": self.architecture,
                "installed_size_kib": self.installed_size, "state": self.state}


def _paragraphs(data: bytes) -> Iterable[tuple[int, int, int, list[bytes]]]:
    """(start offset, end offset, first line number, lines) of each paragraph; blank or
    whitespace-only lines separate them (deb822(5))."""
    start = line_no = first = 0
    lines: list[bytes] = []
    offset = 0
    for line_no, raw in enumerate(data.splitlines(keepends=True), 1):
        if raw.strip():
            if not lines:
                start, first = offset, line_no
            lines.append(raw)
        elif lines:
            yield start, offset, first, lines
            lines = []
        offset += len(raw)
    if lines:
        yield start, offset, first, lines


def _text_lines(lines: list[bytes], where: str, first: int) -> list[str]:
    out = []
    for n, raw in enumerate(lines, first):
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text[0].isspace() and not FIELD_RE.match(text):
            raise DpkgError(f"{where} line {n}: not a field (`Name: value`) nor a continuation line: "
                            f"{text[:60]!r}")
        out.append(text)
    return out


def _status_words(value: str, where: str) -> tuple[str, str, str]:
    words = value.split()
    if len(words) != 3 or words[0] not in WANTS or words[1] not in FLAGS or words[2] not in STATES:
        raise DpkgError(f"{where}: field Status: expected 'WANT FLAG STATE' (e.g. 'install ok installed'), "
                        f"got {value!r}")
    return words[0], words[1], words[2]


def _version(value: str, where: str, state: str) -> str:
    if not value and state in ("not-installed", "config-files"):
        return value
    try:
        Version(value)
    except ValueError:
        raise DpkgError(f"{where}: field Version: not a Debian version: {value!r}") from None
    return value


def _int_or_none(value: str | None, where: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit():
        raise DpkgError(f"{where}: field Installed-Size: not a number of KiB: {value!r}")
    return int(value)


def _conffiles(value: str) -> tuple[tuple[str, str], ...]:
    out = []
    for line in value.splitlines():
        words = line.split()
        if len(words) >= 2:   # "PATH MD5 [obsolete|remove-on-upgrade]"
            out.append((words[0], words[1]))
    return tuple(out)


def _package(fields: Deb822, where: str, start: int, end: int, line: int) -> Package:
    name = fields.get("Package", "")
    if not NAME_RE.match(name):
        raise DpkgError(f"{where}: field Package: missing or not a package name: {name!r}")
    where = f"{where} (package {name})"
    if "Status" not in fields:
        raise DpkgError(f"{where}: no Status field")
    want, flag, state = _status_words(fields["Status"], where)
    return Package(name=name, version=_version(fields.get("Version", ""), where, state),
                   architecture=fields.get("Architecture", ""), want=want, flag=flag, state=state,
                   installed_size=_int_or_none(fields.get("Installed-Size"), where),
                   multi_arch=fields.get("Multi-Arch", ""), conffiles=_conffiles(fields.get("Conffiles", "")),
                   start=start, end=end, line=line)


def parse_status(data: bytes, *, source: str = STATUS_PATH) -> list[Package]:
    """Every paragraph of a dpkg status file, in file order. DpkgError names the line and field."""
    out = []
    for start, end, first, lines in _paragraphs(data):
        where = f"{source} line {first}"
        fields = Deb822(_text_lines(lines, source, first))
        out.append(_package(fields, where, start, end, first))
    return out


def native_arch(packages: Iterable[Package]) -> str:
    """The image's dpkg architecture: the dpkg package's own, else the commonest non-`all` one."""
    counts: Counter[str] = Counter()
    for p in packages:
        if p.name == "dpkg" and p.listed and p.architecture not in ("", "all"):
            return p.architecture
        if p.architecture not in ("", "all"):
            counts[p.architecture] += 1
    return counts.most_common(1)[0][0] if counts else ""


def listed(packages: Iterable[Package]) -> list[Package]:
    """What `dpkg-query -W` prints, in its order (by name, then architecture)."""
    return sorted((p for p in packages if p.listed), key=lambda p: (p.name, p.architecture))


# --- package specs: `openssl<3.0.15`, `openssl>=3.0`, `openssl` ---------------------------------

OPERATORS: dict[str, Callable[[Version, Version], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "=": operator.eq,
}
SPEC_RE = re.compile(r"\s*([a-z0-9][a-z0-9+.-]*)(?::([a-z0-9-]+))?\s*(?:(<=|>=|<<|>>|<|>|==|=)\s*(\S+))?\s*\Z")


@dataclass(frozen=True, slots=True)
class Spec:
    """A package and an optional version bound (Debian version order)."""

    name: str
    op: str = ""
    version: str = ""
    arch: str = ""

    def matches(self, p: Package) -> bool:
        if p.name != self.name or not p.listed or (self.arch and p.architecture != self.arch):
            return False
        if not self.op:
            return True
        try:
            return OPERATORS[self.op](Version(p.version), Version(self.version))
        except ValueError:
            return False


def parse_spec(text: str) -> Spec:
    """`NAME[:ARCH][OP VERSION]` with OP one of < <= = >= > (dpkg's << and >> accepted as < and >)."""
    m = SPEC_RE.match(text)
    if not m:
        raise DpkgError(f"package spec {text!r}: expected NAME, or NAME then one of < <= = >= > and a "
                        "version, e.g. 'openssl<3.0.15'")
    name, arch, op, version = m.group(1), m.group(2) or "", m.group(3) or "", m.group(4) or ""
    op = {"<<": "<", ">>": ">", "==": "="}.get(op, op)
    if op:
        _version(version, f"package spec {text!r}", "installed")
    return Spec(name, op, version, arch)


# --- a small cache of parsed status files, by the status file's content digest ------------------

class StatusCache:
    """Parsed status files by content digest: a status object never changes, and most images of
    a family share few of them, so inspect and search read and parse each one once."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._parsed: OrderedDict[str, list[Package]] = OrderedDict()

    def get(self, digest: str, read: Callable[[], bytes], source: str = STATUS_PATH) -> list[Package]:
        hit = self._parsed.get(digest)
        if hit is None:
            hit = parse_status(read(), source=source)
            self._parsed[digest] = hit
            if len(self._parsed) > self.size:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(digest)
        return hit


CACHE = StatusCache()
