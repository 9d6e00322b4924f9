"""Volumes as objects of their own (issue 13 item 3): standalone volumes and masters, snapshots of
any volume, clones of a snapshot or a master (a branching tree), carried out by the storage hosts
through their desired states like the farms' volumes.

    store kind `volume`, name = the pool volume's name:
      {type: volume, size_bytes, host, backing, master, source, depth}   a standalone volume (a
          master if `master`): empty, or a copy-on-write clone of `backing` (a snapshot or master)
      {type: snapshot, of, snapshot, size_bytes, host, depth}             snapshot `snapshot` of
          volume `of` (a farm's or a standalone one): the pool volume `<of>.snap.<snapshot>`
      {type: orphan, host}                                              a kept volume no farm wants
      + drop: true   deleted: the host unexports and deletes it; the record goes once no host
                     reports the volume any more

A snapshot is external (gatekeeper/volumes/snapshots.py): its volume's current file is frozen into
the snapshot's pool volume and the volume goes on in an overlay over it, so every snapshot makes
its volume's backing chain one longer, and a clone is one longer than what it clones. Chain-depth
policy (`Depth`): at the soft limit the volume is flattened in the background (its host copies the
chain into it: QMP block-stream), at the hard limit a snapshot or clone is refused, naming the
limit and what to do. The depth counted here is the chain as made (a flatten is not counted back).

Clones and snapshots live on the host of what they are made from (a qcow2 over its file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from softudc.manager.errors import ApiError
from softudc.manager.store import Obj, Store
from softudc.model.farm import NAME_RE
from softudc.model.volume import SNAP_INFIX, backing_name, split_volume_id

KIND = "volume"
MAX_SIZE = 64 << 40


@dataclass(frozen=True)
class Depth:
    """Backing-chain depth limits (manager environment SOFTUDC_VOLUME_DEPTH_SOFT / _HARD)."""

    soft: int = 6
    hard: int = 12

    @classmethod
    def from_env(cls) -> Depth:
        soft = int(os.environ.get("SOFTUDC_VOLUME_DEPTH_SOFT", cls.soft))
        return cls(soft, max(soft, int(os.environ.get("SOFTUDC_VOLUME_DEPTH_HARD", cls.hard))))


def check_name(name: str, what: str = "volume") -> str:
    if not NAME_RE.match(name) or "--" in name:
        raise ApiError(400, f"{what} name {name!r}: lowercase letters, digits and single '-', starting with a "
                            "letter, at most 40 (a farm descriptor's `from:` names it)")
    return name


def records(store: Store) -> dict[str, dict[str, Any]]:
    """Every volume object by name (its spec)."""
    return {o.name: dict(o.spec) for o in store.objects(KIND)}


class Tree:
    """The volume objects with what the hosts hold: where each volume is, how deep its chain is,
    what backs on what. `held`: pool volume -> the host reporting it; `farm`: each farm volume's
    id -> (its `from`, its size) (the farms' plan)."""

    def __init__(self, objs: dict[str, dict[str, Any]], held: dict[str, str],
                 farm: dict[str, tuple[str, int]] | None = None) -> None:
        self.objs, self.held, self.farm = objs, held, farm or {}

    def host(self, name: str) -> str | None:
        rec = self.objs.get(name)
        return self.held.get(name) or (str(rec["host"]) if rec and rec.get("host") else None)

    def snapshots_of(self, name: str) -> list[str]:
        return sorted(n for n, r in self.objs.items() if r.get("type") == "snapshot" and r.get("of") == name
                      and not r.get("drop"))

    def depth(self, name: str) -> int:
        """The backing chain's length of `name` as made (1: no backing file)."""
        rec = self.objs.get(name)
        if rec is not None and rec.get("type") == "snapshot":
            return int(rec.get("depth", 1))
        backing = rec.get("backing") if rec is not None else self._farm_backing(name)
        base = 1 + (self.depth(str(backing)) if backing else 0)
        return base + len(self.snapshots_of(name))

    def _farm_backing(self, name: str) -> str | None:
        source = self.farm.get(name, ("empty", 0))[0]
        return backing_name(source) if source not in ("empty", "image") else None

    def users(self, name: str) -> list[str]:
        """The volumes whose backing file is `name` (records and farm volumes)."""
        out = [n for n, r in self.objs.items() if r.get("backing") == name and not r.get("drop")]
        out += [vid for vid in self.farm if self._farm_backing(vid) == name]
        return sorted(out)

    def resolve(self, source: str) -> tuple[str, str]:
        """`V@S` or `V` -> (the pool volume to back on, its host); 404/409 saying what is missing."""
        backing = backing_name(source)
        host = self.host(backing)
        if host is None:
            what = f"snapshot {source.split('@')[1]} of {source.split('@')[0]}" if "@" in source else f"volume {source}"
            raise ApiError(404, f"no {what} (`softudc volume list` names them; a snapshot is taken with "
                                "`softudc volume snapshot VOL SNAP`)")
        if "@" not in source and split_volume_id(source) is not None:
            raise ApiError(409, f"{source} is a farm's volume in use: clone a snapshot of it ({source}@SNAP, "
                                "`softudc volume snapshot` first)")
        return backing, host


def check_depth(depth: int, limits: Depth, what: str) -> bool:
    """True when `depth` reaches the soft limit (flatten); ApiError 409 beyond the hard one."""
    if depth > limits.hard:
        raise ApiError(409, f"{what} would make a backing chain {depth} deep, over the hard limit {limits.hard} "
                            "(SOFTUDC_VOLUME_DEPTH_HARD): clone a shallower snapshot, or wait for the volume's "
                            "background flatten and snapshot it again")
    return depth >= limits.soft


def create(store: Store, tree: Tree, free: dict[str, int], name: str, size_bytes: int | None,
           host: str | None = None, master: bool = False, source: str | None = None,
           limits: Depth | None = None) -> dict[str, Any]:
    """A new standalone volume (empty, or a clone of `source`: `V@SNAP` or a master); its record."""
    check_name(name)
    if name in tree.objs or name in tree.held:
        raise ApiError(409, f"volume {name} exists already (`softudc volume describe {name}`); pick another name")
    spec: dict[str, Any] = {"type": "volume", "master": master, "source": source, "backing": None, "depth": 1}
    if source is not None:
        backing, where = tree.resolve(source)
        if host not in (None, where):
            raise ApiError(409, f"a clone of {source} lives on {where}, where its backing file is, not on {host}")
        spec.update(backing=backing, host=where, depth=tree.depth(backing) + 1)
        spec["flatten"] = check_depth(spec["depth"], limits or Depth.from_env(), f"cloning {source}")
        size_bytes = size_bytes or _size(tree, backing)
    else:
        spec["host"] = _place(free, size_bytes, host)
    if not isinstance(size_bytes, int) or not 0 < size_bytes <= MAX_SIZE:
        raise ApiError(400, f"size_bytes: {size_bytes!r}; give --size (1Mi..64Ti)")
    spec["size_bytes"] = size_bytes
    store.put(KIND, name, spec)
    return spec


def _size(tree: Tree, name: str) -> int | None:
    rec = tree.objs.get(name)
    if rec and rec.get("size_bytes"):
        return int(rec["size_bytes"])
    return tree.farm[name][1] if name in tree.farm else None


def _place(free: dict[str, int], size_bytes: int | None, host: str | None) -> str:
    if not isinstance(size_bytes, int):
        raise ApiError(400, "size_bytes: an empty volume needs its size (--size 10Gi)")
    if host is not None:
        if host not in free:
            raise ApiError(409, f"host {host} reports no storage pool ([volumes] in its gatekeeper file); "
                                f"pools: {', '.join(sorted(free)) or 'none'}")
        if free[host] < size_bytes:
            raise ApiError(409, f"{host}'s pool has {free[host]} bytes free, the volume needs {size_bytes}")
        return host
    fits = [h for h, f in free.items() if f >= size_bytes]
    if not fits:
        raise ApiError(409, f"no host's pool has {size_bytes} bytes free (the most: {max(free.values(), default=0)}); "
                            "add capacity or make the volume smaller")
    return min(fits, key=lambda h: (-free[h], h))


def snapshot(store: Store, tree: Tree, volume: str, snap: str, limits: Depth | None = None) -> dict[str, Any]:
    """Snapshot `snap` of `volume` (held by a host, or a standalone one): recorded, then taken by
    the volume's host (live, if exported). Its record."""
    check_name(snap, "snapshot")
    host = tree.host(volume)
    if host is None:
        raise ApiError(404, f"no volume {volume} held by a host (`softudc volume list`)")
    name = f"{volume}{SNAP_INFIX}{snap}"
    if name in tree.objs or name in tree.held:
        raise ApiError(409, f"volume {volume} has a snapshot {snap} already; pick another name")
    depth = tree.depth(volume)
    flatten = check_depth(depth + 1, limits or Depth.from_env(), f"snapshot {snap} of {volume}")
    spec = {"type": "snapshot", "of": volume, "snapshot": snap, "host": host, "depth": depth,
            "size_bytes": _size(tree, volume) or 1}
    store.put(KIND, name, spec)
    if flatten and volume in tree.objs:
        store.put(KIND, volume, {**tree.objs[volume], "flatten": True})
    return spec


def delete(store: Store, tree: Tree, name: str, wanted: Iterable[str]) -> list[str]:
    """Delete a standalone volume with its snapshots, a snapshot, or a kept volume no farm wants
    (`wanted`: the farms' volume ids). Refused (409) while something backs on it, saying what.
    The names the hosts will delete."""
    rec = tree.objs.get(name)
    if rec is None and split_volume_id(name) is not None and name in set(wanted):
        raise ApiError(409, f"volume {name} belongs to a farm: remove it from the descriptor or delete the farm")
    host = tree.host(name)
    if host is None:
        raise ApiError(404, f"no volume {name} (`softudc volume list` names them)")
    gone = [name] + (tree.snapshots_of(name) if rec is None or rec.get("type") == "volume" else [])
    users = sorted({u for g in gone for u in tree.users(g)} - set(gone))
    if users:
        raise ApiError(409, f"{', '.join(users)} back{'s' if len(users) == 1 else ''} on {name}"
                            f"{' or its snapshots' if len(gone) > 1 else ''}: delete "
                            f"{'it' if len(users) == 1 else 'them'} first")
    for g in gone:
        spec = tree.objs.get(g) or {"type": "orphan", "host": host}
        store.put(KIND, g, {**spec, "host": tree.host(g) or host, "drop": True})
    return gone


def desired(tree: Tree, host: str, wanted: set[str]) -> list[dict[str, Any]]:
    """The volume objects `host` holds (its DesiredState `volumes`, beside the farms' volumes).
    A snapshot whose volume is gone (no farm wants it, no host holds it: a kept one is held) is
    left out (its host deletes it after its grace period) unless a volume backs on it."""
    out = []
    for name, r in sorted(tree.objs.items()):
        if r.get("host") != host:
            continue
        if r.get("drop"):
            out.append({"name": name, "size_bytes": int(r.get("size_bytes") or 1), "drop": True})
        elif r.get("type") == "volume":
            out.append({"name": name, "size_bytes": int(r["size_bytes"]),
                        **({"backing": r["backing"]} if r.get("backing") else {}),
                        **({"flatten": True} if r.get("flatten") else {})})
        elif r.get("type") == "snapshot" and _alive(tree, str(r["of"]), wanted, name):
            out.append({"name": name, "size_bytes": int(r.get("size_bytes") or 1), "snapshot_of": r["of"]})
    return out


def _alive(tree: Tree, of: str, wanted: set[str], name: str) -> bool:
    origin = tree.objs.get(of)
    return bool(of in wanted or of in tree.held or (origin and not origin.get("drop")) or tree.users(name))


def prune(store: Store, objs: Iterable[Obj], held: dict[str, str]) -> None:
    """Forget dropped volumes no host reports any more."""
    for o in objs:
        if o.spec.get("drop") and o.name not in held:
            store.delete(KIND, o.name)


def rows(tree: Tree) -> list[dict[str, Any]]:
    """The volume objects for `softudc volume list` (beside the farms' volumes)."""
    out = []
    for name, r in sorted(tree.objs.items()):
        kind = "master" if r.get("master") else str(r.get("type", "volume"))
        state = "deleting" if r.get("drop") else ("held" if tree.held.get(name) == r.get("host") else "planned")
        out.append({"id": name, "farm": None, "instance": None, "volume": name, "class": kind,
                    "size_bytes": int(r.get("size_bytes") or 0), "from": r.get("source") or (
                        f"{r['of']}@{r['snapshot']}" if r.get("type") == "snapshot" else "empty"),
                    "keep": True, "host": r.get("host"), "vm_host": None, "allowed": [], "state": state,
                    "reason": "", "export": None, "depth": tree.depth(name),
                    "snapshots": [tree.objs[s]["snapshot"] for s in tree.snapshots_of(name)]})
    return out
