"""Policy files on disk -> one validated ``Policy``.

The YAML is composed into nodes rather than loaded into Python objects, so
that every problem can name the line of the node it is about, and so that a
scalar keeps the text it was written with (``value: 10`` is the string
``"10"``, as in envoyproxy/ratelimit). All files are read and checked before
anything is returned: either every problem is raised together in one
``PolicyError``, or a complete ``Policy`` comes back.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cel
import yaml
from yaml import MappingNode, Node, ScalarNode, SequenceNode

from ratelimit_ext.errors import PolicyError, Problem
from ratelimit_ext.policy.model import (
    Algorithm,
    ApiKey,
    BusinessRule,
    DescriptorRule,
    Domain,
    Policy,
    RateLimit,
    RuleAction,
    Source,
    Tier,
    Unit,
    Window,
)

logger = logging.getLogger(__name__)

_YAML_SUFFIXES = (".yaml", ".yml")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_NULL_TAG = _TAG + "null"
_BOOL_TAG = _TAG + "bool"
_INT_TAG = _TAG + "int"
_FLOAT_TAG = _TAG + "float"
_MERGE_TAG = _TAG + "merge"

_DOMAIN_FIELDS = (
    "domain",
    "descriptors",
    "tier_key",
    "identity_key",
    "default_tier",
    "tiers",
    "rules",
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
_WINDOW_FIELDS = ("unit", "requests_per_unit", "algorithm", "burst")
_RATE_LIMIT_FIELDS = (*_WINDOW_FIELDS, "unlimited", "name", "replaces", "from_tier")
_REPLACES_FIELDS = ("name",)
_TIER_FIELDS = ("name", "algorithm", "burst", "limits")
_RULE_FIELDS = (
    "name",
    "when",
    "multiply",
    "add",
    "set",
    "rollout_percent",
    "limits",
)
_KEYS_FILE_FIELDS = ("api_keys",)
_KEY_FIELDS = ("sha256", "identity", "tier", "attributes", "disabled")

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_UNIT_NAMES = ", ".join(unit.name.lower() for unit in Unit)
_ALGORITHM_NAMES = ", ".join(algorithm.value for algorithm in Algorithm)
_FILE_KIND_HINT = (
    "not a policy file: expected a domain policy (top-level 'domain:') "
    "or an API keys file (top-level 'api_keys:')"
)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load a policy file, or every YAML file under a directory.

    In a directory, ``*.yaml`` and ``*.yml`` files are found recursively and
    read in order of their relative path; every entry whose name starts with
    a dot is skipped at every level (so a Kubernetes ConfigMap mount, with its
    ``..data`` and ``..<timestamp>`` directories, is read once through its
    visible symlinks). Raises ``PolicyError`` with every problem found.
    """
    problems: list[Problem] = []
    sources = _read_sources(path, problems)
    domains: list[Domain] = []
    api_keys: list[ApiKey] = []
    for source in sources:
        _parse_source(source, problems, domains, api_keys)
    _check_unique_domains(domains, problems)
    _check_unique_keys(api_keys, problems)
    if problems:
        raise PolicyError(sorted(problems, key=lambda p: (p.file, p.line)))

    return Policy(
        domains=tuple(domains),
        api_keys=tuple(api_keys),
        files=tuple(source.display for source in sources),
        digest=_digest(sources),
    )


# --- finding and reading files ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SourceFile:
    """One file's bytes, with the name shown to users and the digest name."""

    display: str
    relative: str
    data: bytes


def _read_sources(
    path: str | os.PathLike[str], problems: list[Problem]
) -> list[_SourceFile]:
    given = os.fspath(path)
    root = Path(given)
    if root.is_dir():
        found = _walk_directory(root, given, problems)
    elif root.exists():
        found = [(root.name, given)]
    else:
        problems.append(Problem(given, 0, "no such file or directory"))
        return []
    sources = (_read_one(display, relative, problems) for relative, display in found)

    return [source for source in sources if source is not None]


def _walk_directory(
    root: Path, given: str, problems: list[Problem]
) -> list[tuple[str, str]]:
    """(relative name, display path) of every YAML file under ``root``, sorted."""
    found = _yaml_files(root, PurePosixPath(), frozenset(), problems)
    relatives = sorted(found, key=str)

    return [(str(rel), os.path.join(given, *rel.parts)) for rel in relatives]


