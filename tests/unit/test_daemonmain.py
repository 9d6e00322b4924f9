"""The daemons' shared main(): the config path reaches run(); a config problem is one line, exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gatekeeper import agent
from softudc.configfile import ConfigError
from softudc.daemonmain import daemon_main
from vnetd import daemon


def test_run_gets_the_config_path() -> None:
    seen: list[str] = []

    async def run(path: str) -> None:
        seen.append(path)

    daemon_main("d", "a daemon", run, ["--config", "/etc/d.toml"])
    assert seen == ["/etc/d.toml"]


@pytest.mark.parametrize(("main", "prog"), [(agent.main, "gatekeeper"), (daemon.main, "vnetd")])
def test_a_missing_config_is_one_line_and_exit_status_2(main: Callable[[list[str]], None], prog: str,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--config", f"{tmp_path}/none.toml"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: {tmp_path}/none.toml: no such file") and err.count("\n") == 1


def test_a_config_error_raised_by_run_is_printed_with_the_prog_name(capsys: pytest.CaptureFixture[str]) -> None:
    async def run(path: str) -> None:
        raise ConfigError(f"{path}: [underlay] address: not an IPv4 address")

    with pytest.raises(SystemExit) as e:
        daemon_main("gk", "x", run, ["--config", "c.toml"])
    assert e.value.code == 2 and capsys.readouterr().err == "gk: c.toml: [underlay] address: not an IPv4 address\n"


def test_without_config_argparse_says_so_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    async def run(path: str) -> None:
        raise AssertionError("never run without --config")

    with pytest.raises(SystemExit) as e:
        daemon_main("gk", "x", run, [])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err
