"""Logical backups of the manager's store (issue 11, decision 9): JSON lines, so a backup taken
from SQLite restores into etcd and the reverse.

    {"softudc-backup": 1, "taken": "2026-11-26T14:00:00Z", "source": "sqlite", "revision": 42}
    {"object": {"kind": "farm", "name": "shop", "spec": {...}, "status": {...}}}
    ...
    {"event": {"time": 1795000000.5, "kind": "farm", "name": "shop", "type": "Applied", "message": "..."}}

Every live object of every kind (tombstones are skipped: a restored store starts without them)
and every event kept, oldest first. The file holds every VNET master secret: keep it 0600.

A restore reads and checks the whole file before it writes anything: a bad file is a BackupError
naming the line and the field, and the store is untouched. It refuses a store that already holds
objects or events unless forced; forced, the backup's objects replace the store's (objects the
backup does not have are deleted, so the controllers see them go) and its events are added.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from softudc.manager.etcdstore import EtcdStore
from softudc.manager.store import Store

FORMAT = 1
OBJECT_FIELDS = {"kind": str, "name": str, "spec": dict, "status": dict}
EVENT_FIELDS = {"time": (int, float), "kind": str, "name": str, "type": str, "message": str}
PROGRESS_EVERY = 1000  # objects between two progress lines (events: ten times as many)
Progress = Callable[[str, int], None]  # (what, how many so far): for a progress line on stderr


class BackupError(ValueError):
    """A backup file that cannot be restored (the message names the line and field), or a store
    that refuses the restore."""


@dataclass
class Counts:
    objects: int = 0
    events: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def _source(store: Store) -> str:
    return "etcd" if isinstance(store, EtcdStore) else "sqlite"


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def backup(store: Store, out: IO[bytes], progress: Progress | None = None) -> Counts:
    """Write every live object and every event of `store` to `out`; returns what was written."""
    counts = Counts()
    taken = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    revision, objects, events = store.dump()  # one consistent view, even of a store in use
    out.write(_line({"softudc-backup": FORMAT, "taken": taken, "source": _source(store), "revision": revision}))
    for obj in objects:
        out.write(_line({"object": {"kind": obj.kind, "name": obj.name, "spec": obj.spec, "status": obj.status}}))
        counts.objects += 1
        counts.kinds[obj.kind] = counts.kinds.get(obj.kind, 0) + 1
        if progress and counts.objects % PROGRESS_EVERY == 0:
            progress("objects", counts.objects)
    for event in events:
        out.write(_line({"event": {k: event[k] for k in EVENT_FIELDS}}))
        counts.events += 1
        if progress and counts.events % (10 * PROGRESS_EVERY) == 0:
            progress("events", counts.events)
    return counts


# -- reading and checking -------------------------------------------------------------------------

@dataclass
class Backup:
    header: dict[str, Any]
    objects: list[dict[str, Any]]
    events: list[dict[str, Any]]


def _fields(n: int, what: str, doc: Any, fields: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise BackupError(f"line {n}: {what} must be a JSON object, not {type(doc).__name__}")
    for name, types in fields.items():
        if name not in doc:
            raise BackupError(f"line {n}: {what} has no field {name!r}")
        value = doc[name]
        if not isinstance(value, types) or isinstance(value, bool) or (types is str and not value):
            raise BackupError(f"line {n}: field {what}.{name} must be a non-empty {_type_name(types)}, "
                              f"not {json.dumps(value)[:60]}")
    extra = set(doc) - set(fields)
    if extra:
        raise BackupError(f"line {n}: {what} has unknown field(s) {', '.join(sorted(extra))}")
    return doc


def _type_name(types: Any) -> str:
    return {str: "string", dict: "object"}.get(types, "number")


def _header(n: int, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise BackupError(f"line {n}: not JSON ({e}): is this a softudc backup?") from None
    if not isinstance(header, dict) or "softudc-backup" not in header:
        raise BackupError(f"line {n}: no header (field 'softudc-backup'): is this a softudc backup?")
    if header["softudc-backup"] != FORMAT:
        raise BackupError(f"line {n}: field softudc-backup is {header['softudc-backup']!r}; this softudc reads "
                          f"format {FORMAT}: restore it with the softudc that took it")
    if header.get("source") not in ("sqlite", "etcd"):
        raise BackupError(f"line {n}: field source must be \"sqlite\" or \"etcd\", not {header.get('source')!r}")
    if not isinstance(header.get("revision"), int) or isinstance(header.get("revision"), bool):
        raise BackupError(f"line {n}: field revision must be an integer")
    return header


def _record(n: int, raw: bytes, seen: set[tuple[str, str]], backup: Backup) -> None:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise BackupError(f"line {n}: not JSON ({e})") from None
    if not isinstance(doc, dict) or len(doc) != 1 or not ({"object", "event"} & set(doc)):
        raise BackupError(f"line {n}: expected {{\"object\": ...}} or {{\"event\": ...}}")
    if "object" in doc:
        obj = _fields(n, "object", doc["object"], OBJECT_FIELDS)
        if (obj["kind"], obj["name"]) in seen:
            raise BackupError(f"line {n}: object {obj['kind']}/{obj['name']} is in the file twice")
        seen.add((obj["kind"], obj["name"]))
        backup.objects.append(obj)
    else:
        backup.events.append(_fields(n, "event", doc["event"], EVENT_FIELDS))


def read_backup(inp: IO[bytes], name: str = "backup") -> Backup:
    """Read and check a whole backup file; BackupError names `name`, the line and the field."""
    lines = _numbered(inp)
    first = next(lines, None)
    if first is None:
        raise BackupError(f"{name}: empty file: is this a softudc backup? nothing was restored")
    try:
        backup = Backup(_header(*first), [], [])
        seen: set[tuple[str, str]] = set()
        for n, raw in lines:
            _record(n, raw, seen, backup)
    except BackupError as e:
        raise BackupError(f"{name}: {e}; nothing was restored") from None
    return backup


def _numbered(inp: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for n, raw in enumerate(inp, 1):
        if raw.strip():
            yield n, raw


# -- restoring ------------------------------------------------------------------------------------

def _count(obj: dict[str, Any], counts: Counts, progress: Progress | None) -> None:
    counts.objects += 1
    counts.kinds[obj["kind"]] = counts.kinds.get(obj["kind"], 0) + 1
    if progress and counts.objects % PROGRESS_EVERY == 0:
        progress("objects", counts.objects)


def _load(store: Store, objects: list[dict[str, Any]], counts: Counts, progress: Progress | None) -> None:
    """Into an empty store: many objects per transaction."""
    for i in range(0, len(objects), PROGRESS_EVERY):
        chunk = objects[i:i + PROGRESS_EVERY]
        store.load([(o["kind"], o["name"], o["spec"], o["status"]) for o in chunk])
        for obj in chunk:
            _count(obj, counts, progress)


def _replace(store: Store, objects: list[dict[str, Any]], counts: Counts, progress: Progress | None) -> None:
    """Into a store in use (forced): what the backup lacks is deleted, the rest written over."""
    wanted = {(o["kind"], o["name"]) for o in objects}
    existing = {(o.kind, o.name) for kind in store.kinds() for o in store.objects(kind)}
    for kind, obj_name in sorted(existing - wanted):
        store.delete(kind, obj_name)
    for obj in objects:
        store.put(obj["kind"], obj["name"], obj["spec"])
        if obj["status"] or (obj["kind"], obj["name"]) in existing:  # a kept object's old status goes
            store.set_status(obj["kind"], obj["name"], obj["status"])
        _count(obj, counts, progress)

def is_empty(store: Store) -> bool:
    return not store.kinds() and not store.events(limit=1)


def restore(store: Store, inp: IO[bytes], force: bool = False, name: str = "backup",
            progress: Progress | None = None) -> Counts:
    """Check the whole of `inp`, then write it into `store`; see the module's docstring."""
    data = read_backup(inp, name)
    if not force and not is_empty(store):
        raise BackupError(f"the store already holds objects or events ({', '.join(store.kinds()) or 'events'}): "
                          "restore into an empty store, or pass --force to replace its objects with the backup's")
    counts = Counts()
    if is_empty(store):
        _load(store, data.objects, counts, progress)
        for i in range(0, len(data.events), 10 * PROGRESS_EVERY):
            store.load_events(data.events[i:i + 10 * PROGRESS_EVERY])
            counts.events = min(i + 10 * PROGRESS_EVERY, len(data.events))
            if progress and counts.events < len(data.events):
                progress("events", counts.events)
        return counts
    _replace(store, data.objects, counts, progress)
    for event in data.events:
        store.put_event(event["kind"], event["name"], event["type"], event["message"], float(event["time"]))
        counts.events += 1
        if progress and counts.events % (10 * PROGRESS_EVERY) == 0:
            progress("events", counts.events)
    return counts
