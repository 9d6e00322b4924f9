"""A power driver from a host's power config (a dict, as stored with the host or in a lab):

    {"driver": "lab", "lab": "demo", "host": "h2", "state_dir": "/var/lib/softudc"}   (state_dir optional)
    {"driver": "ipmi", "address": "10.0.0.5", "port": 623, "user": "admin",
     "password_file": "/etc/softudc/bmc/h2.pw", "cipher_suite": 17, "netns": null}   (the last two optional)

A config with a `password` field is refused: the password lives in the file `password_file` names
(mode 0600), so no store, backup or log ever holds it (docs/power.md).
"""

from __future__ import annotations

from typing import Any

from softudc.power.driver import PowerDriver, PowerError
from softudc.power.ipmi import IpmiPower
from softudc.power.lab import LabPower

DRIVERS = ("lab", "ipmi")
_FIELDS: dict[str, dict[str, tuple[type, bool]]] = {  # field -> (type, required)
    "lab": {"lab": (str, True), "host": (str, True), "state_dir": (str, False)},
    "ipmi": {"address": (str, True), "user": (str, True), "password_file": (str, True), "port": (int, False),
             "cipher_suite": (int, False), "netns": (str, False), "timeout_s": (float, False),
             "retries": (int, False)},
}


def check_config(config: Any) -> dict[str, Any]:
    """The config's fields without `driver`, checked: a PowerError names the first bad field."""
    if not isinstance(config, dict):
        raise PowerError(f"power config: expected a mapping with a `driver` ({' or '.join(DRIVERS)}), "
                         f"got {type(config).__name__}")
    if "password" in config:
        raise PowerError("power config: `password` is not accepted (it would be stored in clear); put the password "
                         "in a file (chmod 600) and name it in `password_file`")
    driver = config.get("driver")
    if driver not in _FIELDS:
        raise PowerError(f"power config: driver {driver!r}, expected one of {', '.join(DRIVERS)}")
    fields = _FIELDS[driver]
    unknown = sorted(set(config) - set(fields) - {"driver"})
    if unknown:
        raise PowerError(f"power config ({driver}): unknown field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    out = {name: _field(driver, name, config.get(name), spec[0]) for name, spec in fields.items()
           if config.get(name) is not None or spec[1]}
    if driver == "ipmi" and not 1 <= out.get("port", 623) <= 65535:
        raise PowerError(f"power config (ipmi): `port` = {out['port']}, expected 1..65535")
    return out


def _field(driver: str, name: str, value: Any, kind: type) -> Any:
    if value is None:  # a required field (optional ones left out are not asked for)
        raise PowerError(f"power config ({driver}): `{name}` is missing")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PowerError(f"power config ({driver}): `{name}` = {value!r}, expected {kind.__name__}")
    return value


def driver_for(config: Any) -> PowerDriver:
    """The driver a host's power config asks for."""
    fields = check_config(config)
    if config["driver"] == "lab":
        return LabPower(fields["lab"], fields["host"], fields.get("state_dir"))
    return IpmiPower(**fields)
