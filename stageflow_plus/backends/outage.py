"""While Redis is unreachable, and right after: the ``fail_open`` and ``degrade`` policies.

* ``fail_open``: a call proceeds with a lease standing for "no global permits".
* ``degrade``: a call waits for this process's share of each limit, in memory
  (:class:`~stageflow_plus.backends.degrade.LocalShare`); it is counted in Redis again
  once Redis answers.
* **Back again**: before anything new is granted, the process leases again what it still
  runs — leases from before the outage (gone if the server restarted) and calls admitted
  on its local share — in one round trip (the ``restore`` entry point). The rate tokens a
  local share spent are charged back to the global buckets then: what is still owed at
  the global rate (each bucket's spending as a shadow GCRA arrival time at the global
  rate, less the refill since), so the processes' debts add up to the union's. A process
  with calls admitted locally tries this every ``recheck_s`` (:meth:`Outage.recover`),
  not only at its next acquire: its callers may all be waiting on the local share, and
  until it has restored, the calls it runs are unknown to Redis, which may grant their
  permits to other processes (the excess of the recovery, see :mod:`.degrade`).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..primitives.errors import BackendUnavailable
from .lease import RedisLease
from .records import GlobalBucket, GlobalPool

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["Outage"]


class Outage:
    """The policies' bookkeeping of one backend."""

    __slots__ = ("_backend", "_recovering", "degraded", "due", "spent")

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self.degraded: dict[str, RedisLease] = {}  # admitted on the local share, running
        # bucket key -> (bucket, shadow arrival time, ms): its spending at the global rate
        self.spent: dict[str, tuple[GlobalBucket, float]] = {}
        self.due = False  # Redis failed since the last restore
        self._recovering = False

    def open_lease(self) -> RedisLease:
        """A lease standing for "no global permits" (``fail_open``); counts it."""
        b = self._backend
        b._counts["failed_open"] += 1
        return RedisLease(b, "", None, degraded=True)

    async def share(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket], *,
                    priority: int, tenant: str, cost: float, timeout: float | None,
                    info: Any = None) -> RedisLease:
        """Wait for this process's share of the limits (``degrade``), in memory."""
        b = self._backend
        b.share.begin({m: lease.pools for m, lease in b._held.items()})
        demands = b.share.demands([(b.pool_key(p.key), p) for p in pools],
                                  [(b.bucket_key(x.key), x) for x in buckets])
        local = await b.share.acquire(demands, priority=priority, tenant=tenant, cost=cost,
                                      timeout=timeout, info=info)
        b._counts["degraded"] += 1
        now = time.monotonic() * 1000
        for x in buckets:  # what is still owed is charged when Redis is back
            key = b.bucket_key(x.key)
            shadow = max(self.spent.get(key, (x, now))[1], now)
            self.spent[key] = (x, shadow + x.amount * x.interval_ms)
        plan = b.plan(pools, [], ())
        lease = RedisLease(b, b._member(), plan, degraded=True, local=local)
        if pools:
            self.degraded[lease.member] = lease
            if not self._recovering:
                self._recovering = True
                b._spawn(self.recover())
        return lease

    async def recover(self) -> None:
        """Every ``recheck_s`` while calls admitted locally run: :meth:`restore` once Redis
        answers (at most one such loop per backend)."""
        b = self._backend
        try:
            while self.due and self.degraded:
                await asyncio.sleep(max(b.recheck_s, 0.01))
                if self.due and b.available:
                    try:
                        await self.restore()
                    except BackendUnavailable:
                        continue
        finally:
            self._recovering = False

    async def restore(self) -> None:
        """Redis answers again: lease again what this process still runs, charge the
        tokens its share spent, before anything new is granted. One round trip; raises
        :class:`~stageflow_plus.primitives.errors.BackendUnavailable`."""
        b = self._backend
        leases = [*b._held.values(), *self.degraded.values()]
        keys = [k for lease in leases for k in lease.pools]
        members = [lease.member for lease in leases for _ in lease.pools]
        now = time.monotonic() * 1000
        charged = dict(self.spent)
        charges: list[Any] = []
        for key, (_, shadow) in charged.items():
            if shadow > now:  # owed: the ms of the global rate not refilled yet
                charges += [key, repr(shadow - now)]
        if keys or charges:
            await b._run("restore", [b._queue_key, *keys],
                         [b.prefix, b.aging_ms, round(b.ttl * 1000), *members, *charges])
        for key, entry in charged.items():  # charged now (kept if it failed: retried)
            if self.spent.get(key) is entry:
                del self.spent[key]
        for lease in leases:
            if self.degraded.pop(lease.member, None) is not None:
                b._held[lease.member] = lease  # counted in Redis now: released there too
            elif lease.member not in b._held and lease.plan is not None:  # ended meanwhile
                b._giveback.abandon(lease.member, lease.pools)
        self.due = bool(self.degraded)  # (calls admitted locally meanwhile: once more)
