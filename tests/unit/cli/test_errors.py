"""The CLI's one error type: main prints it and exits 1; lab problems are CliErrors too."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.cli import main as cli_main
from softudc.cli.errors import CliError
from softudc.lab import LabError

ROOT = Path(__file__).resolve().parents[3]


def test_lab_error_is_a_cli_error() -> None:
    assert issubclass(LabError, CliError)
    assert not issubclass(CliError, LabError)


def test_main_prints_a_cli_error_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(_: object) -> None:
        raise CliError("the manager refused; run `softudc get hosts` to see why")

    monkeypatch.setattr(cli_main, "cmd_lab_down", refuse)
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["lab", "down", "x"])
    assert exc.value.code == 1
    assert capsys.readouterr().err == "softudc: the manager refused; run `softudc get hosts` to see why\n"


def test_a_refused_manager_call_is_a_cli_error_not_a_lab_error(capsys: pytest.CaptureFixture[str]) -> None:
    from softudc.cli.errors import ok

    assert ok(200, {"farms": []}) == {"farms": []}
    with pytest.raises(CliError, match=r"^manager: farm demo is invalid$") as e:
        ok(422, {"error": "farm demo is invalid", "problems": ["vms[0].vcpus: must be >= 1"]})
    assert not isinstance(e.value, LabError)  # no lab involved
    assert capsys.readouterr().err == "vms[0].vcpus: must be >= 1\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["host", "join-token", "h1"], "softudc: no CA in {d}/manager/pki; create one with `softudc init`\n"),
    (["plan", "-f", "{d}/none.yaml"], "softudc: {d}/none.yaml: No such file or directory\n"),
    (["plan", "-f", "{root}/configs/farms/demo.yaml"],
     "softudc: give --host NAME:VCPUS:MEMORY (repeatable) or --lab NAME\n"),
])
def test_cli_problems_outside_a_lab_are_one_line_and_exit_1(argv: list[str], message: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["--state-dir", d, *(a.format(d=d, root=ROOT) for a in argv)])
    assert exc.value.code == 1
    assert capsys.readouterr().err == message.format(d=d)
