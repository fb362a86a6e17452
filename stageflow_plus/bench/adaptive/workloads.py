"""The adaptive benchmark's settings and workloads (provider capacity, offered load).

``L`` = capacity, ``S`` = no-load latency, ``W = 3·S`` = one decision window:

* ``noload`` — ¼ of capacity offered, no limit reached: the no-load latency ratios use.
* ``step`` — 2x the full capacity offered throughout; capacity ``L`` → ``L/2`` → ``L``
  (10, 7 and 7 windows).
* ``overload`` — capacity ``L``; 1x offered for 4 windows (a service running at about its
  capacity), then 10x for 9.
* ``spike`` — capacity ``L``; a critical class (priority 3) at 0.2x throughout and a low
  class (priority 0) at 0.8x for 4 windows, 12x for 8 (the spike), then 0.8x for 1.

Arrivals are open-loop Poisson per class and segment, seeded: the same calls for every
strategy.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ...primitives.adaptive import AdaptiveSettings
from ..capacity import CapacityPhase, CapacityProfile

__all__ = ["WINDOW_RTTS", "AdaptiveBenchConfig", "AdaptiveWorkload", "workloads"]

WINDOW_RTTS = 2.0
"""The controller measures over two no-load round trips per window (the library's default
is 3 and at least 1 s; shorter windows keep the benchmark short). After a change it first
waits one round trip (calls admitted under the new limit must answer), so a decision takes
three round trips: the benchmark's unit ``W``."""


@dataclass(frozen=True, slots=True)
class AdaptiveBenchConfig:
    """The provider and limiter settings of the adaptive benchmark.

    :ivar capacity: the provider's full capacity, calls at once.
    :ivar latency_ms: its mean service time (uniform ± ``jitter``).
    :ivar jitter: relative spread of service times.
    :ivar queue_factor: the provider queues up to this times its capacity, then 429s.
    :ivar retry_after_s: the ``Retry-After`` of its 429/503s.
    :ivar initial_limit: where every adaptive strategy starts.
    :ivar max_queue: our queue bound (``Backpressure``); the excess is shed.
    :ivar max_wait: the longest a call waits in our queue, seconds.
    :ivar call_timeout: the HTTP client's timeout, seconds (a timeout is a drop).
    :ivar seed: seeds arrivals and service times.
    """

    capacity: int = 32
    latency_ms: float = 200.0
    jitter: float = 0.1
    queue_factor: float = 1.0
    retry_after_s: float = 0.5
    initial_limit: int = 12
    max_queue: int = 64
    max_wait: float = 1.0
    call_timeout: float = 5.0
    seed: int = 7

    @property
    def window(self) -> float:
        """One decision after a change (the unit ``W``): three no-load round trips."""
        return (WINDOW_RTTS + 1.0) * self.latency_ms / 1000.0

    @property
    def throughput(self) -> float:
        """Calls per second the full capacity serves."""
        return self.capacity / (self.latency_ms / 1000.0)

    @classmethod
    def quick(cls) -> AdaptiveBenchConfig:
        """A small, fast provider (16 at once, 40 ms): every run takes about a second."""
        return cls(capacity=16, latency_ms=40.0, max_wait=0.2, call_timeout=2.0)

    def settings(self) -> AdaptiveSettings:
        """The adaptive settings every adaptive strategy uses."""
        return AdaptiveSettings(min_limit=1, max_limit=8 * self.capacity,
                                window=WINDOW_RTTS * self.latency_ms / 1000.0,
                                window_rtts=WINDOW_RTTS, min_samples=10)


@dataclass(frozen=True, slots=True)
class AdaptiveWorkload:
    """A capacity schedule and offered load per class.

    :ivar name: a key in the JSON.
    :ivar description: one line for people.
    :ivar profile: the provider's capacity over time.
    :ivar classes: ``(name, priority, ((start, end, calls per second), ...))`` per class.
    :ivar duration: seconds of arrivals.
    :ivar marks: named times (seconds) the report uses (phase changes, spike start/end).
    """

    name: str
    description: str
    profile: CapacityProfile
    classes: tuple[tuple[str, int, tuple[tuple[float, float, float], ...]], ...]
    duration: float
    marks: dict[str, float] = field(default_factory=dict)

    def arrivals(self, seed: int) -> list[tuple[float, int]]:
        """``(time, class index)`` of every call, sorted (Poisson per segment, seeded)."""
        rng = random.Random(seed)
        out: list[tuple[float, int]] = []
        for index, (_, _, segments) in enumerate(self.classes):
            for start, end, rate in segments:
                t = start + rng.expovariate(rate)
                while t < end:
                    out.append((t, index))
                    t += rng.expovariate(rate)
        out.sort()
        return out


def workloads(cfg: AdaptiveBenchConfig, *, quick: bool = False) -> list[AdaptiveWorkload]:
    """``noload``, ``step``, ``overload`` and ``spike`` (shorter when ``quick``)."""
    c, s, w, x = cfg.capacity, cfg.latency_ms, cfg.window, cfg.throughput
    k = 0.5 if quick else 1.0
    opts: dict[str, Any] = {"jitter": cfg.jitter, "queue_factor": cfg.queue_factor,
                            "retry_after_s": cfg.retry_after_s}
    t1, t2, t3 = 10 * w * k, 17 * w * k, 24 * w * k
    step = CapacityProfile((CapacityPhase(0, c, s), CapacityPhase(t1, c // 2, s),
                            CapacityPhase(t2, c, s)), **opts)
    warm, end = 4 * w * k, 13 * w * k
    s1, s2, s3 = 4 * w * k, 12 * w * k, 13 * w * k
    steady = CapacityProfile.steady(c, s, **opts)
    return [
        AdaptiveWorkload("noload", "1/4 of capacity offered (no limit reached)",
                         steady, (("normal", 0, ((0.0, 6 * w * k, 0.25 * x),)),), 6 * w * k),
        AdaptiveWorkload("step", f"capacity {c} -> {c // 2} -> {c}, 2x the full capacity offered",
                         step, (("normal", 0, ((0.0, t3, 2 * x),)),), t3,
                         {"half": t1, "double": t2}),
        AdaptiveWorkload("overload", "1x, then 10x the capacity offered", steady,
                         (("normal", 0, ((0.0, warm, 1.0 * x), (warm, end, 10 * x))),), end,
                         {"overload": warm}),
        AdaptiveWorkload("spike", "critical 0.2x throughout; low 0.8x, 12x (spike), 0.8x",
                         steady, (("critical", 3, ((0.0, s3, 0.2 * x),)),
                                  ("low", 0, ((0.0, s1, 0.8 * x), (s1, s2, 12 * x),
                                              (s2, s3, 0.8 * x)))), s3,
                         {"spike": s1, "spike_end": s2}),
    ]
