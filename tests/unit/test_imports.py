"""The packages' import rules, so that no cycle between them can come back:

- `softudc` (the library, the CLI, the manager) imports neither `gatekeeper` nor `vnetd`;
- `gatekeeper` and `vnetd` import from `softudc` only the shared pieces listed in SHARED;
- `softudc.manager` and `gatekeeper` never import each other (the contract is on the wire).

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("gatekeeper", "vnetd")
SHARED = ("wire", "model", "security", "localapi", "configfile", "atomicfile", "pki", "libvirturi", "daemonmain",
          "pids")


def imports(package: str) -> Iterator[tuple[str, str]]:
    """(module file relative to the repository, imported module) for every import in `package`."""
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT)
        here = ".".join(rel.with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            if isinstance(node, ast.Import):
                yield from ((str(rel), a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(here, path.name == "__init__.py", node.module, node.level)
                # `from softudc import localapi` imports the module softudc.localapi
                yield from ((str(rel), f"{base}.{a.name}") for a in node.names)


def _absolute(here: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = here.split(".")[: len(here.split(".")) - level + (1 if is_package else 0)]
    return ".".join(parts + ([module] if module else []))


def _top(name: str, depth: int = 1) -> str:
    return ".".join(name.split(".")[:depth])


def test_the_walk_sees_imports_inside_functions_and_the_from_package_form() -> None:
    found = set(imports("gatekeeper"))
    assert ("gatekeeper/api.py", "softudc.localapi") in found  # `from softudc import localapi`
    assert ("gatekeeper/agent.py", "gatekeeper.reconciler.Reconciler") in found  # inside run()
    assert _absolute("softudc.lab.lab", False, "shell", 1) == "softudc.lab.shell"
    assert _absolute("softudc.lab", True, "lab", 1) == "softudc.lab.lab"


def test_softudc_imports_no_daemon() -> None:
    bad = [f"{f}: {m}" for f, m in imports("softudc") if _top(m) in DAEMONS]
    assert bad == [], "softudc must not import the daemons; move what it needs into softudc (e.g. softudc.localapi)"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_a_daemon_imports_only_the_shared_parts_of_softudc(daemon: str) -> None:
    bad = [f"{f}: {m}" for f, m in imports(daemon) if _top(m) == "softudc" and _top(m, 2)[8:] not in SHARED]
    assert bad == [], f"{daemon} may import only softudc.{{{','.join(SHARED)}}}"


def test_the_manager_and_the_gatekeeper_do_not_import_each_other() -> None:
    manager = [f"{f}: {m}" for f, m in imports("softudc") if f.startswith("softudc/manager/") and _top(m) in DAEMONS]
    gatekeeper = [f"{f}: {m}" for f, m in imports("gatekeeper") if _top(m, 2) == "softudc.manager"]
    assert manager == [] and gatekeeper == []


def _module(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (`from pkg import name` counts as pkg.name when that
    is a module, else as pkg)."""
    ours = {_module(str(p.relative_to(ROOT))) for pkg in ("softudc", *DAEMONS) for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in ours}
    for pkg in ("softudc", *DAEMONS):
        for path, name in imports(pkg):
            while name and name not in ours:
                name = name.rpartition(".")[0]
            if name and name != _module(path):
                graph[_module(path)].add(name)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle, as the modules along it, or [] (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, todo = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(sorted(graph[nxt])))
    return []


def test_the_cycle_finder_finds_a_cycle_and_its_modules() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_module_of_ours_is_in_an_import_cycle() -> None:
    """The lab's records live in softudc/lab/state.py so that lab.py imports its helpers at the
    top; a lazy import that only hides a cycle counts here all the same."""
    graph = import_graph()
    assert "softudc.lab.state" in graph["softudc.lab.vnetd"]
    assert cycle(graph) == [], "break the cycle: move what both sides need into a module of its own"
