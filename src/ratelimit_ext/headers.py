"""HTTP headers that describe a verdict to the client.

``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (IETF
draft "RateLimit header fields for HTTP", delta-seconds form) describe the
limited descriptor closest to its limit; ``Retry-After`` is added when the
request was refused.
"""

from __future__ import annotations

import math

from ratelimit_ext.verdict import Code, DescriptorVerdict, Verdict


def _reset(descriptor: DescriptorVerdict) -> str:
    return str(max(1, math.ceil(descriptor.reset_seconds)))


def ratelimit_headers(verdict: Verdict) -> list[tuple[str, str]]:
    tightest = verdict.tightest()
    if tightest is None or tightest.window is None:
        return []
    window = tightest.window
    headers = [
        ("ratelimit-limit", f"{window.limit}, {window.limit};w={window.unit.seconds}"),
        ("ratelimit-remaining", str(tightest.remaining)),
        ("ratelimit-reset", _reset(tightest)),
    ]
    if verdict.code is Code.OVER_LIMIT:
        headers.append(("retry-after", _reset(tightest)))
    return headers
