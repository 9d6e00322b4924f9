"""The migration URI check (audit R20): whatever a host reports, the URI another host's libvirtd
dials has an allowed scheme, no query, fragment or user, the path /system, and the address the
host reports from."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc import libvirturi
from softudc.libvirturi import MigrationUriError


@pytest.mark.adversarial
@given(st.text(max_size=80) | st.builds(lambda s, h, rest: f"{s}://{h}{rest}",
                                        st.sampled_from(["qemu+tcp", "qemu+tls", "qemu+ext", "qemu+ssh", "qemu"]),
                                        st.sampled_from(["10.0.0.1", "[::1]", "h1", "u@10.0.0.1", "10.0.0.1:16509"]),
                                        st.text(max_size=30)))
def test_r20_any_reported_uri_is_refused_or_rebuilt_into_the_allowed_form(uri: str) -> None:
    try:
        built = libvirturi.for_host(uri, "10.0.0.1")
    except MigrationUriError as e:
        assert str(e)  # says what is wrong
        return
    scheme, host, port = libvirturi.check(built)
    assert scheme in libvirturi.SCHEMES and host == "10.0.0.1" and (port is None or 0 < port < 65536)
    assert "?" not in built and "#" not in built and "@" not in built and built.endswith("/system")


@pytest.mark.parametrize("uri, address, want", [
    ("qemu+tcp://10.99.0.12/system", "10.99.0.12", "qemu+tcp://10.99.0.12/system"),
    ("qemu+tls://10.99.0.12:16514/system", "::ffff:10.99.0.12", "qemu+tls://10.99.0.12:16514/system"),
    ("qemu+tls://[fd00::2]/system", "fd00::2", "qemu+tls://[fd00::2]/system"),
])
def test_r20_a_good_uri_is_rebuilt_from_the_hosts_address(uri: str, address: str, want: str) -> None:
    assert libvirturi.for_host(uri, address) == want
    assert ipaddress.ip_address(libvirturi.check(want)[1])


def test_r20_the_refusal_says_what_to_write_instead() -> None:
    with pytest.raises(MigrationUriError) as e:
        libvirturi.for_host("qemu+tcp://10.99.0.99/system", "10.99.0.12")
    assert "qemu+tcp://10.99.0.12/system" in str(e.value)
