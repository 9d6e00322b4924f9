"""Whether an image's installed packages still fit together after a patch: Depends and
Pre-Depends met (by a package or a Provides), Breaks and Conflicts not hit — checked on the
status paragraphs alone (python-debian parses the relations, its Version compares), before any
content is stored. Only problems the patch would add are reported: an image that was already
inconsistent can still be patched.

Simplifications, each on the safe side or documented: architecture qualifiers are not checked
(an image holds one architecture and `all`, rarely foreign ones); Breaks and Conflicts are
matched on real package names only (a package that conflicts with a virtual name it provides
itself is the common case, and dpkg exempts it too)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from debian.deb822 import Deb822, PkgRelation
from debian.debian_support import Version

RELATIONS: dict[str, Callable[[Version, Version], bool]] = {
    "<<": operator.lt, "<=": operator.le, "=": operator.eq, ">=": operator.ge, ">>": operator.gt,
    "<": operator.le, ">": operator.ge,  # deprecated spellings, which mean <= and >= (deb-control(5))
}
if TYPE_CHECKING:  # python-debian defines the TypedDict for type checkers only
    Rel = PkgRelation.ParsedRelation
UNPACKED = frozenset({"installed", "unpacked", "half-configured", "triggers-awaited", "triggers-pending",
                      "half-installed"})


@dataclass(frozen=True, slots=True)
class Installed:
    name: str
    version: str
    fields: Deb822


def installed(paragraphs: Iterable[Deb822]) -> list[Installed]:
    """The paragraphs whose package is on disk (not config-files nor not-installed)."""
    out = []
    for p in paragraphs:
        words = str(p.get("Status", "")).split()
        if len(words) == 3 and words[2] in UNPACKED and p.get("Package"):
            out.append(Installed(str(p["Package"]), str(p.get("Version", "")), p))
    return out


def relations(fields: Deb822, name: str) -> list[list[Rel]]:
    """A relation field parsed (python-debian warns on an empty one: none is asked for then)."""
    text = str(fields.get(name, "")).strip()
    return PkgRelation.parse_relations(text) if text else []


def _satisfies(version: str, rel: tuple[str, str] | None) -> bool:
    if rel is None:
        return True
    try:
        return RELATIONS[rel[0]](Version(version), Version(rel[1]))
    except (KeyError, ValueError):
        return False


class Universe:
    """Who provides what among the installed packages."""

    def __init__(self, pkgs: list[Installed]) -> None:
        self.real: dict[str, list[str]] = {}
        self.virtual: dict[str, list[str | None]] = {}   # name -> versions provided (None: unversioned)
        for p in pkgs:
            self.real.setdefault(p.name, []).append(p.version)
            for group in relations(p.fields, "Provides"):
                for alt in group:
                    self.virtual.setdefault(alt["name"], []).append(alt["version"][1] if alt["version"] else None)

    def met(self, alt: Rel) -> bool:
        rel = alt["version"]
        name = alt["name"]
        if any(_satisfies(v, rel) for v in self.real.get(name, [])):
            return True
        provided = self.virtual.get(name, [])
        return any(rel is None or (v is not None and _satisfies(v, rel)) for v in provided)

    def hit(self, alt: Rel, self_name: str) -> str | None:
        name = alt["name"]
        if name == self_name:
            return None
        for v in self.real.get(name, []):
            if _satisfies(v, alt["version"]):
                return f"{name} {v}"
        return None


def _text(alt: Rel) -> str:
    rel = alt["version"]
    return f"{alt['name']} ({rel[0]} {rel[1]})" if rel else alt["name"]


def problems(paragraphs: Iterable[Deb822]) -> set[str]:
    """Every unmet dependency and every Breaks/Conflicts hit among the installed packages."""
    pkgs = installed(paragraphs)
    world = Universe(pkgs)
    out: set[str] = set()
    for p in pkgs:
        for field in ("Pre-Depends", "Depends"):
            for group in relations(p.fields, field):
                if group and not any(world.met(alt) for alt in group):
                    out.add(f"{p.name} {p.version} {field.lower()} on {' | '.join(_text(a) for a in group)}")
        for field in ("Breaks", "Conflicts"):
            for group in relations(p.fields, field):
                for alt in group:
                    if (who := world.hit(alt, p.name)) is not None:
                        out.add(f"{p.name} {p.version} {field.lower()} {who}")
    return out


def parse_paragraphs(status: bytes) -> list[Deb822]:
    return list(Deb822.iter_paragraphs(status.decode("utf-8", errors="replace").splitlines(), use_apt_pkg=False))
