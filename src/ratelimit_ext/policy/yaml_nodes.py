"""YAML composed into nodes, and typed, line-aware reading of those nodes.

The YAML is composed into nodes rather than loaded into Python objects, so
that every problem can name the line of the node it is about, and so that a
scalar keeps the text it was written with (``value: 10`` is the string
``"10"``, as in envoyproxy/ratelimit). ``Reader`` records each problem it
finds and lets the caller carry on, so one pass finds them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml
from yaml import MappingNode, Node, ScalarNode, SequenceNode

from ratelimit_ext.errors import Problem
from ratelimit_ext.policy.model import Source
from ratelimit_ext.policy.sources import SourceFile

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_NULL_TAG = _TAG + "null"
_BOOL_TAG = _TAG + "bool"
INT_TAG = _TAG + "int"
_FLOAT_TAG = _TAG + "float"
_MERGE_TAG = _TAG + "merge"


def compose(source: SourceFile, problems: list[Problem]) -> Node | None:
    """The file's document as nodes; ``None`` if empty or invalid (reported)."""
    try:
        return yaml.compose(source.data, Loader=_YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 0
        context = f" ({exc.context})" if exc.context else ""
        message = f"invalid YAML: {exc.problem}{context}"
    except yaml.reader.ReaderError as exc:
        line = source.data.count(b"\n", 0, exc.position) + 1
        message = f"invalid YAML: {exc.reason}"
    except yaml.YAMLError as exc:
        line, message = 0, f"invalid YAML: {exc}"
    problems.append(Problem(source.display, line, message))

    return None


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def is_null(node: Node | None) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def shown(node: Node) -> str:
    """How a node is named in a message: its text, or what kind it is."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "nothing"
    return repr(node.value)


class Reader:
    """Typed, line-aware access to the nodes of one file.

    Every complaint is appended to ``problems`` with this file's name and the
    node's line. A method that cannot produce a value returns ``None`` so that
    the caller carries on and more problems are found in one pass.
    """

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems

    def report(self, node: Node, message: str) -> None:
        self.problems.append(Problem(self.file, _line(node), message))

    def source(self, node: Node) -> Source:
        return Source(self.file, _line(node))

    def fields(
        self, node: Node, what: str, allowed: tuple[str, ...]
    ) -> dict[str, Node] | None:
        """A mapping's values by key; unknown and duplicate keys are reported."""
        entries = self.entries(node, what)
        if entries is None:
            return None
        for key, key_node in entries.keys.items():
            if key not in allowed:
                self.report(
                    key_node,
                    f"unknown key '{key}' in {what}; allowed: {', '.join(allowed)}",
                )

        return {key: value for key, value in entries.values.items() if key in allowed}

    def entries(self, node: Node, what: str) -> Entries | None:
        if not isinstance(node, MappingNode):
            self.report(node, f"{what} must be a mapping, got {shown(node)}")
            return None
        entries = Entries(keys={}, values={})
        for key_node, value_node in node.value:
            key = self._key(key_node, entries)
            if key is not None:
                entries.keys[key] = key_node
                entries.values[key] = value_node

        return entries

    def _key(self, key_node: Node, entries: Entries) -> str | None:
        if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
            self.report(key_node, "YAML merge keys ('<<') are not supported")
            return None
        if not isinstance(key_node, ScalarNode):
            self.report(key_node, f"a key must be a scalar, got {shown(key_node)}")
            return None
        key = str(key_node.value)
        if key in entries.keys:
            first = _line(entries.keys[key])
            self.report(key_node, f"duplicate key '{key}' (first at line {first})")
            return None

        return key

    def required(self, node: Node, fields: dict[str, Node], key: str) -> Node | None:
        if key not in fields:
            self.report(node, f"missing required key '{key}'")
        return fields.get(key)

    def text(self, node: Node, what: str) -> str | None:
        """A scalar's written text; ``""`` for an empty (null) value."""
        if not isinstance(node, ScalarNode):
            self.report(node, f"'{what}' must be a string, got {shown(node)}")
            return None

        return "" if node.tag == _NULL_TAG else str(node.value)

    def name(self, node: Node, what: str) -> str | None:
        """Non-empty text."""
        text = self.text(node, what)
        if text is not None and not text.strip():
            self.report(node, f"'{what}' must not be empty")
            return None

        return text

    def flag(self, node: Node, what: str) -> bool | None:
        if not (isinstance(node, ScalarNode) and node.tag == _BOOL_TAG):
            self.report(node, f"'{what}' must be true or false, got {shown(node)}")
            return None

        return bool(self.plain(node, what))

    def integer(self, node: Node, what: str, minimum: int | None) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == INT_TAG):
            self.report(node, f"'{what}' must be an integer, got {shown(node)}")
            return None
        value = self.plain(node, what)
        if not isinstance(value, int):
            return None  # already reported by plain()
        if minimum is not None and value < minimum:
            self.report(node, f"'{what}' must be >= {minimum}, got {value}")
            return None

        return value

    def number(self, node: Node, what: str) -> float | None:
        tags = (INT_TAG, _FLOAT_TAG)
        value = self.plain(node, what) if isinstance(node, ScalarNode) else None
        if node.tag not in tags or value is None or not math.isfinite(value):
            self.report(node, f"'{what}' must be a number, got {shown(node)}")
            return None

        return float(value)

    def sequence(self, node: Node, what: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.report(node, f"'{what}' must be a list, got {shown(node)}")
            return None

        return list(node.value)

    def plain(self, node: Node, what: str) -> Any:
        """The node as ``yaml.safe_load`` would build it (for free-form data)."""
        try:
            return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.report(node, f"'{what}': {exc}")
            return None


@dataclass(frozen=True, slots=True)
class Entries:
    """A mapping's key nodes and value nodes by key text."""

    keys: dict[str, Node]
    values: dict[str, Node]


def optional(fields: dict[str, Node], key: str) -> Node | None:
    """The value of an optional key; an empty (null) value counts as absent."""
    node = fields.get(key)
    return None if node is None or is_null(node) else node


def optional_flag(reader: Reader, fields: dict[str, Node], key: str) -> bool:
    node = optional(fields, key)
    return node is not None and reader.flag(node, key) is True


def optional_name(reader: Reader, fields: dict[str, Node], key: str) -> str | None:
    node = fields.get(key)
    return None if node is None else reader.name(node, key)


def required_name(
    reader: Reader, node: Node, fields: dict[str, Node], key: str
) -> str | None:
    value_node = reader.required(node, fields, key)
    return None if value_node is None else reader.name(value_node, key)


def frozen_items(
    reader: Reader, node: Node | None, what: str
) -> tuple[tuple[str, Any], ...]:
    """A free-form mapping as a tuple of (key, plain value) items."""
    entries = None if node is None else reader.entries(node, f"'{what}'")
    if entries is None:
        return ()

    return tuple(
        (key, reader.plain(value, f"{what}.{key}"))
        for key, value in entries.values.items()
    )
