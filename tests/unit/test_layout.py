"""tests/unit mirrors the packages (STYLE section 8): `tests/unit/X/` is `softudc/X/` (softudc's
subpackages at the top), `tests/unit/gatekeeper/...` and `tests/unit/vnetd/...` are those packages,
and each test file is named `test_<module>[_<what>].py` after a module of its folder's package.

A few names are about several modules at once and may sit in any folder: CROSS_CUTTING. Folders
without Python files (test data, such as tests/unit/model/broken/) are not checked.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("gatekeeper", "vnetd")
# Hostile input across a package's surface, the OpenAPI fuzzing of the whole API, and the checks
# of the tree itself (imports, this layout).
CROSS_CUTTING = ("test_adversarial_", "test_openapi_", "test_imports.py", "test_layout.py")


def package_of(root: Path, folder: Path) -> Path:
    """The package a unit-test folder mirrors."""
    rel = folder.relative_to(root / "tests" / "unit")
    return root / rel if rel.parts and rel.parts[0] in DAEMONS else root / "softudc" / rel


def modules(package: Path) -> set[str]:
    """The modules of `package` a test file may be named after (a subpackage has its own folder)."""
    return {p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}


def misplaced(root: Path = ROOT) -> list[str]:
    """Every unit-test folder without its package and test file without its module, with the fix."""
    unit = root / "tests" / "unit"
    folders = [unit, *(d for d in unit.rglob("*") if d.is_dir() and any(d.glob("*.py")))]
    problems = []
    for folder in sorted(folders):
        package = package_of(root, folder)
        if not package.is_dir():
            problems.append(f"{folder.relative_to(root)}: no package {package.relative_to(root)}; move its tests "
                            "to the folder of the package they test")
            continue
        names = modules(package)
        for test in sorted(folder.glob("test_*.py")):
            stem = test.stem.removeprefix("test_")
            if test.name.startswith(CROSS_CUTTING) or any(stem == m or stem.startswith(f"{m}_") for m in names):
                continue
            problems.append(f"{test.relative_to(root)}: names no module of {package.relative_to(root)}; name it "
                            "test_<module>[_<what>].py or move it to the folder of its module's package")
    return problems


def test_every_unit_test_folder_and_file_mirrors_a_package_and_module() -> None:
    problems = misplaced()
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_stray_folder_and_a_stray_file(tmp_path: Path) -> None:
    for path in ("softudc/wire/esp.py", "gatekeeper/vnet/port.py", "gatekeeper/agent.py", "softudc/pki.py",
                 "tests/unit/wire/test_esp_fuzz.py", "tests/unit/wire/test_adversarial_x.py",
                 "tests/unit/gatekeeper/test_port.py", "tests/unit/gatekeeper/vnet/test_port.py",
                 "tests/unit/gatekeeper/test_agent.py", "tests/unit/test_pki.py", "tests/unit/test_cli_x.py",
                 "tests/unit/nothing/test_esp.py", "tests/unit/wire/data/sample.txt"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    assert misplaced(tmp_path) == [
        "tests/unit/test_cli_x.py: names no module of softudc; name it test_<module>[_<what>].py or move it to "
        "the folder of its module's package",
        "tests/unit/gatekeeper/test_port.py: names no module of gatekeeper; name it test_<module>[_<what>].py or "
        "move it to the folder of its module's package",
        "tests/unit/nothing: no package softudc/nothing; move its tests to the folder of the package they test"]
