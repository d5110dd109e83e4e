"""API key digests: only the SHA-256 of a key is ever stored or compared."""

from __future__ import annotations

import hashlib


def hash_key(key: str) -> str:
    """Return the lowercase SHA-256 hex digest of the key's UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
