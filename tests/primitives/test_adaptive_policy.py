"""The adaptive policy with plain numbers: each rule, the bounds, and random sample streams."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow_plus.primitives import ConfigError
from stageflow_plus.primitives.adaptive import (
    REASONS,
    AdaptiveLimit,
    AdaptiveSettings,
    AdaptiveStatistics,
)

S = 0.1  # no-load round trip of the modelled provider, seconds
SETTINGS = AdaptiveSettings(window=0.5, window_rtts=3.0, min_samples=10, max_limit=500,
                            probe_interval=0.0)


@dataclass
class Provider:
    """A provider in plain numbers: ``capacity`` calls served at once, ``service`` seconds
    each; past capacity the round trip grows in proportion (a queue), and past
    ``drop_above`` times capacity every fourth call is refused (a drop)."""

    capacity: float
    service: float = S
    demand: float = math.inf  # calls the callers want in flight
    drop_above: float | None = None

    def feed(self, policy: AdaptiveLimit, start: float, seconds: float,
             per_second: int = 400) -> tuple[float, list[int]]:
        """Completions every ``1/per_second`` s at the policy's current limit."""
        limits: list[int] = []
        t = start
        dt = 1.0 / per_second
        i = 0
        while t < start + seconds:
            t += dt
            i += 1
            inflight = min(policy.limit, self.demand)
            rtt = self.service * max(1.0, inflight / self.capacity)
            dropped = (self.drop_above is not None and inflight > self.drop_above * self.capacity
                       and i % 4 == 0)
            policy.sample(t, t - rtt, int(inflight), dropped)
            limits.append(policy.limit)
        return t, limits


def windows(n: float) -> float:
    return n * max(SETTINGS.window, SETTINGS.window_rtts * S)


def test_a_drop_lowers_the_limit_at_once() -> None:
    policy = AdaptiveLimit(SETTINGS, 20, 0.0)
    t, _ = Provider(capacity=100, demand=15).feed(policy, 0.0, windows(3))
    assert policy.limit == 20
    assert policy.sample(t + 0.01, t, 15, True) == 18  # × 0.9, without waiting for the window
    assert policy.reason == "drop"


def test_drops_of_calls_admitted_before_the_cut_do_not_cut_again() -> None:
    policy = AdaptiveLimit(SETTINGS, 20, 0.0)
    policy.sample(1.0, 0.9, 20, True)
    assert policy.limit == 18
    for i in range(10):  # calls admitted before the cut at 1.0, refused afterwards
        policy.sample(1.01 + i * 0.001, 0.95, 20, True)
    assert policy.limit == 18
    policy.sample(1.2, 1.1, 18, True)  # admitted after the cut: a new signal
    assert policy.limit == 16


def test_an_idle_limit_does_not_grow() -> None:
    policy = AdaptiveLimit(SETTINGS, 20, 0.0)
    _, limits = Provider(capacity=100, demand=8).feed(policy, 0.0, windows(20))
    assert set(limits) == {20}
    assert policy.statistics("k").windows >= 15


def test_flat_round_trips_with_rising_throughput_grow_faster_and_faster() -> None:
    policy = AdaptiveLimit(SETTINGS, 10, 0.0)
    _, limits = Provider(capacity=1000).feed(policy, 0.0, windows(6))
    steps = sorted(set(limits))
    assert steps[:4] == [10, 11, 13, 16]  # +5 %, +15 %, +25 % (at least one call each)
    assert policy.reason == "grow"


def test_rising_round_trips_lower_the_limit_to_the_capacity() -> None:
    policy = AdaptiveLimit(SETTINGS, 60, 0.0)  # set too high by the operator
    provider = Provider(capacity=30, demand=20)  # light load first: no queue, rtt = S
    t, _ = provider.feed(policy, 0.0, windows(3))
    assert policy.statistics("k").rtt_noload == pytest.approx(S)
    assert policy.limit == 60, "unused: neither grown nor cut"
    provider.demand = math.inf  # now 60 in flight against a capacity of 30: rtt doubles
    t, limits = provider.feed(policy, t, windows(3))
    assert policy.reason == "rtt"
    assert 30 <= policy.limit <= 33, sorted(set(limits))
    assert policy.statistics("k").capacity == pytest.approx(30, rel=0.1)


