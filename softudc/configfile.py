"""Reading the daemons' TOML files, with errors that name the file and say what to do."""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the field."""


def read_toml(path: str | Path, missing_hint: str) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file ({missing_hint})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


def ipv4_list(value: Any, field: str, fail: Callable[[str, str], ConfigError]) -> list[str]:
    """`value` as a list of IPv4 addresses, or the error naming the field (and the entry) at fault."""
    if not isinstance(value, list):
        raise fail(field, "must be a list of IPv4 addresses")
    for i, a in enumerate(value):
        try:
            ipaddress.IPv4Address(a)
        except ValueError:
            raise fail(f"{field}[{i}]", f"{a!r} is not an IPv4 address") from None
    return value
