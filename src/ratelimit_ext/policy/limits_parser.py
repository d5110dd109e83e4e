"""A descriptor's ``rate_limit``, the windows it counts in, and a domain's tiers.

A window is a unit, a limit per unit, an algorithm and (for a token
bucket) a burst; a tier is a named set of windows, one per unit, whose
algorithm and burst are the defaults for its windows.
"""

from __future__ import annotations

from dataclasses import dataclass

from yaml import Node

from ratelimit_ext.policy.model import Algorithm, RateLimit, Source, Tier, Unit, Window
from ratelimit_ext.policy.yaml_nodes import (
    Reader,
    optional,
    optional_flag,
    optional_name,
    required_name,
)

_WINDOW_FIELDS = ("unit", "requests_per_unit", "algorithm", "burst")
_RATE_LIMIT_FIELDS = (*_WINDOW_FIELDS, "unlimited", "name", "replaces", "from_tier")
_REPLACES_FIELDS = ("name",)
_TIER_FIELDS = ("name", "algorithm", "burst", "limits")

_UNIT_NAMES = ", ".join(unit.name.lower() for unit in Unit)
_ALGORITHM_NAMES = ", ".join(algorithm.value for algorithm in Algorithm)


@dataclass(frozen=True, slots=True)
class _WindowDefaults:
    """What a window inherits when it does not say: a tier's defaults."""

    algorithm: Algorithm = Algorithm.FIXED_WINDOW
    burst: int | None = None


def parse_rate_limit(reader: Reader, node: Node, has_tiers: bool) -> RateLimit | None:
    """A descriptor's ``rate_limit`` mapping; ``None`` if it is not a mapping."""
    fields = reader.fields(node, "rate_limit", _RATE_LIMIT_FIELDS)
    if fields is None:
        return None
    name = optional_name(reader, fields, "name")
    replaces = _parse_replaces(reader, fields.get("replaces"), name)
    unlimited = optional_flag(reader, fields, "unlimited")
    from_tier = optional_flag(reader, fields, "from_tier")
    if from_tier and not has_tiers:
        reader.report(
            fields["from_tier"], "from_tier needs tiers: this domain defines none"
        )
    window = None
    if unlimited:
        _reject_with_unlimited(reader, fields)
    else:
        window = _parse_window(
            reader, node, fields, _WindowDefaults(), required=not from_tier
        )

    return RateLimit(
        windows=() if window is None else (window,),
        name=name,
        unlimited=unlimited,
        from_tier=from_tier,
        replaces=replaces,
        source=reader.source(node),
    )


def _reject_with_unlimited(reader: Reader, fields: dict[str, Node]) -> None:
    for key in (*_WINDOW_FIELDS, "from_tier"):
        if key in fields:
            reader.report(fields[key], f"'{key}' cannot be used with unlimited: true")


def _parse_replaces(
    reader: Reader, node: Node | None, own_name: str | None
) -> tuple[str, ...]:
    items = None if node is None else reader.sequence(node, "replaces")
    if node is not None and items == []:
        reader.report(node, "'replaces' must not be an empty list")
    names: list[str] = []
    for item in items or ():
        name = _parse_replaced_name(reader, item)
        if name is not None and name == own_name:
            reader.report(item, f"rate limit '{name}' cannot replace itself")
        elif name is not None:
            names.append(name)

    return tuple(names)


def _parse_replaced_name(reader: Reader, item: Node) -> str | None:
    fields = reader.fields(item, "replaces entry", _REPLACES_FIELDS)
    return None if fields is None else required_name(reader, item, fields, "name")


def _parse_window(
    reader: Reader,
    node: Node,
    fields: dict[str, Node],
    defaults: _WindowDefaults,
    required: bool,
) -> Window | None:
    """``unit`` + ``requests_per_unit`` (+ algorithm, burst) -> a ``Window``.

    When ``required`` is false (a ``from_tier`` fallback) the window may be
    left out entirely, but then algorithm and burst have nothing to apply to.
    """
    if not required and "unit" not in fields and "requests_per_unit" not in fields:
        for key in ("algorithm", "burst"):
            if key in fields:
                reader.report(
                    fields[key],
                    f"'{key}' applies to the fallback window: "
                    "add unit and requests_per_unit, or remove it",
                )
        return None
    unit = _parse_unit(reader, node, fields)
    limit_node = reader.required(node, fields, "requests_per_unit")
    limit = (
        None
        if limit_node is None
        else reader.integer(limit_node, "requests_per_unit", minimum=0)
    )
    algorithm = _parse_algorithm(reader, fields) or defaults.algorithm
    burst = _parse_burst(reader, fields, algorithm, defaults)
    if unit is None or limit is None:
        return None

    return Window(limit=limit, unit=unit, algorithm=algorithm, burst=burst)


