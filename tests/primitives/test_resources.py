"""Token bucket and pool arithmetic, with plain numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow_plus.primitives import ConcurrencyPool, ConfigError, Rate, TokenBucket


def test_rate_defaults_and_validation() -> None:
    rate = Rate(600, per=60)
    assert rate.rate == 10 and rate.capacity == 600
    assert Rate(10, burst=3).capacity == 3
    for bad in (0, -1, math.inf, "10", True):
        with pytest.raises(ConfigError, match=r"Rate\.limit"):
            Rate(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Rate\.burst"):
        Rate(10, burst=0)
    with pytest.raises(ConfigError, match="dimension"):
        Rate(10, dimension="")


def test_bucket_starts_full_or_empty_and_refills() -> None:
    full = TokenBucket("k", Rate(10, per=1, burst=5), now=0.0)
    empty = TokenBucket("k", Rate(10, per=1, burst=5, start_full=False), now=0.0)
    assert full.available(5, 0.0) and not full.available(5.5, 0.0)
    assert not empty.available(1, 0.0)
    assert empty.ready_at(1, 0.0) == pytest.approx(0.1)
    assert empty.available(1, 0.1)
    assert empty.level(100.0) == 5  # never above burst


def test_bucket_debt_pause_refund() -> None:
    bucket = TokenBucket("k", Rate(10, burst=10), now=0.0)
    bucket.take(10, 0.0)
    bucket.charge(5, 0.0)  # actual cost was 5 more than estimated
    assert bucket.level(0.0) == -5
    assert bucket.ready_at(1, 0.0) == pytest.approx(0.6)
    bucket.charge(-20, 0.0)  # refund is capped at burst
    assert bucket.level(0.0) == 10
    bucket.pause(3.0)
    assert not bucket.available(1, 2.9) and bucket.available(1, 3.0)
    assert bucket.ready_at(1, 0.0) == 3.0
    bucket.pause(1.0)  # an earlier pause never shortens a later one
    assert bucket.paused_until == 3.0


def test_pool_capacity_validation_and_estimate() -> None:
    pool = ConcurrencyPool("p", 2)
    with pytest.raises(TypeError):
        pool.capacity = 1.5  # type: ignore[assignment]
    with pytest.raises(ValueError, match=">= 1"):
        pool.capacity = 0
    pool.take(2, 0.0)
    pool.release(1, 1.0, held_for=1.0)
    pool.take(1, 1.0)
    pool.queued, pool.queued_amount = 3, 3.0
    assert pool.estimate_wait(1, 1.0) == pytest.approx(2 * pool.service_time)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 50),
    burst=st.integers(1, 50),
    start_full=st.booleans(),
    steps=st.lists(
        st.tuples(st.floats(0, 0.5), st.integers(1, 10)), min_size=1, max_size=80
    ),
)
def test_bucket_never_admits_more_than_burst_plus_rate_t(
    limit: int, burst: int, start_full: bool, steps: list[tuple[float, int]]
) -> None:
    """Greedy admissions at random times: every window [a, b] admits <= burst + rate*(b-a)."""
    bucket = TokenBucket("k", Rate(limit, per=1, burst=burst, start_full=start_full), now=0.0)
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for gap, amount in steps:
        now += gap
        if amount <= burst and bucket.available(amount, now):
            bucket.take(amount, now)
            admitted.append((now, amount))
    for i, (start, _) in enumerate(admitted):
        total = 0
        for end, amount in admitted[i:]:
            total += amount
            assert total <= burst + limit * (end - start) + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    now=st.sampled_from([0.0, 1.0, 1e5, 1e7, 1e9]),
    rate=st.sampled_from([1.0, 1000.0, 1e6]),
    deficit=st.floats(1e-9, 1.0, exclude_min=True),
)
def test_a_blocked_bucket_is_ready_strictly_later_and_then_available(
    now: float, rate: float, deficit: float
) -> None:
    """A deficit too small to move a large clock value (3e-9 tokens at 1000/s at 1e5 s) gave
    ``ready_at == now``: the limiter's timer re-armed for the same instant forever on a
    manual or virtual clock."""
    bucket = TokenBucket("k", Rate(rate, per=1, burst=10), now=now)
    bucket.tokens = 1.0 - deficit
    if bucket.available(1.0, now):
        return  # within the float slack: no wait at all
    ready = bucket.ready_at(1.0, now)
    assert ready > now
    assert bucket.available(1.0, ready)


@settings(max_examples=300, deadline=None)
@given(
    now=st.sampled_from([0.0, 0.7, 1.0, 1e5, 1e7]),
    rate=st.sampled_from([1.0, 5.0, 1000.0, 1e6]),
    deficit=st.floats(1e-9, 1.0, exclude_min=True),
)
def test_ready_at_is_when_the_bucket_first_admits(
    now: float, rate: float, deficit: float
) -> None:
    """A timer armed at ``ready_at`` fires when ``available`` first admits, to within
    rounding (a few ulps of tokens): any earlier the bucket still refuses. (It was armed
    for the exact refill while ``available`` admits 1e-9 tokens short of it: at 0.7 s, 5/s,
    the chain's property test caught a waiter left queued at 0.8999999999999999 with its
    timer at 0.9.)"""

    def fresh() -> TokenBucket:
        bucket = TokenBucket("k", Rate(rate, per=1, burst=10), now=now)
        bucket.tokens = 1.0 - deficit
        return bucket

    if fresh().available(1.0, now):
        return  # within the float slack: no wait at all
    ready = fresh().ready_at(1.0, now)
    assert fresh().available(1.0, ready)
    rounding = 8.0 * math.ulp(10.0) / rate + 2.0 * math.ulp(ready)
    if ready - rounding > now:
        assert not fresh().available(1.0, ready - rounding)
