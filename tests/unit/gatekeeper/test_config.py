from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "gatekeeper.example.toml"
BASE = {"host": "h1", "api_socket": "/tmp/x.sock", "underlay": {"interface": "ul0", "address": "10.0.0.1"}}


def test_the_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.transport == "udp" and cfg.varp_group == "224.10.0.1" and cfg.varp_timers.queue_max == 16


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"colour": 1}, "colour"),
        ({"underlay": {"interface": "ul0", "address": "nope"}}, "underlay.address"),
        ({"underlay": {"interface": "ul0", "address": "10.0.0.1", "mtu": 100}}, "underlay.mtu"),
        ({"dataplane": {"transport": "gre"}}, "dataplane.transport"),
        ({"varp": {"group": "10.0.0.1"}}, "varp.group"),
        ({"varp": {"hosts": ["1.2.3.4", "x"]}}, "varp.hosts[1]"),
        ({"varp": {"ttl": -1}}, "varp.ttl"),
        ({"varp": {"probe_max": 0}}, "varp.probe_max"),
        ({"varp": {"typo": 0}}, "varp.typo"),
        ({"metrics": {"listen": "9464"}}, "metrics.listen"),
    ],
)
def test_errors_name_the_file_and_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, **patch}, "gk.toml")
    assert str(e.value).startswith(f"gk.toml: {field}: ")


def test_toml_syntax_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('host = "h1"\nunderlay = {\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: .*line 2"):
        load_config(p)


@given(st.dictionaries(st.sampled_from(["host", "api_socket", "underlay", "varp", "x"]),
                       st.one_of(st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=5),
                                                                                    st.integers()))))
def test_arbitrary_input_gives_config_error_or_config(raw: dict[str, object]) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(raw)


@pytest.mark.parametrize("uri", ["qemu+ext:///system?command=/sbin/reboot", "qemu+tcp://h1/system", "x://y"])
def test_r20_a_migration_uri_the_manager_would_refuse_is_refused_at_startup(uri: str) -> None:
    hv = {"uri": "qemu:///system", "kernel": "/k", "initrd": "/i", "migration_uri": uri}
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "hypervisor": hv}, "gk.toml")
    assert str(e.value).startswith("gk.toml: hypervisor.migration_uri: ")
    assert "qemu+tls://ADDRESS/system" in str(e.value)  # what to write instead
    good = parse_config({**BASE, "hypervisor": {**hv, "migration_uri": "qemu+tcp://10.99.0.11/system"}}, "gk.toml")
    assert good.hypervisor is not None and good.hypervisor.migration_uri == "qemu+tcp://10.99.0.11/system"



@pytest.mark.parametrize("vcpus", [0, True, (1 << 16) + 1, "8"])
def test_a_manager_capacity_the_contract_would_refuse_is_a_config_error(vcpus: object) -> None:
    """A host offering what its report could not say (the contract's HOST_CAPACITY_MAX) fails at
    start, naming the field, instead of sending reports the manager refuses."""
    manager = {"url": "https://10.99.0.1:8443", "ca": "/ca", "cert": "/c", "key": "/k", "memory_mib": 2048}
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "manager": {**manager, "vcpus": vcpus}}, "gk.toml")
    assert str(e.value).startswith("gk.toml: manager.vcpus: ") and "from 1 to 65536" in str(e.value)
    good = parse_config({**BASE, "manager": {**manager, "vcpus": 1 << 16}}, "gk.toml")
    assert good.manager is not None and good.manager.vcpus == 1 << 16


MANAGER = {"url": "https://10.99.0.1:8443", "ca": "/ca", "cert": "/c", "key": "/k", "vcpus": 4, "memory_mib": 2048}


def test_several_managers_are_listed_separated_by_commas() -> None:
    cfg = parse_config({**BASE, "manager": {**MANAGER, "url": "https://10.99.0.1:8443, https://10.99.0.2:8443"}})
    assert cfg.manager is not None
    assert cfg.manager.urls == ("https://10.99.0.1:8443", "https://10.99.0.2:8443")
    assert cfg.manager.url == "https://10.99.0.1:8443,https://10.99.0.2:8443"  # what the link is given
    one = parse_config({**BASE, "manager": MANAGER}).manager
    assert one is not None and one.urls == ("https://10.99.0.1:8443",) and one.url == "https://10.99.0.1:8443"


@pytest.mark.parametrize(("url", "said"), [
    ("https://10.99.0.1:8443,http://10.99.0.2:8443", "URL 2 of 2, 'http://10.99.0.2:8443' is not a manager's URL"),
    ("https://10.99.0.1:8443,,https://10.99.0.2", "URL 2 of 3, '' is not a manager's URL"),
    ("https://10.99.0.1:99999", "'https://10.99.0.1:99999': Port out of range"),
    ("10.99.0.1:8443", "'10.99.0.1:8443' is not a manager's URL; expected https://HOST[:PORT]"),
    ("https://m1/v1", "'https://m1/v1' is not a manager's URL"),
    ("https://m1,https://m1", "lists a manager twice"),
    (",".join(f"https://m{i}" for i in range(17)), "17 URLs; at most 16"),
])
def test_a_manager_url_that_is_wrong_is_named(url: str, said: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "manager": {**MANAGER, "url": url}}, "gk.toml")
    assert str(e.value).startswith("gk.toml: manager.url: ") and said in str(e.value)


def test_the_examples_commented_volumes_table_loads_once_uncommented() -> None:
    import tomllib

    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [volumes]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line.removeprefix("# "))
    table = tomllib.loads("\n".join(block))["volumes"]
    assert table["port"] == 10809
    volumes = parse_config({**BASE, "volumes": table}, "gk.toml").volumes
    assert volumes is not None and volumes.listen == "10.100.0.2" and volumes.capacity_bytes == 100 << 30