def _parse_unit(reader: Reader, node: Node, fields: dict[str, Node]) -> Unit | None:
    unit_node = reader.required(node, fields, "unit")
    text = None if unit_node is None else reader.text(unit_node, "unit")
    if unit_node is None or text is None:
        return None
    try:
        return Unit.parse(text)
    except KeyError:
        reader.report(
            unit_node, f"unknown unit {text!r}; expected one of: {_UNIT_NAMES}"
        )
        return None


def _parse_algorithm(reader: Reader, fields: dict[str, Node]) -> Algorithm | None:
    node = optional(fields, "algorithm")
    text = None if node is None else reader.text(node, "algorithm")
    if node is None or text is None:
        return None
    try:
        return Algorithm(text.strip().lower())
    except ValueError:
        reader.report(
            node, f"unknown algorithm {text!r}; expected one of: {_ALGORITHM_NAMES}"
        )
        return None


def _parse_burst(
    reader: Reader,
    fields: dict[str, Node],
    algorithm: Algorithm,
    defaults: _WindowDefaults,
) -> int | None:
    node = optional(fields, "burst")
    if algorithm is not Algorithm.TOKEN_BUCKET:
        if node is not None:
            reader.report(node, "'burst' needs algorithm: token_bucket")
        return None
    if node is None:
        return defaults.burst

    return reader.integer(node, "burst", minimum=1)


# --- tiers --------------------------------------------------------------------


def parse_tiers(reader: Reader, node: Node | None) -> tuple[Tier, ...]:
    """A domain's ``tiers`` list; a name defined twice is reported, kept once."""
    items = None if node is None else reader.sequence(node, "tiers")
    seen: dict[str, Source] = {}
    tiers: list[Tier] = []
    for item in items or ():
        tier = _parse_tier(reader, item)
        if tier is None or tier.source is None:
            continue
        first = seen.setdefault(tier.name, tier.source)
        if first is not tier.source:
            reader.report(
                item, f"tier '{tier.name}' is already defined at line {first.line}"
            )
            continue
        tiers.append(tier)

    return tuple(tiers)


def _parse_tier(reader: Reader, node: Node) -> Tier | None:
    fields = reader.fields(node, "tier", _TIER_FIELDS)
    if fields is None:
        return None
    name = required_name(reader, node, fields, "name")
    defaults = _tier_defaults(reader, fields)
    windows = _parse_tier_windows(reader, node, fields, defaults)
    burst_node = optional(fields, "burst")
    has_bucket = any(w.algorithm is Algorithm.TOKEN_BUCKET for w in windows)
    if burst_node is not None and windows and not has_bucket:
        reader.report(
            burst_node, "tier 'burst' needs a window with algorithm: token_bucket"
        )
    if name is None:
        return None

    return Tier(name=name, windows=windows, source=reader.source(node))


def _tier_defaults(reader: Reader, fields: dict[str, Node]) -> _WindowDefaults:
    algorithm = _parse_algorithm(reader, fields) or Algorithm.FIXED_WINDOW
    node = optional(fields, "burst")
    burst = None if node is None else reader.integer(node, "burst", minimum=1)

    return _WindowDefaults(algorithm=algorithm, burst=burst)


def _parse_tier_windows(
    reader: Reader, node: Node, fields: dict[str, Node], defaults: _WindowDefaults
) -> tuple[Window, ...]:
    limits_node = reader.required(node, fields, "limits")
    items = None if limits_node is None else reader.sequence(limits_node, "limits")
    if limits_node is not None and items == []:
        reader.report(limits_node, "a tier needs at least one window in 'limits'")
    windows: dict[Unit, Window] = {}
    for item in items or ():
        window = _parse_tier_window(reader, item, defaults)
        if window is not None and window.unit in windows:
            reader.report(
                item, f"this tier already has a '{window.unit.name.lower()}' window"
            )
        elif window is not None:
            windows[window.unit] = window

    return tuple(windows.values())


def _parse_tier_window(
    reader: Reader, node: Node, defaults: _WindowDefaults
) -> Window | None:
    fields = reader.fields(node, "tier window", _WINDOW_FIELDS)
    if fields is None:
        return None

    return _parse_window(reader, node, fields, defaults, required=True)
