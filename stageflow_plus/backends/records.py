"""The plain records of the Redis backend: buckets asked for, script answers, statistics.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from dataclasses import dataclass

from ..primitives.stats import WaitPercentiles

__all__ = ["GlobalBucket", "GlobalPool", "Grant", "RedisStatistics"]


@dataclass(frozen=True, slots=True)
class GlobalPool:
    """One concurrency cap a call needs a permit of.

    :ivar key: the pool's name (without prefix), e.g. ``"global:*"`` or ``"tool:search"``.
    :ivar limit: permits in flight at most, across every process.
    """

    key: str
    limit: int


@dataclass(frozen=True, slots=True)
class GlobalBucket:
    """One GCRA bucket a call draws from.

    :ivar key: the bucket's name (without prefix), e.g. ``"rate:*:tokens"``.
    :ivar rate: units per second.
    :ivar burst: units available at once from a full bucket.
    :ivar amount: units this call takes.
    """

    key: str
    rate: float
    burst: float
    amount: float

    @property
    def dimension(self) -> str:
        """What a unit is: the last ``:``-part of the key (``"requests"``, ``"tokens"``)."""
        return self.key.rsplit(":", 1)[-1]

    @property
    def interval_ms(self) -> float:
        """Milliseconds one unit occupies (the GCRA emission interval)."""
        return 1000.0 / self.rate


@dataclass(frozen=True, slots=True)
class Grant:
    """The script's answer: granted, or how long to wait and why.

    :ivar granted: whether every permit was taken.
    :ivar wait: seconds to wait (exact for ``"rate"``/``"paused"``; an upper bound for
        ``"concurrency"``: a release may free a permit sooner; 0 when unknown).
    :ivar reason: ``""``, ``"rate"``, ``"paused"``, ``"concurrency"`` or ``"queued"``
        (every permit is free but other calls wait: nobody barges).
    :ivar key: the key that blocked (with prefix), ``""`` when granted.
    """

    granted: bool
    wait: float
    reason: str
    key: str


@dataclass(frozen=True, slots=True)
class RedisStatistics:
    """Counters of one :class:`RedisBackend` (this process only).

    :ivar url: the server (password hidden).
    :ivar policy: ``"fail_open"`` or ``"fail_closed"``.
    :ivar held: leases held now by this process.
    :ivar queued: calls of this process waiting in the global queue now.
    :ivar acquired: acquire scripts that granted.
    :ivar refused: acquire scripts that answered "wait".
    :ivar round_trips: script calls sent (acquire, release, heartbeat, pause).
    :ivar unavailable: failed Redis operations (connection, timeout, server errors).
    :ivar failed_open: calls that proceeded without global permits (fail_open).
    :ivar failed_closed: calls refused with :class:`BackendUnavailable` (fail_closed).
    :ivar degraded: calls admitted by this process's share of the limits while Redis was
        unreachable (``degrade``).
    :ivar lost_leases: held leases found gone by the heartbeat (expired or lost in a restart).
    :ivar woken: queued calls granted by another process's release (pushed, not polled).
    :ivar capped_pauses: provider pauses shortened to ``max_pause``.
    :ivar live_processes: processes sharing this prefix, as last seen (0: not seen yet).
    :ivar acquire_latency: percentiles of one acquire round trip, seconds.
    """

    url: str
    policy: str
    held: int
    queued: int
    acquired: int
    refused: int
    round_trips: int
    unavailable: int
    failed_open: int
    failed_closed: int
    degraded: int
    lost_leases: int
    woken: int
    capped_pauses: int
    live_processes: int
    acquire_latency: WaitPercentiles
