"""YAML with positions: every value remembers its file, line and column, so an error can point
at it; duplicate keys (which PyYAML would silently merge) are errors too."""

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


def _mark(file: str, m: yaml.Mark) -> Mark:
    return Mark(file, m.line + 1, m.column + 1)


def load(text: str, file: str) -> tuple[Node | None, list[Problem]]:
    """Parse one YAML document into Nodes; syntax errors and duplicate keys become problems."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        mark = _mark(file, m) if m else Mark(file, 1, 1)
        return None, [Problem(mark, "", f"YAML syntax: {e.problem or e.context}")]
    except yaml.YAMLError as e:
        return None, [Problem(Mark(file, 1, 1), "", f"YAML: {e}")]
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
