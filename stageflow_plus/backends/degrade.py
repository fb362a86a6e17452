"""The ``degrade`` policy: while Redis is unreachable, each process enforces its share.

A process that loses Redis keeps limiting: each global pool of capacity ``L`` becomes a
local pool of ``max(1, L // N)`` permits and each global bucket of rate ``r`` and burst
``b`` a local bucket of ``r / N`` and ``b / N``, where ``N`` is the number of live processes
sharing the prefix as last seen in Redis (its heartbeat and every acquire count them). The
local pools start with the permits this process still holds in Redis, so calls granted
before the outage count against the share until they end.

Bound on the excess. While Redis is out, the calls in flight on a pool stay
``<= sum_i max(1, L // N_i)`` over the processes ``i`` (``N_i`` what each last saw): with
one view ``N <= L`` that is ``<= L``; a process that never saw Redis (``N_i = 1``) takes
the whole ``L``. Rates stay ``<= r`` plus at most one burst ``b`` per process (each share
starts full). When Redis is back, each process tells it what it still runs (its local
calls become leases, over the cap if need be: see :mod:`.outage`) at its next acquire or
within ``recheck_s``; until the last one has, Redis may grant permits still used by
unreported local calls: for that window (``<= recheck_s`` plus a round trip) the bound is
``L + sum_i max(1, L // N_i)``. Measured by ``bench --reliability`` (Redis faults).

The waiting is the in-process :class:`~stageflow_plus.primitives.limiter.Limiter` (priority
with aging and fair share, as configured), so calls keep their order locally.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..primitives.lease import Lease
from ..primitives.limiter import Limiter
from ..primitives.ordering import PriorityFairOrdering
from ..primitives.resources import ConcurrencyPool, Rate, Resource, TokenBucket
from .records import GlobalBucket, GlobalPool

__all__ = ["LocalShare"]


class LocalShare:
    """This process's share of every global limit, enforced in memory.

    :param aging_ms: the aging interval of the global queue (``None``: strict priorities).
    :param weights: tenant weights (as in the global queue).
    """

    __slots__ = ("_buckets", "_counted", "_limiter", "_pools", "live")

    def __init__(self, *, aging_ms: float | None,
                 weights: Mapping[str, float] | None = None) -> None:
        self._limiter = Limiter(
            name="redis-degraded",
            ordering=PriorityFairOrdering(
                aging_interval=None if aging_ms is None else aging_ms / 1000,
                weights=weights),
        )
        self._pools: dict[str, ConcurrencyPool] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._counted: dict[str, tuple[str, ...]] = {}  # Redis lease member -> pool keys
        self.live = 1  # processes sharing the prefix, as last seen

    def _share(self) -> int:
        return max(1, self.live)

    def begin(self, held: Mapping[str, Sequence[str]]) -> None:
        """Redis became unreachable; ``held``: this process's Redis leases (member → pool
        keys), counted against the local pools until they are released."""
        for member, keys in held.items():
            if member in self._counted:
                continue
            self._counted[member] = tuple(keys)
            for key in keys:
                pool = self._pools.get(key)
                if pool is not None:
                    pool.in_use += 1

    def lease_ended(self, member: str) -> None:
        """A Redis lease counted by :meth:`begin` was released."""
        keys = self._counted.pop(member, ())
        for key in keys:
            pool = self._pools.get(key)
            if pool is not None and pool.in_use > 0:
                pool.in_use -= 1
        if keys:
            self._limiter.dispatch()

    def _pool(self, key: str, limit: int) -> ConcurrencyPool:
        share = max(1, limit // self._share())
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = ConcurrencyPool(f"degraded:{key}", share)
            pool.in_use = sum(1 for keys in self._counted.values() if key in keys)
        elif pool.capacity != share:
            pool.capacity = share
        return pool

    def _bucket(self, bucket: GlobalBucket) -> TokenBucket:
        n = self._share()
        found = self._buckets.get(bucket.key)
        rate = Rate(bucket.rate / n, per=1.0, burst=bucket.burst / n, dimension="units")
        if found is None:
            found = self._buckets[bucket.key] = TokenBucket(
                f"degraded:{bucket.key}", rate, self._limiter.clock.now())
        elif abs(found.rate - rate.rate) > 1e-12:
            found.set_rate(rate, self._limiter.clock.now())
        return found

    def demands(self, pool_keys: Sequence[tuple[str, GlobalPool]],
                buckets: Sequence[tuple[str, GlobalBucket]]) -> list[tuple[Resource, float]]:
        """The local demands standing for a call's global ones (keys with prefix)."""
        out: list[tuple[Resource, float]] = [(self._pool(k, p.limit), 1.0) for k, p in pool_keys]
        out += [(self._bucket(b), b.amount) for _, b in buckets if b.amount > 0]
        return out

    async def acquire(self, demands: Sequence[tuple[Resource, float]], *, priority: int,
                      tenant: str, cost: float, timeout: float | None, info: Any) -> Lease:
        """Wait for the local share (the in-process limiter's errors and cancellation
        semantics: see :meth:`Limiter.acquire`)."""
        return await self._limiter.acquire(demands, priority=priority, tenant=tenant,
                                           cost=cost, timeout=timeout, info=info)

    def statistics(self) -> Any:
        """The local limiter's statistics."""
        return self._limiter.statistics()