def _yaml_files(
    directory: Path,
    relative: PurePosixPath,
    ancestors: frozenset[Path],
    problems: list[Problem],
) -> Iterator[PurePosixPath]:
    real = directory.resolve()
    if real in ancestors:
        return  # a symlink back up the tree: already being walked
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        problems.append(Problem(str(directory), 0, f"cannot list: {exc.strerror}"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _yaml_files(
                entry, relative / entry.name, ancestors | {real}, problems
            )
        elif entry.suffix.lower() in _YAML_SUFFIXES:
            yield relative / entry.name


def _read_one(
    display: str, relative: str, problems: list[Problem]
) -> _SourceFile | None:
    try:
        data = Path(display).read_bytes()
    except OSError as exc:
        problems.append(Problem(display, 0, f"cannot read: {exc.strerror}"))
        return None

    return _SourceFile(display=display, relative=relative, data=data)


def _digest(sources: Iterable[_SourceFile]) -> str:
    """SHA-256 over the (relative name, bytes) pairs, in relative-name order."""
    digest = hashlib.sha256()
    for source in sorted(sources, key=lambda s: s.relative):
        for part in (source.relative.encode("utf-8"), source.data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)

    return digest.hexdigest()


# --- one file -----------------------------------------------------------------


def _parse_source(
    source: _SourceFile,
    problems: list[Problem],
    domains: list[Domain],
    api_keys: list[ApiKey],
) -> None:
    reader = _Reader(source.display, problems)
    root = _compose(source, problems)
    if root is None or _is_null(root):
        logger.debug("skipping %s: no YAML document", source.display)
        return
    if not isinstance(root, MappingNode):
        reader.report(root, _FILE_KIND_HINT)
        return
    top_keys = {key.value for key, _ in root.value if isinstance(key, ScalarNode)}
    if "domain" in top_keys:
        domain = _parse_domain(reader, root)
        domains.extend([domain] if domain is not None else [])
    elif "api_keys" in top_keys:
        api_keys.extend(_parse_keys_file(reader, root))
    else:
        reader.report(root, _FILE_KIND_HINT)


def _compose(source: _SourceFile, problems: list[Problem]) -> Node | None:
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


# --- typed access to nodes ----------------------------------------------------


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _is_null(node: Node | None) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _shown(node: Node) -> str:
    """How a node is named in a message: its text, or what kind it is."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "nothing"
    return repr(node.value)


class _Reader:
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

    def entries(self, node: Node, what: str) -> _Entries | None:
        if not isinstance(node, MappingNode):
            self.report(node, f"{what} must be a mapping, got {_shown(node)}")
            return None
        entries = _Entries(keys={}, values={})
        for key_node, value_node in node.value:
            key = self._key(key_node, entries)
            if key is not None:
                entries.keys[key] = key_node
                entries.values[key] = value_node

        return entries

    def _key(self, key_node: Node, entries: _Entries) -> str | None:
        if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
            self.report(key_node, "YAML merge keys ('<<') are not supported")
            return None
        if not isinstance(key_node, ScalarNode):
            self.report(key_node, f"a key must be a scalar, got {_shown(key_node)}")
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
            self.report(node, f"'{what}' must be a string, got {_shown(node)}")
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
            self.report(node, f"'{what}' must be true or false, got {_shown(node)}")
            return None

        return bool(self.plain(node, what))

    def integer(self, node: Node, what: str, minimum: int | None) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == _INT_TAG):
            self.report(node, f"'{what}' must be an integer, got {_shown(node)}")
            return None
        value = self.plain(node, what)
        if not isinstance(value, int):
            return None  # already reported by plain()
        if minimum is not None and value < minimum:
            self.report(node, f"'{what}' must be >= {minimum}, got {value}")
            return None

        return value

    def number(self, node: Node, what: str) -> float | None:
        tags = (_INT_TAG, _FLOAT_TAG)
        value = self.plain(node, what) if isinstance(node, ScalarNode) else None
        if node.tag not in tags or value is None or not math.isfinite(value):
            self.report(node, f"'{what}' must be a number, got {_shown(node)}")
            return None

        return float(value)

    def sequence(self, node: Node, what: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.report(node, f"'{what}' must be a list, got {_shown(node)}")
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
class _Entries:
    """A mapping's key nodes and value nodes by key text."""

    keys: dict[str, Node]
    values: dict[str, Node]


def _optional(fields: dict[str, Node], key: str) -> Node | None:
    """The value of an optional key; an empty (null) value counts as absent."""
    node = fields.get(key)
    return None if node is None or _is_null(node) else node


def _optional_flag(reader: _Reader, fields: dict[str, Node], key: str) -> bool:
    node = _optional(fields, key)
    return node is not None and reader.flag(node, key) is True


def _optional_name(reader: _Reader, fields: dict[str, Node], key: str) -> str | None:
    node = fields.get(key)
    return None if node is None else reader.name(node, key)


def _required_name(
    reader: _Reader, node: Node, fields: dict[str, Node], key: str
) -> str | None:
    value_node = reader.required(node, fields, key)
    return None if value_node is None else reader.name(value_node, key)


def _frozen_items(
    reader: _Reader, node: Node | None, what: str
) -> tuple[tuple[str, Any], ...]:
    """A free-form mapping as a tuple of (key, plain value) items."""
    entries = None if node is None else reader.entries(node, f"'{what}'")
    if entries is None:
        return ()

    return tuple(
        (key, reader.plain(value, f"{what}.{key}"))
        for key, value in entries.values.items()
    )


# --- domain policy files ------------------------------------------------------


def _parse_domain(reader: _Reader, root: Node) -> Domain | None:
    fields = reader.fields(root, "domain policy", _DOMAIN_FIELDS)
    if fields is None:
        return None
    name = reader.name(fields["domain"], "domain")
    tiers = _parse_tiers(reader, _optional(fields, "tiers"))
    default_tier = _parse_default_tier(reader, fields, tiers)
    has_tiers = _optional(fields, "tiers") is not None
    descriptors = _parse_descriptor_list(
        reader, _optional(fields, "descriptors"), has_tiers
    )
    rules = _parse_rules(reader, _optional(fields, "rules"), _limit_names(descriptors))
    if name is None:
        return None

    return Domain(
        name=name,
        descriptors=descriptors,
        tiers=tiers,
        default_tier=default_tier,
        tier_key=_optional_name(reader, fields, "tier_key") or "tier",
        identity_key=_optional_name(reader, fields, "identity_key") or "user_id",
        rules=rules,
        source=reader.source(fields["domain"]),
    )


def _parse_default_tier(
    reader: _Reader, fields: dict[str, Node], tiers: tuple[Tier, ...]
) -> str | None:
    name = _optional_name(reader, fields, "default_tier")
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
    reader: _Reader, node: Node | None, has_tiers: bool
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
    reader: _Reader, node: Node, has_tiers: bool
) -> DescriptorRule | None:
    fields = reader.fields(node, "descriptor", _DESCRIPTOR_FIELDS)
    if fields is None:
        return None
    key = _required_name(reader, node, fields, "key")
    value = _descriptor_value(reader, fields)
    rate_limit_node = _optional(fields, "rate_limit")
    rate_limit = (
        None
        if rate_limit_node is None
        else _parse_rate_limit(reader, rate_limit_node, has_tiers)
    )
    share_threshold = _optional_flag(reader, fields, "share_threshold")
    if share_threshold and (value is None or "*" not in value):
        reader.report(
            fields["share_threshold"],
            "share_threshold needs a wildcard value (a '*' in 'value')",
        )
    children = _parse_descriptor_list(
        reader, _optional(fields, "descriptors"), has_tiers
    )
    if key is None:
        return None

    return DescriptorRule(
        key=key,
        value=value,
        rate_limit=rate_limit,
        children=children,
        shadow_mode=_optional_flag(reader, fields, "shadow_mode"),
        quota_mode=_optional_flag(reader, fields, "quota_mode"),
        detailed_metric=_optional_flag(reader, fields, "detailed_metric"),
        value_to_metric=_optional_flag(reader, fields, "value_to_metric"),
        share_threshold=share_threshold,
        metadata=_frozen_items(reader, _optional(fields, "metadata"), "metadata"),
        source=reader.source(node),
    )


def _descriptor_value(reader: _Reader, fields: dict[str, Node]) -> str | None:
    """The written text of ``value``; absent or empty means "any value"."""
    node = _optional(fields, "value")
    text = None if node is None else reader.text(node, "value")
    return text or None


# --- rate limits and windows --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WindowDefaults:
    """What a window inherits when it does not say: a tier's defaults."""

    algorithm: Algorithm = Algorithm.FIXED_WINDOW
    burst: int | None = None


def _parse_rate_limit(reader: _Reader, node: Node, has_tiers: bool) -> RateLimit | None:
    fields = reader.fields(node, "rate_limit", _RATE_LIMIT_FIELDS)
    if fields is None:
        return None
    name = _optional_name(reader, fields, "name")
    replaces = _parse_replaces(reader, fields.get("replaces"), name)
    unlimited = _optional_flag(reader, fields, "unlimited")
    from_tier = _optional_flag(reader, fields, "from_tier")
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


def _reject_with_unlimited(reader: _Reader, fields: dict[str, Node]) -> None:
    for key in (*_WINDOW_FIELDS, "from_tier"):
        if key in fields:
            reader.report(fields[key], f"'{key}' cannot be used with unlimited: true")


def _parse_replaces(
    reader: _Reader, node: Node | None, own_name: str | None
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


def _parse_replaced_name(reader: _Reader, item: Node) -> str | None:
    fields = reader.fields(item, "replaces entry", _REPLACES_FIELDS)
    return None if fields is None else _required_name(reader, item, fields, "name")


def _parse_window(
    reader: _Reader,
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


def _parse_unit(reader: _Reader, node: Node, fields: dict[str, Node]) -> Unit | None:
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


def _parse_algorithm(reader: _Reader, fields: dict[str, Node]) -> Algorithm | None:
    node = _optional(fields, "algorithm")
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
    reader: _Reader,
    fields: dict[str, Node],
    algorithm: Algorithm,
    defaults: _WindowDefaults,
) -> int | None:
    node = _optional(fields, "burst")
    if algorithm is not Algorithm.TOKEN_BUCKET:
        if node is not None:
            reader.report(node, "'burst' needs algorithm: token_bucket")
        return None
    if node is None:
        return defaults.burst

    return reader.integer(node, "burst", minimum=1)


# --- tiers --------------------------------------------------------------------


def _parse_tiers(reader: _Reader, node: Node | None) -> tuple[Tier, ...]:
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


def _parse_tier(reader: _Reader, node: Node) -> Tier | None:
    fields = reader.fields(node, "tier", _TIER_FIELDS)
    if fields is None:
        return None
    name = _required_name(reader, node, fields, "name")
    defaults = _tier_defaults(reader, fields)
    windows = _parse_tier_windows(reader, node, fields, defaults)
    burst_node = _optional(fields, "burst")
    has_bucket = any(w.algorithm is Algorithm.TOKEN_BUCKET for w in windows)
    if burst_node is not None and windows and not has_bucket:
        reader.report(
            burst_node, "tier 'burst' needs a window with algorithm: token_bucket"
        )
    if name is None:
        return None

    return Tier(name=name, windows=windows, source=reader.source(node))


def _tier_defaults(reader: _Reader, fields: dict[str, Node]) -> _WindowDefaults:
    algorithm = _parse_algorithm(reader, fields) or Algorithm.FIXED_WINDOW
    node = _optional(fields, "burst")
    burst = None if node is None else reader.integer(node, "burst", minimum=1)

    return _WindowDefaults(algorithm=algorithm, burst=burst)


def _parse_tier_windows(
    reader: _Reader, node: Node, fields: dict[str, Node], defaults: _WindowDefaults
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
    reader: _Reader, node: Node, defaults: _WindowDefaults
) -> Window | None:
    fields = reader.fields(node, "tier window", _WINDOW_FIELDS)
    if fields is None:
        return None

    return _parse_window(reader, node, fields, defaults, required=True)


# --- business rules -----------------------------------------------------------


def _parse_rules(
    reader: _Reader, node: Node | None, limit_names: set[str]
) -> tuple[BusinessRule, ...]:
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
    reader: _Reader, node: Node, limit_names: set[str]
) -> BusinessRule | None:
    fields = reader.fields(node, "rule", _RULE_FIELDS)
    if fields is None:
        return None
    name = _required_name(reader, node, fields, "name")
    when = _parse_condition(reader, node, fields)
    action = _parse_action(reader, node, fields)
    rollout = _parse_rollout(reader, fields)
    targets = _parse_rule_limits(reader, _optional(fields, "limits"), limit_names)
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


def _parse_condition(
    reader: _Reader, node: Node, fields: dict[str, Node]
) -> str | None:
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
    reader: _Reader, node: Node, fields: dict[str, Node]
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


def _parse_amount(reader: _Reader, node: Node, action: RuleAction) -> float | None:
    check, expected = _ACTION_CHECKS[action]
    integral = action is not RuleAction.MULTIPLY
    if integral and not (isinstance(node, ScalarNode) and node.tag == _INT_TAG):
        reader.report(node, f"'{action.value}' must be {expected}, got {_shown(node)}")
        return None
    amount = reader.number(node, action.value)
    if amount is not None and not check(amount):
        reader.report(node, f"'{action.value}' must be {expected}, got {_shown(node)}")
        return None

    return amount


def _parse_rollout(reader: _Reader, fields: dict[str, Node]) -> float:
    node = _optional(fields, "rollout_percent")
    percent = None if node is None else reader.number(node, "rollout_percent")
    if node is None or percent is None:
        return 100.0
    if not 0 <= percent <= 100:
        reader.report(node, f"'rollout_percent' must be 0..100, got {_shown(node)}")

    return percent


def _parse_rule_limits(
    reader: _Reader, node: Node | None, limit_names: set[str]
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


# --- API keys files -----------------------------------------------------------


def _parse_keys_file(reader: _Reader, root: Node) -> list[ApiKey]:
    fields = reader.fields(root, "API keys file", _KEYS_FILE_FIELDS)
    node = None if fields is None else _optional(fields, "api_keys")
    items = None if node is None else reader.sequence(node, "api_keys")
    keys = (_parse_api_key(reader, item) for item in items or ())

    return [key for key in keys if key is not None]


def _parse_api_key(reader: _Reader, node: Node) -> ApiKey | None:
    fields = reader.fields(node, "api key", _KEY_FIELDS)
    if fields is None:
        return None
    digest = _parse_digest(reader, node, fields)
    identity = _required_name(reader, node, fields, "identity")
    tier = _optional_name(reader, fields, "tier")
    attributes = _frozen_items(reader, _optional(fields, "attributes"), "attributes")
    disabled = _optional_flag(reader, fields, "disabled")
    if digest is None or identity is None:
        return None

    return ApiKey(
        sha256=digest,
        identity=identity,
        tier=tier,
        attributes=attributes,
        disabled=disabled,
        source=reader.source(fields["sha256"]),
    )


def _parse_digest(reader: _Reader, node: Node, fields: dict[str, Node]) -> str | None:
    digest_node = reader.required(node, fields, "sha256")
    text = None if digest_node is None else reader.text(digest_node, "sha256")
    if digest_node is None or text is None:
        return None
    if not _SHA256_HEX.fullmatch(text.strip()):
        reader.report(
            digest_node, "'sha256' must be a SHA-256 hex digest (64 hex characters)"
        )
        return None

    return text.strip().lower()


# --- checks across files ------------------------------------------------------


def _check_unique_domains(domains: list[Domain], problems: list[Problem]) -> None:
    _report_duplicates(
        ((domain.name, domain.source) for domain in domains),
        lambda name: f"domain '{name}'",
        problems,
    )


def _check_unique_keys(api_keys: list[ApiKey], problems: list[Problem]) -> None:
    _report_duplicates(
        ((key.sha256, key.source) for key in api_keys),
        lambda digest: f"api key sha256 {digest[:8]}...",
        problems,
    )


def _report_duplicates(
    items: Iterable[tuple[str, Source | None]],
    label: Callable[[str], str],
    problems: list[Problem],
) -> None:
    """Report every repeated name at both places it is written."""
    first: dict[str, Source] = {}
    for name, source in items:
        if source is None:
            continue
        earlier = first.setdefault(name, source)
        if earlier is source:
            continue
        what = label(name)
        problems.append(
            Problem(source.file, source.line, f"{what} is already defined at {earlier}")
        )
        problems.append(
            Problem(earlier.file, earlier.line, f"{what} is defined again at {source}")
        )