def test_converges_near_capacity_and_holds_with_small_swings() -> None:
    policy = AdaptiveLimit(SETTINGS, 8, 0.0)
    provider = Provider(capacity=40)
    t, _ = provider.feed(policy, 0.0, windows(15))
    _, limits = provider.feed(policy, t, windows(20))
    assert all(abs(x - 40) / 40 <= 0.15 for x in limits), sorted(set(limits))
    assert abs(limits[-1] - 40) / 40 <= 0.10


def test_capacity_halving_then_doubling_is_tracked_within_three_windows() -> None:
    policy = AdaptiveLimit(SETTINGS, 8, 0.0)
    provider = Provider(capacity=40, drop_above=2.0)
    t, _ = provider.feed(policy, 0.0, windows(15))
    provider.capacity = 20
    t, limits = provider.feed(policy, t, windows(3))
    assert abs(limits[-1] - 20) / 20 <= 0.10, sorted(set(limits))
    t, _ = provider.feed(policy, t, windows(5))
    provider.capacity = 40
    t, limits = provider.feed(policy, t, windows(3))
    assert abs(limits[-1] - 40) / 40 <= 0.10, sorted(set(limits))  # back where it held
    _, limits = provider.feed(policy, t, windows(10))
    assert all(abs(x - 40) / 40 <= 0.15 for x in limits)


def test_one_slow_window_without_growth_is_confirmed_before_a_cut() -> None:
    policy = AdaptiveLimit(SETTINGS, 8, 0.0)
    provider = Provider(capacity=40)
    t, _ = provider.feed(policy, 0.0, windows(15))
    held = policy.limit
    provider.service = 2 * S  # a stall: one window twice as slow, then normal again
    t, _ = provider.feed(policy, t, windows(1))
    provider.service = S
    t, limits = provider.feed(policy, t, windows(1))
    assert min(limits) >= 0.9 * held, "a single stalled window must not cut the limit"


def test_the_probe_relearns_the_no_load_latency_after_the_provider_slows_down() -> None:
    policy = AdaptiveLimit(SETTINGS, 8, 0.0)
    provider = Provider(capacity=40)
    t, _ = provider.feed(policy, 0.0, windows(15))
    provider.service = 2 * S  # a slower model: same capacity, every call takes twice as long
    reasons: list[str] = []
    limits: list[int] = []
    end = t + windows(12)
    while t < end:
        t, chunk = provider.feed(policy, t, 0.05)
        limits += chunk
        reasons.append(policy.reason)
    assert "probe" in reasons and "probe_done" in reasons
    assert policy.statistics("k").rtt_noload == pytest.approx(2 * S, rel=0.05)
    assert abs(limits[-1] - 40) / 40 <= 0.15, sorted(set(limits))
    # without the probe every window would cut again (rtt twice the stale baseline)
    assert reasons.count("rtt") <= 3 * 20  # (20 slices per window)


def test_periodic_probe_pins_the_limit_low_for_one_window_then_restores_it() -> None:
    probing = AdaptiveSettings(window=0.5, min_samples=10, probe_interval=5.0)
    policy = AdaptiveLimit(probing, 8, 0.0)
    provider = Provider(capacity=40)
    t = 0.0
    seen: list[tuple[int, str]] = []
    while t < 9.0:
        t, _ = provider.feed(policy, t, 0.05)
        seen.append((policy.limit, policy.reason))
    start = next(i for i, (_, reason) in enumerate(seen) if reason == "probe")
    before = seen[start - 1][0]
    assert seen[start][0] <= before // 2 + 1
    after = next(limit for limit, reason in seen[start:] if reason != "probe")
    assert after == before  # restored
    assert sum(1 for _, reason in seen if reason == "probe") <= 2 * 20  # about one window


