"""YAML with positions: every value remembers its file, line and column, so an error can point
at it; duplicate keys (which PyYAML would silently merge) are errors too.

Descriptors come from farm-scoped operators, so parsing is bounded (audit R9, R28): anchors and
aliases are refused (an alias tree expands exponentially: "billion laughs", and a recursive one
never ends), and so is nesting deeper than MAX_DEPTH or more than MAX_NODES values. Each refusal
is a Problem with its position like any other, never a RecursionError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass(frozen=True, order=True)
class Mark:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, order=True)
class Problem:
    mark: Mark
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.mark}: {self.path}: {self.message}" if self.path else f"{self.mark}: {self.message}"


class DescriptorError(ValueError):
    """Every problem found in a descriptor, each with its position; nothing was changed."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Node:
    """A YAML value with its position; mappings keep key positions too."""

    value: Any  # dict[str, Node] | list[Node] | scalar
    mark: Mark
    key_marks: dict[str, Mark] = field(default_factory=dict)


_SCALARS = yaml.SafeLoader("")  # only its scalar constructors are used

MAX_DEPTH = 32  # a farm descriptor nests about 6 deep; Python's recursion limit is 1000
MAX_NODES = 100_000  # a 1 MiB body holds fewer values than this without aliases


class _Refused(yaml.composer.ComposerError):  # type: ignore[misc]  # PyYAML ships no types
    """Valid YAML this loader will not build (aliases, depth, size): not a syntax error."""


class _BoundedLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that composes a tree, not a graph: no anchors or aliases (so every node is
    built from its own text and the work is linear in the input), bounded depth and node count."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            what = f"alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{event.anchor}"
            raise _Refused(
                None, None, f"{what}: anchors and aliases are not allowed in a farm descriptor; write the "
                            "value out in full", event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(
                None, None, f"more than {MAX_NODES} values; a farm descriptor is far smaller (split the farm)",
                event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    None, None, f"nested more than {MAX_DEPTH} levels deep; a farm descriptor needs about 6",
                    event.start_mark)
            node: yaml.Node = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


def _mark(file: str, m: yaml.Mark) -> Mark:
    return Mark(file, m.line + 1, m.column + 1)


def load(text: str, file: str) -> tuple[Node | None, list[Problem]]:
    """Parse one YAML document into Nodes; syntax errors and duplicate keys become problems."""
    try:
        root = yaml.compose(text, Loader=_BoundedLoader)
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        mark = _mark(file, m) if m else Mark(file, 1, 1)
        what = "YAML" if isinstance(e, _Refused) else "YAML syntax"
        return None, [Problem(mark, "", f"{what}: {e.problem or e.context}")]
    except yaml.YAMLError as e:
        return None, [Problem(Mark(file, 1, 1), "", f"YAML: {e}")]
    except RecursionError:  # not reachable with MAX_DEPTH; kept so no input can make it a 500
        return None, [Problem(Mark(file, 1, 1), "", f"YAML nested too deep (at most {MAX_DEPTH} levels)")]
    if root is None:
        return None, [Problem(Mark(file, 1, 1), "", "empty document")]
    problems: list[Problem] = []
    return _convert(root, file, problems), problems


def _convert(node: yaml.Node, file: str, problems: list[Problem]) -> Node:
    mark = _mark(file, node.start_mark)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        keys: dict[str, Mark] = {}
        for k, v in node.value:
            kmark = _mark(file, k.start_mark)
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            if key in out:
                problems.append(Problem(kmark, key, f"duplicate key (first at line {keys[key].line})"))
                continue
            keys[key] = kmark
            out[key] = _convert(v, file, problems)
        return Node(out, mark, keys)
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(v, file, problems) for v in node.value], mark)
    value = None
    if isinstance(node, yaml.ScalarNode):
        try:
            value = _SCALARS.construct_object(node, deep=True)
        except yaml.YAMLError:
            value = node.value  # a tag SafeLoader cannot build (e.g. a bare '='): keep the text
    return Node(value, mark)
