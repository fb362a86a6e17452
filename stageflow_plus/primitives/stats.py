"""Statistics snapshots: frozen, tuple-valued, cheap to take.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = [
    "BucketStatistics",
    "LimiterStatistics",
    "PoolStatistics",
    "WaitPercentiles",
    "WaitRecorder",
]


@dataclass(frozen=True, slots=True)
class WaitPercentiles:
    """Queue-wait percentiles in seconds over the most recent admissions.

    :ivar samples: how many admissions the percentiles are computed from.
    :ivar p50: median wait.
    :ivar p95: 95th percentile wait.
    :ivar p99: 99th percentile wait.
    :ivar max: longest wait among the samples.
    """

    samples: int = 0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0


class WaitRecorder:
    """Keeps the last ``size`` waits and computes nearest-rank percentiles on demand."""

    __slots__ = ("_waits", "add")

    def __init__(self, size: int = 2048) -> None:
        self._waits: deque[float] = deque(maxlen=size)
        self.add: Callable[[float], None] = self._waits.append
        """Record one wait in seconds."""

    def percentiles(self) -> WaitPercentiles:
        return percentiles_of(self._waits)


def percentiles_of(values: Iterable[float]) -> WaitPercentiles:
    """Nearest-rank p50/p95/p99/max of ``values``."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return WaitPercentiles()

    def rank(q: float) -> float:
        index = max(0, min(n - 1, int(-(-q * n // 1)) - 1))  # ceil(q*n) - 1
        return ordered[index]

    return WaitPercentiles(n, rank(0.50), rank(0.95), rank(0.99), ordered[-1])


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """One concurrency pool.

    :ivar key: the pool's key, e.g. ``"tool:search"``.
    :ivar capacity: permits in total.
    :ivar in_use: permits held by calls in flight.
    :ivar waiting: calls queued that need this pool.
    """

    key: str
    capacity: int
    in_use: int
    waiting: int


@dataclass(frozen=True, slots=True)
class BucketStatistics:
    """One token bucket.

    :ivar key: the bucket's key, e.g. ``"rate:openai:tokens"``.
    :ivar dimension: ``"requests"`` or the cost name (``"tokens"``).
    :ivar available: tokens available now (negative while in debt).
    :ivar burst: bucket capacity.
    :ivar rate: refill per second.
    :ivar paused_for: seconds until a provider pause ends (0 when not paused).
    :ivar waiting: calls queued that need this bucket.
    """

    key: str
    dimension: str
    available: float
    burst: float
    rate: float
    paused_for: float
    waiting: int


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A snapshot of one :class:`~stageflow_plus.primitives.limiter.Limiter`.

    :ivar name: the limiter's name.
    :ivar in_flight: leases granted and not yet released.
    :ivar tasks_waiting: calls queued now.
    :ivar waiting_by_priority: ``(priority, count)`` pairs, ascending priority.
    :ivar waiting_by_tenant: ``(tenant, count)`` pairs, sorted by tenant.
    :ivar admitted: calls granted so far.
    :ivar rejected: ``(reason, count)`` pairs for refusals, sorted by reason.
    :ivar cancelled: calls cancelled while waiting.
    :ivar waits: percentiles of recent queue waits.
    :ivar pools: the concurrency pools the limiter's owner reported.
    :ivar buckets: the token buckets the limiter's owner reported.
    """

    name: str
    in_flight: int
    tasks_waiting: int
    waiting_by_priority: tuple[tuple[int, int], ...]
    waiting_by_tenant: tuple[tuple[str, int], ...]
    admitted: int
    rejected: tuple[tuple[str, int], ...]
    cancelled: int
    waits: WaitPercentiles
    pools: tuple[PoolStatistics, ...] = field(default=())
    buckets: tuple[BucketStatistics, ...] = field(default=())

    @property
    def rejected_total(self) -> int:
        """All refusals, whatever the reason."""
        return sum(n for _, n in self.rejected)
