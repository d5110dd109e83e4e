"""The counting algorithms as pure functions, with time given explicitly."""

from __future__ import annotations

import pytest

from harness.clock import EPOCH_DAY
from ratelimit_ext.policy.model import Algorithm, Unit, Window
from ratelimit_ext.store.algorithms import (
    BucketState,
    Evaluation,
    FixedState,
    SlidingState,
    State,
    evaluate,
    window_start,
)
from ratelimit_ext.store.base import WindowResult

T0 = EPOCH_DAY


def fixed(limit: int, unit: Unit = Unit.MINUTE) -> Window:
    return Window(limit, unit, Algorithm.FIXED_WINDOW)


def sliding(limit: int, unit: Unit = Unit.MINUTE) -> Window:
    return Window(limit, unit, Algorithm.SLIDING_WINDOW)


def bucket(limit: int, unit: Unit = Unit.SECOND, burst: int | None = None) -> Window:
    return Window(limit, unit, Algorithm.TOKEN_BUCKET, burst)


class Counter:
    """Applies evaluations the way a store does: commit only admitted hits."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.state: State | None = None

    def hit(self, now: float, hits: int = 1) -> WindowResult:
        evaluation = evaluate(self.window, self.state, hits, now)
        if evaluation.room and hits > 0:
            self.state = evaluation.state
            return evaluation.committed
        return evaluation.kept

    def allowed(self, now: float, times: int) -> int:
        return sum(self.hit(now).allowed for _ in range(times))


# --- fixed window ------------------------------------------------------------


def test_window_start_is_aligned_to_the_epoch() -> None:
    assert window_start(T0 + 61.5, 60) == T0 + 60
    assert window_start(T0 + 59.999, 60) == T0
    assert window_start(T0 + 3 * 86400 + 5, Unit.WEEK.seconds) % (7 * 86400) == 0


def test_fixed_window_counts_down_remaining_then_refuses() -> None:
    counter = Counter(fixed(3))

    results = [counter.hit(T0 + 10) for _ in range(4)]

    assert results == [
        WindowResult(True, 2, 50.0),
        WindowResult(True, 1, 50.0),
        WindowResult(True, 0, 50.0),
        WindowResult(False, 0, 50.0),
    ]


def test_fixed_window_resets_exactly_at_the_boundary() -> None:
    counter = Counter(fixed(2))
    assert counter.allowed(T0 + 59.5, 3) == 2

    before = counter.hit(T0 + 59.75)
    after = counter.hit(T0 + 60.0)

    assert before.allowed is False
    assert before.reset_seconds == 0.25
    assert after == WindowResult(True, 1, 60.0)


def test_fixed_window_ignores_a_state_from_an_older_window() -> None:
    old = FixedState(start=int(T0), count=99, expires_at=T0 + 60)

    evaluation = evaluate(fixed(5), old, 1, T0 + 120)

    assert evaluation.room
    assert evaluation.committed == WindowResult(True, 4, 60.0)
    assert evaluation.state == FixedState(int(T0 + 120), 1, T0 + 180)


def test_fixed_window_refuses_more_hits_than_remain_and_keeps_the_count() -> None:
    counter = Counter(fixed(5))
    counter.hit(T0, hits=3)

    refused = counter.hit(T0, hits=3)

    assert refused == WindowResult(False, 2, 60.0)
    assert counter.hit(T0, hits=2) == WindowResult(True, 0, 60.0)


def test_fixed_window_check_only_is_admitted_iff_one_more_hit_would_be() -> None:
    counter = Counter(fixed(2))
    counter.hit(T0)

    with_room = counter.hit(T0, hits=0)
    counter.hit(T0)
    full = counter.hit(T0, hits=0)

    assert with_room == WindowResult(True, 1, 60.0)
    assert full == WindowResult(False, 0, 60.0)
    assert isinstance(counter.state, FixedState) and counter.state.count == 2


def test_fixed_window_hits_above_the_limit_are_refused_at_once() -> None:
    evaluation = evaluate(fixed(3), None, 4, T0)

    assert not evaluation.room
    assert evaluation.kept == WindowResult(False, 3, 60.0)


def test_fixed_window_state_expires_at_the_window_end() -> None:
    evaluation = evaluate(fixed(3, Unit.HOUR), None, 1, T0 + 100)

    assert evaluation.state.expires_at == T0 + 3600


# --- sliding window ----------------------------------------------------------


def test_sliding_window_weights_the_previous_window_by_time_left() -> None:
    state = SlidingState(start=int(T0), current=10, previous=0, expires_at=T0 + 120)
    now = T0 + 60 + 15  # a quarter into the next window: weight 0.75

    two = evaluate(sliding(10), state, 2, now)
    three = evaluate(sliding(10), state, 3, now)

    assert two.room and not three.room
    assert two.kept == WindowResult(True, 2, 45.0)  # floor(10 - 7.5)
    assert two.committed == WindowResult(True, 0, 45.0)  # floor(10 - 9.5)
    assert two.state == SlidingState(int(T0 + 60), 2, 10, T0 + 180)


def test_sliding_window_adds_the_current_count_in_full() -> None:
    state = SlidingState(int(T0 + 60), current=3, previous=8, expires_at=T0 + 180)

    evaluation = evaluate(sliding(10), state, 1, T0 + 60 + 30)

    # 8 * 0.5 + 3 = 7 -> one more is 8, remaining floor(10 - 8) = 2
    assert evaluation.committed == WindowResult(True, 2, 30.0)
    assert evaluation.state == SlidingState(int(T0 + 60), 4, 8, T0 + 180)


def test_sliding_window_forgets_windows_older_than_the_previous_one() -> None:
    state = SlidingState(int(T0), current=10, previous=10, expires_at=T0 + 120)

    evaluation = evaluate(sliding(10), state, 10, T0 + 120)

    assert evaluation.room
    assert evaluation.committed == WindowResult(True, 0, 60.0)


def test_sliding_window_smooths_the_boundary_burst_a_fixed_window_allows() -> None:
    fixed_counter, sliding_counter = Counter(fixed(10)), Counter(sliding(10))
    for counter in (fixed_counter, sliding_counter):
        counter.allowed(T0 + 59, 10)

    assert fixed_counter.allowed(T0 + 61, 10) == 10
    assert sliding_counter.allowed(T0 + 61, 10) == 0  # 10 * 59/60 + 0 = 9.83
    assert sliding_counter.allowed(T0 + 90, 10) == 5  # 10 * 0.5


def test_sliding_window_check_only_and_limit_zero() -> None:
    state = SlidingState(int(T0), current=9, previous=0, expires_at=T0 + 120)

    assert evaluate(sliding(10), state, 0, T0 + 1).kept == WindowResult(True, 1, 59.0)
    assert not evaluate(sliding(9), state, 0, T0 + 1).room
    assert not evaluate(sliding(0), None, 0, T0).room
    assert not evaluate(sliding(0), None, 1, T0).room


# --- token bucket ------------------------------------------------------------


def test_token_bucket_starts_full_and_allows_its_burst() -> None:
    counter = Counter(bucket(1, burst=5))

    results = [counter.hit(T0) for _ in range(6)]

    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert results[0] == WindowResult(True, 4, 1.0)  # one token short of full
    assert results[4] == WindowResult(True, 0, 5.0)
    assert results[5] == WindowResult(False, 0, 1.0)  # one token in one second


def test_token_bucket_capacity_defaults_to_the_limit() -> None:
    counter = Counter(bucket(4, Unit.SECOND))

    assert counter.allowed(T0, 10) == 4


def test_token_bucket_refills_at_limit_per_unit() -> None:
    counter = Counter(bucket(4, Unit.SECOND))  # a token every 0.25 s
    counter.allowed(T0, 4)

    refused = counter.hit(T0 + 0.5, hits=3)
    admitted = counter.hit(T0 + 0.5, hits=2)

    assert refused == WindowResult(False, 2, 0.25)
    assert admitted == WindowResult(True, 0, 1.0)


def test_token_bucket_refill_is_capped_at_capacity() -> None:
    counter = Counter(bucket(1, Unit.SECOND, burst=3))
    counter.allowed(T0, 3)

    assert counter.allowed(T0 + 1000, 5) == 3


def test_token_bucket_check_only_does_not_take_a_token() -> None:
    counter = Counter(bucket(2, Unit.SECOND))
    counter.hit(T0)

    check = counter.hit(T0, hits=0)
    counter.hit(T0)
    empty = counter.hit(T0, hits=0)

    assert check == WindowResult(True, 1, 0.5)  # full again in half a second
    assert empty == WindowResult(False, 0, 0.5)  # one token in half a second


def test_token_bucket_hits_above_capacity_are_refused() -> None:
    evaluation = evaluate(bucket(5, Unit.MINUTE), None, 6, T0)

    assert not evaluation.room
    assert evaluation.kept == WindowResult(False, 5, 12.0)  # 1 token at 1/12 s


def test_token_bucket_limit_zero_refuses_everything() -> None:
    for hits in (0, 1):
        evaluation = evaluate(bucket(0, Unit.MINUTE, burst=5), None, hits, T0)
        assert not evaluation.room
        assert evaluation.kept == WindowResult(False, 0, 60.0)


def test_token_bucket_state_expires_when_the_bucket_is_full_again() -> None:
    evaluation = evaluate(bucket(2, Unit.SECOND, burst=4), None, 3, T0)

    assert evaluation.state == BucketState(1.0, T0, expires_at=T0 + 1.5)


def test_token_bucket_ignores_a_clock_that_went_back() -> None:
    state = BucketState(tokens=1.0, stamp=T0 + 10, expires_at=T0 + 11)

    evaluation = evaluate(bucket(1, Unit.SECOND, burst=2), state, 1, T0)

    assert evaluation.committed.remaining == 0


# --- dispatch ----------------------------------------------------------------


@pytest.mark.parametrize(
    "window",
    [fixed(1), sliding(1), bucket(1)],
    ids=["fixed_window", "sliding_window", "token_bucket"],
)
def test_limit_zero_refuses_every_algorithm(window: Window) -> None:
    zero = Window(0, window.unit, window.algorithm)

    evaluations: list[Evaluation] = [evaluate(zero, None, h, T0) for h in (0, 1)]

    assert [e.room for e in evaluations] == [False, False]
    assert [e.kept.remaining for e in evaluations] == [0, 0]


def test_a_state_of_another_algorithm_is_treated_as_absent() -> None:
    foreign = BucketState(tokens=0.0, stamp=T0, expires_at=T0 + 60)

    evaluation = evaluate(fixed(1), foreign, 1, T0)

    assert evaluation.room
