"""The libvirt URI another host's libvirtd connects to for a live migration (audit R20).

libvirt URIs can do much more than name a peer: `qemu+ext:///system?command=...` runs a
program, `qemu+ssh://` logs in somewhere, a `socket=` or `netcat=` parameter points elsewhere.
So the manager never passes on what a host reports: it builds the URI from the destination's
address as the manager sees it (the source address of its authenticated reports) and the
scheme and port the host asked for, out of a fixed list; the source's gatekeeper checks the same
rules again before libvirt dials.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

SCHEMES = ("qemu+tls", "qemu+tcp")  # what production (TLS) and the lab (plain TCP) use
PATH = "/system"


class MigrationUriError(ValueError):
    """A migration URI outside the allowed form; the message says what is wrong and what to write."""


def check(uri: str) -> tuple[str, str, int | None]:
    """(scheme, host address, port) of an allowed migration URI, or MigrationUriError."""
    example = "write it as qemu+tls://ADDRESS/system or qemu+tcp://ADDRESS/system"
    try:
        u = urlsplit(uri)
        port = u.port
    except ValueError as e:
        raise MigrationUriError(f"{uri!r} is not a URI ({e}); {example}") from None
    if u.scheme not in SCHEMES:
        raise MigrationUriError(f"{uri!r}: scheme {u.scheme!r} is not allowed (only {', '.join(SCHEMES)}); "
                                f"{example}")
    if u.query or u.fragment or "?" in uri or "#" in uri:
        raise MigrationUriError(f"{uri!r}: no query or fragment is allowed (parameters such as command= or "
                                f"socket= would make libvirt run or reach something else); {example}")
    if u.username is not None or u.password is not None:
        raise MigrationUriError(f"{uri!r}: no user name is allowed; {example}")
    if u.path != PATH:
        raise MigrationUriError(f"{uri!r}: the path must be {PATH}; {example}")
    host = u.hostname or ""
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise MigrationUriError(f"{uri!r}: {host!r} is not an IP address (names could resolve anywhere); "
                                f"{example}") from None
    return u.scheme, address, port


def build(scheme: str, address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}{f':{port}' if port else ''}{PATH}"


def for_host(reported: str, address: str | None) -> str:
    """The URI the manager hands to a migration's source: the scheme and port the destination
    reported, and the address it reports from. Refuses a reported URI outside the allowed form or
    naming another address than the host's own."""
    scheme, host, port = check(reported)
    if address is None:
        raise MigrationUriError("the manager has not yet seen this host report over the network; wait for its "
                                "next report (a few seconds) and try again")
    seen = _plain(address)
    if ipaddress.ip_address(host) != seen:
        raise MigrationUriError(f"{reported!r} names {host}, but the host reports from {address}; set its "
                                f"gatekeeper's hypervisor.migration_uri to {build(scheme, str(seen), port)}")
    return build(scheme, str(seen), port)


def _plain(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A peer address as a dual-stack socket gives it (::ffff:10.0.0.1) in its plain form."""
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip
