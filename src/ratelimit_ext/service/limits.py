"""Bounds on what one request may ask, checked before any work is done."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class InvalidRequest(ValueError):
    """A request we refuse to decide; the message goes back to the caller."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_descriptors: int = 64
    max_entries: int = 32
    max_key_length: int = 256
    max_value_length: int = 8192
    max_hits: int = 1_000_000_000
    max_domain_length: int = 256

    def check_domain(self, domain: str) -> None:
        if len(domain) > self.max_domain_length:
            raise InvalidRequest(
                f"domain is longer than {self.max_domain_length} characters"
            )

    def check_entries(self, index: int, entries: Sequence[tuple[str, str]]) -> None:
        where = f"descriptors[{index}]"
        if not entries:
            raise InvalidRequest(f"{where} has no entries")
        if len(entries) > self.max_entries:
            raise InvalidRequest(f"{where} has more than {self.max_entries} entries")
        for key, value in entries:
            if not key:
                raise InvalidRequest(f"{where} has an entry with an empty key")
            if len(key) > self.max_key_length:
                raise InvalidRequest(
                    f"{where} has a key longer than {self.max_key_length} characters"
                )
            if len(value) > self.max_value_length:
                raise InvalidRequest(
                    f"{where} has a value longer than {self.max_value_length}"
                    " characters"
                )

    def check_hits(self, hits: int, field: str) -> int:
        if hits > self.max_hits:
            raise InvalidRequest(f"{field} must be at most {self.max_hits}")
        return hits
