"""A clock that only moves when a test moves it."""

from __future__ import annotations

# A day boundary (and so a second, minute and hour boundary) of the Unix epoch.
EPOCH_DAY = 20_000 * 86_400.0


class FakeClock:
    """Call it for the time; ``advance`` or set ``now`` to move it."""

    def __init__(self, now: float = EPOCH_DAY) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"

    def advance(self, seconds: float) -> None:
        self.now += seconds
