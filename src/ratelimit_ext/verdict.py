"""What a decision says: per-descriptor answers and the overall code."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ratelimit_ext.policy.model import Window

UNLIMITED_REMAINING = 4_294_967_295


class Code(enum.Enum):
    OK = 1
    OVER_LIMIT = 2


@dataclass(frozen=True, slots=True)
class DescriptorVerdict:
    """The answer for one descriptor.

    ``window`` is the limit reported back (``current_limit``): the window that
    refused the request, or else the one closest to its limit. ``None`` means
    no limit applied (then ``remaining`` is 0, or ``UNLIMITED_REMAINING`` for an
    ``unlimited`` rule). ``over_limit`` is true even when a shadow rule let the
    request pass (``code`` OK).
    """

    code: Code
    window: Window | None = None
    name: str | None = None
    remaining: int = 0
    reset_seconds: float = 0.0
    over_limit: bool = False
    quota_mode: bool = False


NO_LIMIT = DescriptorVerdict(Code.OK)
UNLIMITED = DescriptorVerdict(Code.OK, remaining=UNLIMITED_REMAINING)


@dataclass(frozen=True, slots=True)
class Verdict:
    code: Code
    descriptors: tuple[DescriptorVerdict, ...]

    def tightest(self) -> DescriptorVerdict | None:
        """The limited descriptor closest to (or furthest over) its limit."""
        limited = [d for d in self.descriptors if d.window is not None]
        if not limited:
            return None
        return min(limited, key=lambda d: (d.remaining, -d.reset_seconds))
