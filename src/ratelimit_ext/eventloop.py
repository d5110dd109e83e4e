"""The event loop a server process runs on: uvloop by default, or asyncio's own.

uvloop (libuv under the asyncio API) took 14-33 % off the server's CPU per
``ShouldRateLimit`` in ``perf/bench_rls.py``, most on the Redis paths, where
the loop's socket and callback work is a large share of a decision. The
standard loop stays one flag away (``--event-loop asyncio``), for platforms
without uvloop and for telling a loop problem from ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOPS = ("uvloop", "asyncio")


def run(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """Run ``main`` to completion on a new loop of the kind named."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    if event_loop == "asyncio":
        return asyncio.run(main)
    choices = ", ".join(EVENT_LOOPS)
    raise ValueError(f"unknown event loop {event_loop!r}; expected one of {choices}")
