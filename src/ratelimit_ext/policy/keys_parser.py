"""API keys files (top-level ``api_keys:``): one ``ApiKey`` per entry.

A key is identified by the SHA-256 hex digest of its secret, never by the
secret itself.
"""

from __future__ import annotations

import re

from yaml import Node

from ratelimit_ext.policy.model import ApiKey
from ratelimit_ext.policy.yaml_nodes import (
    Reader,
    frozen_items,
    optional,
    optional_flag,
    optional_name,
    required_name,
)

_KEYS_FILE_FIELDS = ("api_keys",)
_KEY_FIELDS = ("sha256", "identity", "tier", "attributes", "disabled")

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def parse_keys_file(reader: Reader, root: Node) -> list[ApiKey]:
    """Every valid entry of an API keys file; invalid ones are reported."""
    fields = reader.fields(root, "API keys file", _KEYS_FILE_FIELDS)
    node = None if fields is None else optional(fields, "api_keys")
    items = None if node is None else reader.sequence(node, "api_keys")
    keys = (_parse_api_key(reader, item) for item in items or ())

    return [key for key in keys if key is not None]


def _parse_api_key(reader: Reader, node: Node) -> ApiKey | None:
    fields = reader.fields(node, "api key", _KEY_FIELDS)
    if fields is None:
        return None
    digest = _parse_digest(reader, node, fields)
    identity = required_name(reader, node, fields, "identity")
    tier = optional_name(reader, fields, "tier")
    attributes = frozen_items(reader, optional(fields, "attributes"), "attributes")
    disabled = optional_flag(reader, fields, "disabled")
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


def _parse_digest(reader: Reader, node: Node, fields: dict[str, Node]) -> str | None:
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
