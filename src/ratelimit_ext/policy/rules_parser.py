"""A domain's business rules (``rules:``), with their CEL conditions compiled.

A ``when`` condition is compiled here only to check it; problems in it are
reported with the compiler's own error lines.
"""

from __future__ import annotations

from collections.abc import Callable

import cel
from yaml import Node, ScalarNode

from ratelimit_ext.policy.model import BusinessRule, RuleAction, Source
from ratelimit_ext.policy.yaml_nodes import (
    INT_TAG,
    Reader,
    optional,
    required_name,
    shown,
)

_RULE_FIELDS = (
    "name",
    "when",
    "multiply",
    "add",
    "set",
    "rollout_percent",
    "limits",
)


def parse_rules(
    reader: Reader, node: Node | None, limit_names: set[str]
) -> tuple[BusinessRule, ...]:
    """A domain's ``rules`` list; each rule's ``limits`` must be in ``limit_names``."""
    items = None if node is None else reader.sequence(node, "rules")
    seen: dict[str, Source] = {}
    rules: list[BusinessRule] = []
    for item in items or ():
        rule = _parse_rule(reader, item, limit_names)
        if rule is None or rule.source is None:
            continue
        first = seen.setdefault(rule.name, rule.source)
        if first is not rule.source:
            reader.report(
                item, f"rule '{rule.name}' is already defined at line {first.line}"
            )
            continue
        rules.append(rule)

    return tuple(rules)


def _parse_rule(
    reader: Reader, node: Node, limit_names: set[str]
) -> BusinessRule | None:
    fields = reader.fields(node, "rule", _RULE_FIELDS)
    if fields is None:
        return None
    name = required_name(reader, node, fields, "name")
    when = _parse_condition(reader, node, fields)
    action = _parse_action(reader, node, fields)
    rollout = _parse_rollout(reader, fields)
    targets = _parse_rule_limits(reader, optional(fields, "limits"), limit_names)
    if name is None or when is None or action is None:
        return None

    return BusinessRule(
        name=name,
        when=when,
        action=action[0],
        amount=action[1],
        rollout_percent=rollout,
        limit_names=targets,
        source=reader.source(node),
    )


def _parse_condition(reader: Reader, node: Node, fields: dict[str, Node]) -> str | None:
    when_node = reader.required(node, fields, "when")
    source = None if when_node is None else reader.name(when_node, "when")
    if when_node is None or source is None:
        return None
    try:
        cel.compile(source)
    except ValueError as exc:
        reader.report(when_node, f"'when' is not valid CEL: {_cel_error(exc)}")
        return None

    return source


def _cel_error(exc: ValueError) -> str:
    """The compiler's ``ERROR:`` lines, without the echoed source and caret."""
    lines = str(exc).splitlines()
    errors = [line[line.index("ERROR:") :] for line in lines if "ERROR:" in line]
    return "; ".join(errors) or " ".join(line.strip() for line in lines)


_ACTION_CHECKS: dict[RuleAction, tuple[Callable[[float], bool], str]] = {
    RuleAction.MULTIPLY: (lambda amount: amount > 0, "a number > 0"),
    RuleAction.ADD: (lambda amount: amount.is_integer(), "an integer"),
    RuleAction.SET: (
        lambda amount: amount.is_integer() and amount >= 0,
        "an integer >= 0",
    ),
}


def _parse_action(
    reader: Reader, node: Node, fields: dict[str, Node]
) -> tuple[RuleAction, float] | None:
    present = [action for action in RuleAction if action.value in fields]
    if len(present) != 1:
        names = ", ".join(action.value for action in RuleAction)
        given = ", ".join(action.value for action in present) or "none"
        where = fields[present[1].value] if present else node
        reader.report(where, f"a rule needs exactly one of {names} (got {given})")
        return None
    action = present[0]
    value_node = fields[action.value]
    amount = _parse_amount(reader, value_node, action)

    return None if amount is None else (action, amount)


def _parse_amount(reader: Reader, node: Node, action: RuleAction) -> float | None:
    check, expected = _ACTION_CHECKS[action]
    integral = action is not RuleAction.MULTIPLY
    if integral and not (isinstance(node, ScalarNode) and node.tag == INT_TAG):
        reader.report(node, f"'{action.value}' must be {expected}, got {shown(node)}")
        return None
    amount = reader.number(node, action.value)
    if amount is not None and not check(amount):
        reader.report(node, f"'{action.value}' must be {expected}, got {shown(node)}")
        return None

    return amount


def _parse_rollout(reader: Reader, fields: dict[str, Node]) -> float:
    node = optional(fields, "rollout_percent")
    percent = None if node is None else reader.number(node, "rollout_percent")
    if node is None or percent is None:
        return 100.0
    if not 0 <= percent <= 100:
        reader.report(node, f"'rollout_percent' must be 0..100, got {shown(node)}")

    return percent


def _parse_rule_limits(
    reader: Reader, node: Node | None, limit_names: set[str]
) -> tuple[str, ...]:
    items = None if node is None else reader.sequence(node, "limits")
    names: list[str] = []
    for item in items or ():
        name = reader.name(item, "limits")
        if name is not None and name not in limit_names:
            reader.report(
                item, f"no rate_limit named '{name}' in this domain (rule 'limits')"
            )
        elif name is not None:
            names.append(name)

    return tuple(names)
