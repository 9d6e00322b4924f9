"""Integrity check of the image store: re-hash objects and name, for each bad one, every image and
path that uses it.

Every object is decompressed and hashed against its name (content.py). An object is *corrupt*
when its bytes do not match, *missing* when a manifest names it and it is not there. Each problem
lists its users, (image, path): the image by its tags ("web:2, web:latest"), the path of the
file in the image, or "(manifest)" when the object is the version's manifest itself. Without refs
the whole store is checked (unused objects too); with refs, only what those versions use.

Repair is re-importing the images named: `move_aside` first takes the corrupt object out of the
way (to ROOT/corrupt/), since storing content that is already there reuses the stored object.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from softudc.images.content import IntegrityError, MissingObjectError
from softudc.images.manifest import ManifestError, parse_manifest
from softudc.images.store import ImageStore

MANIFEST = "(manifest)"
Progress = Callable[[str], None]


@dataclass
class Problem:
    digest: str
    kind: str                    # "missing" | "corrupt"
    detail: str                  # what was found
    users: list[tuple[str, str]] = field(default_factory=list)  # (image, path)
    moved_to: str = ""           # where move_aside put it

    def as_dict(self) -> dict[str, object]:
        return {"digest": self.digest, "kind": self.kind, "detail": self.detail, "moved_to": self.moved_to,
                "users": [{"image": i, "path": p} for i, p in self.users]}


@dataclass
class VerifyReport:
    objects: int = 0             # objects checked
    versions: int = 0            # versions whose manifests were read
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def images(self) -> list[str]:
        """The images to re-import or rebuild: every image a problem touches."""
        return sorted({tag for p in self.problems for image, _ in p.users for tag in image.split(", ")})

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "objects": self.objects, "versions": self.versions,
                "problems": [p.as_dict() for p in self.problems], "images": self.images()}


def _labels(store: ImageStore) -> dict[str, str]:
    by_digest: dict[str, list[str]] = defaultdict(list)
    for tag, digest in store.tags().items():
        by_digest[digest].append(tag)
    return {d: ", ".join(tags) for d, tags in by_digest.items()}


def _users(store: ImageStore, versions: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Who uses each object: {digest: [(image, path)]} for the versions {digest: label}. A manifest
    that cannot be read is a user of itself only (its problem shows when it is checked)."""
    users: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for digest, label in sorted(versions.items()):
        users[digest].append((label, MANIFEST))
        try:
            entries = parse_manifest(store.content.get(digest), source=f"manifest {digest}", expect=digest)
        except (IntegrityError, ManifestError):
            continue
        for e in entries:
            if e.type == "file":
                for part in e.chunks or (e.digest,):
                    users[part].append((label, e.path))
    return users


def _check(store: ImageStore, digest: str) -> Problem | None:
    try:
        store.content.get(digest)
    except MissingObjectError as e:
        return Problem(digest, "missing", str(e))
    except IntegrityError as e:
        return Problem(digest, "corrupt", str(e))
    return None


def verify(store: ImageStore, refs: Sequence[str] = (), *, move_aside: bool = False,
           progress: Progress | None = None) -> VerifyReport:
    """Checks the objects of the versions `refs` names (ImageError for an unknown ref), or of the
    whole store. With `move_aside`, corrupt objects go to ROOT/corrupt/ (see the module docstring)."""
    say = progress or (lambda _: None)
    labels = _labels(store)
    if refs:
        digests = [store.resolve(r).digest for r in refs]
        versions = {d: labels.get(d, d[:19]) for d in digests}
    else:
        versions = labels
    users = _users(store, versions)
    todo = set(users) if refs else set(users) | {d for d, _ in store.content.objects()}
    report = VerifyReport(versions=len(versions))
    for n, digest in enumerate(sorted(todo), start=1):
        if n % 2000 == 0:
            say(f"verify: {n}/{len(todo)} objects, {len(report.problems)} problems")
        report.objects += 1
        if (problem := _check(store, digest)) is None:
            continue
        problem.users = list(dict.fromkeys(users.get(digest, [])))  # a chunk may recur in one file
        if move_aside and problem.kind == "corrupt":
            problem.moved_to = str(store.content.move_aside(digest))
        report.problems.append(problem)
    say(f"verify: {report.objects} objects checked, {len(report.problems)} problems")
    return report
