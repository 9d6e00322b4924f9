from __future__ import annotations

from typing import Any

import pytest

from gatekeeper.config import ConfigError, parse_config
from gatekeeper.volumes.config import parse_volumes

BASE: dict[str, Any] = {"host": "h2", "api_socket": "/tmp/gk.sock",
                        "underlay": {"interface": "ul0", "address": "10.100.0.2"}}
GOOD = {"pool_dir": "/p", "run_dir": "/r", "tls_dir": "/t"}


def fail(field: str, msg: str) -> ConfigError:
    return ConfigError(f"gk.toml: {field}: {msg}")


def test_defaults_and_through_the_gatekeeper_file() -> None:
    v = parse_volumes(GOOD, "10.100.0.2", fail)
    assert (v.listen, v.port, v.capacity_bytes, v.thin) == ("10.100.0.2", 10809, None, False)
    assert parse_volumes({**GOOD, "thin": True}, "10.100.0.2", fail).thin
    cfg = parse_config({**BASE, "volumes": {**GOOD, "capacity_gib": 2}}, "gk.toml")
    assert cfg.volumes is not None and cfg.volumes.capacity_bytes == 2 << 30
    assert parse_config(BASE).volumes is None


@pytest.mark.parametrize(("table", "field"), [
    ({**GOOD, "pool_dir": "rel"}, "volumes.pool_dir"),
    ({"run_dir": "/r", "tls_dir": "/t"}, "volumes.pool_dir"),
    ({**GOOD, "port": 80}, "volumes.port"),
    ({**GOOD, "port": True}, "volumes.port"),
    ({**GOOD, "capacity_gib": 0}, "volumes.capacity_gib"),
    ({**GOOD, "listen": "h2"}, "volumes.listen"),
    ({**GOOD, "colour": 1}, "volumes.colour"),
    ({**GOOD, "thin": "yes"}, "volumes.thin"),
    ("x", "volumes"),
])
def test_bad_values_name_the_field(table: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^gk.toml: {field}: "):
        parse_config({**BASE, "volumes": table}, "gk.toml")