def test_bounds_hold_under_endless_drops_and_endless_room() -> None:
    bounded = AdaptiveSettings(min_limit=3, max_limit=25, window=0.5, probe_interval=0.0)
    policy = AdaptiveLimit(bounded, 10, 0.0)
    t = 0.0
    for _ in range(200):
        t += 0.01
        policy.sample(t, t - 0.001, policy.limit, True)
        assert 3 <= policy.limit <= 25
    assert policy.limit == 3
    _, limits = Provider(capacity=10_000).feed(policy, t, windows(30))
    assert max(limits) == 25 and min(limits) >= 3


def test_the_starting_limit_is_clamped_into_the_bounds() -> None:
    bounded = AdaptiveSettings(min_limit=4, max_limit=9)
    assert AdaptiveLimit(bounded, 1, 0.0).limit == 4
    assert AdaptiveLimit(bounded, 50, 0.0).limit == 9


def test_a_window_with_too_few_samples_decides_nothing() -> None:
    policy = AdaptiveLimit(SETTINGS, 10, 0.0)
    for i in range(9):
        policy.sample(1.0 + i, 0.95 + i, 10, False)  # far apart, but fewer than min_samples
    assert policy.statistics("k").windows == 0 and policy.limit == 10


def test_statistics_are_a_frozen_snapshot() -> None:
    policy = AdaptiveLimit(SETTINGS, 10, 0.0)
    Provider(capacity=1000).feed(policy, 0.0, windows(2))
    stats = policy.statistics("tool:search")
    assert isinstance(stats, AdaptiveStatistics)
    assert stats.key == "tool:search" and stats.limit == policy.limit
    assert stats.last_reason in REASONS and 0 < stats.gradient <= 1.0
    with pytest.raises(AttributeError):
        stats.limit = 3  # type: ignore[misc]
    assert "AdaptiveLimit limit=" in repr(policy)


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_limit", 0), ("min_limit", 1.5), ("max_limit", True), ("window", 0),
     ("window", math.inf), ("min_samples", 0), ("max_window", 0.1), ("percentile", 1.0),
     ("tolerance", -0.1), ("headroom", 2), ("cut_above", 0.01), ("smoothing", 0),
     ("drop_backoff", 1.0), ("max_decrease", 0), ("growth", ()), ("growth", (0.1, -1)),
     ("growth", [0.1]), ("probe_interval", -1), ("probe_fraction", 1), ("window_rtts", "3")],
)
def test_invalid_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        AdaptiveSettings(**{field: value})  # type: ignore[arg-type]


def test_max_limit_below_min_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_limit"):
        AdaptiveSettings(min_limit=5, max_limit=4)
    assert "probe_fraction" in AdaptiveSettings.names()


samples = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0),            # time step
        st.floats(min_value=-0.1, max_value=30.0),          # round trip (negative: clock skew)
        st.integers(min_value=0, max_value=10_000),         # in flight
        st.booleans(),                                      # dropped
    ),
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(samples, st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=200))
def test_any_sample_stream_keeps_the_limit_in_bounds_finite_and_an_int(
    stream: list[tuple[float, float, int, bool]], low: int, span: int
) -> None:
    bounded = AdaptiveSettings(min_limit=low, max_limit=low + span, window=0.2, min_samples=3,
                               probe_interval=7.0)
    policy = AdaptiveLimit(bounded, low + span // 2, 0.0)
    t = 0.0
    for dt, rtt, inflight, dropped in stream:
        t += dt
        limit = policy.sample(t, t - rtt, inflight, dropped)
        assert isinstance(limit, int) and low <= limit <= low + span
    stats = policy.statistics("k")
    for value in (stats.rtt_noload, stats.rtt, stats.gradient, stats.capacity,
                  stats.in_flight, stats.throughput):
        assert math.isfinite(value) and not math.isnan(value)
