"""Who is calling: API key extraction and lookup.

Keys are never stored: the policy holds SHA-256 digests and a presented key
is hashed and looked up. The key itself is never logged; where a log must
tell keys apart it uses the first eight hex digits of the digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ratelimit_ext.policy.compiled import CompiledPolicy
from ratelimit_ext.policy.keys import hash_key
from ratelimit_ext.policy.model import ApiKey
from ratelimit_ext.policy.rules import Caller

BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Header names of the authorizer; each is a server setting."""

    api_key_header: str = "x-api-key"
    identity_header: str = "x-user-id"
    tier_header: str = "x-user-tier"
    realm: str = "ratelimit-ext"

    def __post_init__(self) -> None:
        for name in ("api_key_header", "identity_header", "tier_header"):
            value = getattr(self, name)
            if not value or value != value.strip():
                raise ValueError(f"{name} must be a non-empty header name")
            object.__setattr__(self, name, value.lower())


def presented_key(headers: Mapping[str, str], settings: AuthSettings) -> str | None:
    """The API key from the configured header, else from a Bearer token."""
    key = headers.get(settings.api_key_header, "").strip()
    if key:
        return key
    authorization = headers.get("authorization", "")
    if authorization[: len(BEARER)].lower() == BEARER:
        return authorization[len(BEARER) :].strip() or None
    return None


def lookup(policy: CompiledPolicy, key: str) -> ApiKey | None:
    return policy.keys_by_digest.get(hash_key(key))


def caller_of(record: ApiKey) -> Caller:
    return Caller(record.identity, record.tier, dict(record.attributes), record.sha256)
