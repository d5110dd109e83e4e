"""Domain policy files (top-level ``domain:``) and their descriptor trees.

A domain's rate limits and tiers are read by ``limits_parser`` and its
business rules by ``rules_parser``; this module puts them together into
one ``Domain``.
"""

from __future__ import annotations

from collections.abc import Iterable

from yaml import Node

from ratelimit_ext.policy.limits_parser import parse_rate_limit, parse_tiers
from ratelimit_ext.policy.model import (
    DescriptorRule,
    Domain,
    FailurePolicy,
    Source,
    Tier,
)
from ratelimit_ext.policy.rules_parser import parse_rules
from ratelimit_ext.policy.yaml_nodes import (
    Reader,
    frozen_items,
    optional,
    optional_flag,
    optional_name,
    required_name,
)

_DOMAIN_FIELDS = (
    "domain",
    "descriptors",
    "tier_key",
    "identity_key",
    "default_tier",
    "tiers",
    "rules",
    "failure_policy",
    "all_or_nothing",
)
_DESCRIPTOR_FIELDS = (
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
)


def parse_domain(reader: Reader, root: Node) -> Domain | None:
    """A domain policy file as a ``Domain``; ``None`` if it has no usable name."""
    fields = reader.fields(root, "domain policy", _DOMAIN_FIELDS)
    if fields is None:
        return None
    name = reader.name(fields["domain"], "domain")
    tiers = parse_tiers(reader, optional(fields, "tiers"))
    default_tier = _parse_default_tier(reader, fields, tiers)
    has_tiers = optional(fields, "tiers") is not None
    descriptors = _parse_descriptor_list(
        reader, optional(fields, "descriptors"), has_tiers
    )
    rules = parse_rules(reader, optional(fields, "rules"), _limit_names(descriptors))
    if name is None:
        return None

    return Domain(
        name=name,
        descriptors=descriptors,
        tiers=tiers,
        default_tier=default_tier,
        tier_key=optional_name(reader, fields, "tier_key") or "tier",
        identity_key=optional_name(reader, fields, "identity_key") or "user_id",
        rules=rules,
        failure_policy=_parse_failure_policy(reader, fields),
        all_or_nothing=_parse_all_or_nothing(reader, fields),
        source=reader.source(fields["domain"]),
    )


def _parse_all_or_nothing(reader: Reader, fields: dict[str, Node]) -> bool | None:
    node = optional(fields, "all_or_nothing")
    return None if node is None else reader.flag(node, "all_or_nothing")


def _parse_failure_policy(
    reader: Reader, fields: dict[str, Node]
) -> FailurePolicy | None:
    node = optional(fields, "failure_policy")
    text = None if node is None else reader.text(node, "failure_policy")
    if node is None or text is None:
        return None
    try:
        return FailurePolicy(text.strip().lower())
    except ValueError:
        choices = ", ".join(policy.value for policy in FailurePolicy)
        reader.report(
            node, f"unknown failure_policy {text!r}; expected one of: {choices}"
        )
        return None


def _parse_default_tier(
    reader: Reader, fields: dict[str, Node], tiers: tuple[Tier, ...]
) -> str | None:
    name = optional_name(reader, fields, "default_tier")
    defined = [tier.name for tier in tiers]
    if name is not None and name not in defined:
        reader.report(
            fields["default_tier"],
            f"default_tier '{name}' is not a defined tier "
            f"(defined: {', '.join(defined) or 'none'})",
        )
        return None

    return name


def _limit_names(descriptors: Iterable[DescriptorRule]) -> set[str]:
    names: set[str] = set()
    for rule in descriptors:
        if rule.rate_limit is not None and rule.rate_limit.name is not None:
            names.add(rule.rate_limit.name)
        names |= _limit_names(rule.children)

    return names


# --- descriptors --------------------------------------------------------------


def _parse_descriptor_list(
    reader: Reader, node: Node | None, has_tiers: bool
) -> tuple[DescriptorRule, ...]:
    items = None if node is None else reader.sequence(node, "descriptors")
    seen: dict[tuple[str, str | None], Source] = {}
    rules: list[DescriptorRule] = []
    for item in items or ():
        rule = _parse_descriptor(reader, item, has_tiers)
        if rule is None or rule.source is None:
            continue
        first = seen.setdefault((rule.key, rule.value), rule.source)
        if first is not rule.source:
            reader.report(item, _duplicate_descriptor(rule, first))
        rules.append(rule)

    return tuple(rules)


def _duplicate_descriptor(rule: DescriptorRule, first: Source) -> str:
    value = "no value" if rule.value is None else f"value '{rule.value}'"
    return (
        f"duplicate descriptor: key '{rule.key}' with {value} "
        f"is already defined at line {first.line}"
    )


def _parse_descriptor(
    reader: Reader, node: Node, has_tiers: bool
) -> DescriptorRule | None:
    fields = reader.fields(node, "descriptor", _DESCRIPTOR_FIELDS)
    if fields is None:
        return None
    key = required_name(reader, node, fields, "key")
    value = _descriptor_value(reader, fields)
    rate_limit_node = optional(fields, "rate_limit")
    rate_limit = (
        None
        if rate_limit_node is None
        else parse_rate_limit(reader, rate_limit_node, has_tiers)
    )
    share_threshold = optional_flag(reader, fields, "share_threshold")
    if share_threshold and (value is None or "*" not in value):
        reader.report(
            fields["share_threshold"],
            "share_threshold needs a wildcard value (a '*' in 'value')",
        )
    children = _parse_descriptor_list(
        reader, optional(fields, "descriptors"), has_tiers
    )
    if key is None:
        return None

    return DescriptorRule(
        key=key,
        value=value,
        rate_limit=rate_limit,
        children=children,
        shadow_mode=optional_flag(reader, fields, "shadow_mode"),
        quota_mode=optional_flag(reader, fields, "quota_mode"),
        detailed_metric=optional_flag(reader, fields, "detailed_metric"),
        value_to_metric=optional_flag(reader, fields, "value_to_metric"),
        share_threshold=share_threshold,
        metadata=frozen_items(reader, optional(fields, "metadata"), "metadata"),
        source=reader.source(node),
    )


def _descriptor_value(reader: Reader, fields: dict[str, Node]) -> str | None:
    """The written text of ``value``; absent or empty means "any value"."""
    node = optional(fields, "value")
    text = None if node is None else reader.text(node, "value")
    return text or None
