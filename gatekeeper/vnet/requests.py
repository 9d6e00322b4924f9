"""What a request to the VNET service is checked against: ServiceError (a refusal that says what to
do instead) and the parsing of the MAC addresses requests carry."""

from __future__ import annotations


class ServiceError(RuntimeError):
    """A request the service refuses; the message says what to do instead."""


def parse_mac(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ServiceError(f"mac: {text!r} is not a MAC address like 52:54:00:12:34:56")
    if raw[0] & 1:
        raise ServiceError(f"mac: {text} is a group address; an endpoint needs a unicast MAC")
    return raw
