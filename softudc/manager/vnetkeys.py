"""The master secrets of each (farm, VNET) and their key epochs, as the manager keeps them. Pure:
the API stores the record (`vnetkey` objects) and hands `for_hosts()` to gatekeepers.

One record per incarnation of a farm's VNET: deleting the farm deletes it, so a farm created
again under the same name, or another farm that gets the same VNET id, never sees the old secret
or the old epoch numbers (audit R7). Epoch numbers come from one manager-wide counter (1..65535,
the SPI's 16 bits, then around again with new secrets), so successive owners of a VNET id use
different SPIs. What gatekeepers get is not the stored secret but HKDF(stored, farm, VNET,
incarnation, epoch): the farm's identity is part of every key.

Rotation, in three steps a host never has to coordinate (each reaches hosts with their next
desired state; receivers accept every epoch they hold, so nothing is dropped):

    adding   the new epoch's secret is handed out; everyone still sends with the old one
    sending  after `step` seconds: everyone sends with the new one, still accepts the old one
    (done)   after another `step`: the old epoch is retired

A rotation starts on demand (`Manager.rotate_vnet_keys`, for an admin or a test) or when the
send epoch is older than `every` seconds. Each new epoch restarts the senders' sequence numbers
under a new key, which keeps counters far below where extended sequence numbers get hard for
late joiners (gatekeeper/vnet/esp_sa.py, audit R8).
"""

from __future__ import annotations

import secrets
import struct
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ROTATION_STEP_S = 60.0  # between the steps of a rotation: long polls and reports bring it to hosts well within it
ROTATE_EVERY_S = 4 * 3600.0  # a send epoch older than this is rotated
MAX_EPOCH = 0xFFFF


def new_record(now: float, epoch: int) -> dict[str, Any]:
    return {"incarnation": secrets.token_hex(8), "send_epoch": epoch,
            "epochs": {str(epoch): {"secret": secrets.token_hex(32), "since": now}}}


def next_epoch(counter: int, live: set[int] | frozenset[int] = frozenset()) -> int:
    """The epoch after `counter` in 1..65535 (0 is never used: it is the "none yet" of the
    counter), skipping the `live` epochs of the VNET it is for (the counter wraps)."""
    epoch = counter % MAX_EPOCH + 1
    while epoch in live:
        epoch = epoch % MAX_EPOCH + 1
    return epoch


def live_epochs(record: dict[str, Any] | None) -> set[int]:
    return {int(e) for e in record["epochs"]} if record else set()


def upgrade(record: dict[str, Any], now: float) -> dict[str, Any]:
    """A record stored before epochs had their own entries ({send_epoch, secrets}): the same
    secrets, handed out unchanged (`raw`) so hosts keep their SAs; the next rotation replaces them."""
    if "epochs" in record:
        return record
    epochs = {str(e): {"secret": s, "since": now, "raw": True} for e, s in record.get("secrets", {}).items()}
    rest = {k: v for k, v in record.items() if k not in ("secrets", "send_epoch")}
    return {**rest, "incarnation": secrets.token_hex(8), "send_epoch": int(record["send_epoch"]), "epochs": epochs}


def start_rotation(record: dict[str, Any], now: float, epoch: int) -> dict[str, Any]:
    """Step 1: a new epoch every host learns while all still send with the current one. One
    rotation at a time: cutting one short could retire an epoch some host still sends with."""
    if "rotation" in record:
        r = record["rotation"]
        raise ValueError(f"a rotation to epoch {r['epoch']} is in progress (step {r['phase']!r}); "
                         "ask again once it has finished")
    epochs = {e: v for e, v in record["epochs"].items() if int(e) == record["send_epoch"]}
    epochs[str(epoch)] = {"secret": secrets.token_hex(32), "since": now}
    return {**record, "epochs": epochs, "rotation": {"epoch": epoch, "phase": "adding", "since": now}}


def due(record: dict[str, Any], now: float, every: float | None) -> bool:
    """Whether a scheduled rotation should start now."""
    if every is None or "rotation" in record:
        return False
    return now - float(record["epochs"][str(record["send_epoch"])]["since"]) >= every


def advance(record: dict[str, Any], now: float, step: float) -> dict[str, Any]:
    """The record after the rotation steps whose time has come (the same record if none)."""
    rotation = record.get("rotation")
    if rotation and rotation["phase"] == "adding" and now - rotation["since"] >= step:
        record = {**record, "send_epoch": rotation["epoch"],
                  "rotation": {**rotation, "phase": "sending", "since": now}}
    rotation = record.get("rotation")
    if rotation and rotation["phase"] == "sending" and now - rotation["since"] >= step:
        keep = str(record["send_epoch"])
        record = {k: v for k, v in record.items() if k != "rotation"}
        record["epochs"] = {keep: record["epochs"][keep]}
    return record


def for_hosts(record: dict[str, Any], farm: str, vnet: str) -> dict[str, Any]:
    """What a gatekeeper gets: the send epoch and, per live epoch, the derived master secret."""
    return {"send_epoch": record["send_epoch"],
            "secrets": {e: v["secret"] if v.get("raw") else _derive(v["secret"], farm, vnet, record["incarnation"],
                                                                     int(e)).hex()
                        for e, v in sorted(record["epochs"].items(), key=lambda kv: int(kv[0]))}}


def _derive(stored: str, farm: str, vnet: str, incarnation: str, epoch: int) -> bytes:
    info = b"softudc vnet secret v1\0" + f"{farm}\0{vnet}\0{incarnation}\0".encode() + struct.pack("!H", epoch)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(bytes.fromhex(stored))
