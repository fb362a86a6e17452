"""The settings, statistics and policy protocol of adaptive concurrency (plain Python).

Kept apart from :mod:`~stageflow_plus.primitives.adaptive` (the controller, compiled in the
accelerated build) so these classes validate their values themselves — a wrong type is a
:class:`ConfigError` naming the field in both cores.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

from .errors import ConfigError

__all__ = ["REASONS", "AdaptiveSettings", "AdaptiveStatistics", "LimitPolicy"]

REASONS: tuple[str, ...] = ("drop", "rtt", "grow", "probe", "probe_done", "bounds")
"""Why a limit changed: a drop; round trips rising (queueing); growth; a probe starting;
a probe ending (limit restored); the bounds (the limit was clamped into them)."""

def _number(name: str, value: object, low: float, high: float, *, low_open: bool = False,
            high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"adaptive {name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or (number <= low if low_open else number < low) or (
        number >= high if high_open else number > high
    ):
        lo = f"{'(' if low_open else '['}{low:g}"
        hi = f"{high:g}{')' if high_open else ']'}"
        raise ConfigError(f"adaptive {name} must be in {lo}, {hi}, got {value!r}")
    return number


def _integer(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"adaptive {name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ConfigError(f"adaptive {name} must be >= {low}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    """How :class:`AdaptiveLimit` learns (every field validated: ``ConfigError`` names it).

    :ivar min_limit: the limit never goes below this (>= 1).
    :ivar max_limit: the limit never goes above this (>= ``min_limit``).
    :ivar window: shortest decision window, seconds (> 0).
    :ivar window_rtts: a window also lasts at least this many no-load round trips (>= 0).
    :ivar min_samples: samples (completed calls) a window needs before deciding (>= 1).
    :ivar max_window: a window with fewer samples ends after this many seconds, deciding
        nothing (>= ``window``).
    :ivar percentile: the window's round trip is this percentile of its last 128 samples
        (``0.5``: the median, as Envoy; a stall that delays a few calls moves it little; in
        ``[0, 1)``).
    :ivar tolerance: share of the round trip spent queueing (``1 − R0/rtt``) below which
        the provider counts as not queueing, so the limit may grow (in ``[0, 1)``).
    :ivar headroom: the limit aims at the estimated capacity times ``1 + headroom`` (a
        short queue at the provider keeps it busy; in ``[0, 1]``).
    :ivar cut_above: queueing share at or above which a cut applies at once instead of by
        ``smoothing`` (in ``[tolerance, 1]``).
    :ivar smoothing: share of the way a mild cut moves toward its target (in ``(0, 1]``).
    :ivar drop_backoff: factor applied to the limit on a drop (in ``(0, 1)``).
    :ivar max_decrease: the most one window may take off the limit, as a share (in
        ``(0, 1)``); drops are bounded by it too.
    :ivar growth: growth per window for the 1st, 2nd, ... window in a row that grows (the
        last repeats); each in ``(0, 4]``, at least one call per step.
    :ivar probe_interval: seconds between periodic probes of the no-load latency (``0``: only
        probes triggered by a cut that bought no lower latency).
    :ivar probe_fraction: a probe pins the limit to this share of the estimated capacity
        (in ``(0, 1)``).
    """

    min_limit: int = 1
    max_limit: int = 1000
    window: float = 1.0
    window_rtts: float = 3.0
    min_samples: int = 10
    max_window: float = 30.0
    percentile: float = 0.5
    tolerance: float = 0.05
    headroom: float = 0.03
    cut_above: float = 0.2
    smoothing: float = 0.5
    drop_backoff: float = 0.9
    max_decrease: float = 0.5
    growth: tuple[float, ...] = (0.05, 0.15, 0.25)
    probe_interval: float = 60.0
    probe_fraction: float = 0.5

    def __post_init__(self) -> None:
        _integer("min_limit", self.min_limit, 1)
        _integer("max_limit", self.max_limit, 1)
        if self.max_limit < self.min_limit:
            raise ConfigError(
                f"adaptive max_limit ({self.max_limit}) must be >= min_limit ({self.min_limit})"
            )
        _number("window", self.window, 0.0, math.inf, low_open=True, high_open=True)
        _number("window_rtts", self.window_rtts, 0.0, 1e6)
        _integer("min_samples", self.min_samples, 1)
        _number("percentile", self.percentile, 0.0, 1.0, high_open=True)
        _number("max_window", self.max_window, float(self.window), math.inf, high_open=True)
        _number("tolerance", self.tolerance, 0.0, 1.0, high_open=True)
        _number("headroom", self.headroom, 0.0, 1.0)
        _number("cut_above", self.cut_above, float(self.tolerance), 1.0)
        _number("smoothing", self.smoothing, 0.0, 1.0, low_open=True)
        _number("drop_backoff", self.drop_backoff, 0.0, 1.0, low_open=True, high_open=True)
        _number("max_decrease", self.max_decrease, 0.0, 1.0, low_open=True, high_open=True)
        if not isinstance(self.growth, tuple) or not self.growth:
            raise ConfigError(f"adaptive growth must be a non-empty tuple, got {self.growth!r}")
        for step in self.growth:
            _number("growth step", step, 0.0, 4.0, low_open=True)
        _number("probe_interval", self.probe_interval, 0.0, math.inf, high_open=True)
        _number("probe_fraction", self.probe_fraction, 0.0, 1.0, low_open=True, high_open=True)

    @classmethod
    def names(cls) -> frozenset[str]:
        """The field names (the keys a config section may hold)."""
        return frozenset(f.name for f in fields(cls))


@dataclass(frozen=True, slots=True)
class AdaptiveStatistics:
    """A snapshot of one adaptive limit.

    :ivar key: the limited group, e.g. ``"tool:search"``.
    :ivar limit: the limit applied now.
    :ivar rtt_noload: the estimated no-load round trip, seconds (0 until learned).
    :ivar rtt: the last window's mean round trip, seconds (0 before the first window).
    :ivar gradient: ``rtt_noload / rtt`` of the last window (1: no queueing).
    :ivar capacity: the last estimate of the calls in flight served without queueing.
    :ivar in_flight: the last window's mean calls in flight.
    :ivar throughput: the last window's completions per second.
    :ivar samples_in_window: samples of the last window.
    :ivar drops_in_window: drops of the last window.
    :ivar windows: windows decided so far.
    :ivar changes: limit changes so far.
    :ivar drops: drops counted so far.
    :ivar last_reason: why the limit last changed (see :data:`REASONS`), or ``""``.
    :ivar probing: whether a probe window runs now.
    """

    key: str
    limit: int
    rtt_noload: float
    rtt: float
    gradient: float
    capacity: float
    in_flight: float
    throughput: float
    samples_in_window: int
    drops_in_window: int
    windows: int
    changes: int
    drops: int
    last_reason: str
    probing: bool


class LimitPolicy(Protocol):
    """What :class:`~stageflow_plus.interceptors.adaptive.AdaptiveConcurrency` drives.

    ``sample`` is called once per completed call (``started`` is when it was admitted,
    ``inflight`` the calls in flight at its completion, itself included); it returns the
    limit to apply, an int. ``reason`` says why it last changed.
    """

    reason: str

    @property
    def limit(self) -> int:
        """The limit to apply now."""
        ...

    def sample(self, now: float, started: float, inflight: int, dropped: bool) -> int: ...

    def statistics(self, key: str) -> AdaptiveStatistics: ...
