"""Global limits in Redis: one wait queue for every process sharing a prefix.

:class:`RedisBackend` holds the connections (:mod:`.transport`), the Lua library
(:mod:`.scripts`) and the policy for when Redis is unreachable. Its waiting primitive,
:meth:`RedisBackend.acquire`, has the contract of the in-process
:meth:`~stageflow_plus.primitives.limiter.Limiter.acquire`, for every process at once:

* **all or nothing** — concurrency pools (a lease per call in a ZSET, TTL + heartbeat),
  GCRA buckets (requests *and* tokens) and provider pauses are taken in one script or not
  at all; no call holds a permit while it waits for another;
* **one global order** — a call that cannot go at once joins the queue in Redis, ordered
  by priority with aging and weighted fair share across tenants (start-time fair queuing),
  the same policy as :class:`~stageflow_plus.primitives.ordering.PriorityFairOrdering`;
* **pushed wake-ups** — whoever frees capacity runs the dispatch pass in the same script,
  which pushes each grant to the waiter's process (:mod:`.mailbox`); no poll loop;
* **cancellation-safe, no permit left to a TTL** — a caller that gives up at any point
  ends with nothing held (:mod:`.giveback`); only a crashed process's leases and queued
  calls wait for ``ttl`` to lapse.

An uncontended acquire is one round trip on a lean pipelined connection (:mod:`.resp`);
a release is pipelined behind it. Time is the server's (``TIME``). Redis errors are
translated at one boundary (:meth:`~.transport.RedisTransport._unavailable`) into
:class:`BackendUnavailable`; the policy (``fail_closed``, ``fail_open``, ``degrade``) is
applied by the caller, :class:`~stageflow_plus.backends.limits.RedisLimits`. Every text
naming the URL goes through :mod:`.redact`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ..primitives.rate import Rate
from ..primitives.stats import WaitRecorder
from .degrade import LocalShare
from .giveback import GiveBack
from .heartbeat import Heartbeat
from .lease import RedisLease
from .mailbox import ClientMailbox, LeanMailbox, Mailbox
from .options import Policy, check_options, check_order, check_query
from .outage import Outage
from .permits import Permits, ms, text
from .records import GlobalBucket, GlobalPool, Grant, RedisStatistics
from .redact import redact_url
from .scripts import Plan
from .transport import RedisTransport
from .wakeups import DispatchTimer

if TYPE_CHECKING:  # (types only: this module imports no interceptor)
    from ..interceptors.call import ToolCall, ToolCallInterceptor
    from ..primitives.clock import Clock

__all__ = ["GlobalBucket", "GlobalPool", "Grant", "RedisBackend", "RedisLease",
           "RedisStatistics"]

_log = logging.getLogger("stageflow_plus.redis")


class RedisBackend(RedisTransport):
    """A connection to Redis plus the scripts and policy of global limits.

    :param url: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``,
        ``unix://``); never shown unredacted.
    :param prefix: key prefix; processes sharing limits use the same one (keys are
        hash-tagged ``{prefix}``: one Redis Cluster slot).
    :param ttl: seconds a lease or a queued call lives without its process's heartbeat.
    :param on_unavailable: ``"fail_closed"`` (refuse), ``"fail_open"`` (no global limits) or
        ``"degrade"`` (this process's share of each limit, see :mod:`.degrade`).
    :param op_timeout: bound on any one Redis command, seconds (default ``min(0.5, ttl/4)``;
        must stay below ``ttl/3``, the heartbeat's period).
    :param recheck_s: after a failure, seconds during which Redis is not tried again.
    :param max_pause: the longest provider pause (``Retry-After``) shared through Redis;
        longer ones are shortened to it and logged.
    :param aging_interval: seconds of waiting worth one priority level in the global queue
        (``None``: strict priorities); every process of a prefix must use the same value.
    :param weights: tenant → fair-share weight (default 1), the same in every process.
    :param cluster: connect to a Redis Cluster (the URL names any node).
    :param client: an existing ``redis.asyncio`` client (the URL is then only a label).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "sfp",
                 ttl: float = 10.0, on_unavailable: Policy = "fail_closed",
                 op_timeout: float | None = None, recheck_s: float = 0.25,
                 max_pause: float = 60.0, aging_interval: float | None = 1.0,
                 weights: dict[str, float] | None = None, cluster: bool = False,
                 client: Any = None) -> None:
        if op_timeout is None:  # 0.5 s, and below ttl/4: a heartbeat must land before expiry
            op_timeout = min(0.5, ttl / 4) if isinstance(ttl, (int, float)) else 0.5
        check_options(ttl=ttl, on_unavailable=on_unavailable, op_timeout=op_timeout,
                      recheck_s=recheck_s, max_pause=max_pause, prefix=prefix)
        check_order(aging_interval, weights)
        if client is None:
            check_query(url, redact_url(url))
        super().__init__(url, op_timeout=op_timeout, recheck_s=recheck_s, cluster=cluster,
                         client=client)
        self.prefix = f"{{{prefix}}}:"
        self.ttl = float(ttl)
        self.tombstone_ms = round(self.ttl * 1000)
        self.policy: Policy = on_unavailable
        self.max_pause = float(max_pause)
        self._proc = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._queue_key = f"{self.prefix}q:wait"
        box: dict[str, Any] = dict(describe=self.describe, reachable=self._reachable,
                                   stall_s=max(0.5, 2 * self.op_timeout))
        box_key = f"{self.prefix}wake:{self._proc}"
        self.mailbox: Mailbox
        if self._conn is not None:  # the lean connection: the mailbox reads on its own
            self.mailbox = LeanMailbox(url, box_key, connect_timeout=self.op_timeout,
                                       poll_s=1.0, **box)
        else:
            self.mailbox = ClientMailbox(self._blocking, box_key, poll_s=1.0 if client is None
                                         else self.op_timeout / 2, **box)
        self._timer = DispatchTimer(self._tick, lambda: bool(self.mailbox.waiters), self._proc)
        self._held: dict[str, RedisLease] = {}
        self._plans: dict[tuple[Any, ...], Plan] = {}
        self._giveback = GiveBack(self)
        self._permits = Permits(self)
        self._outage = Outage(self)
        self._heartbeat = Heartbeat(self)
        self._latency = WaitRecorder()
        self._counts.update(dict.fromkeys(
            ("acquired", "refused", "failed_open", "failed_closed", "degraded", "lost_leases",
             "capped_pauses"), 0))
        self.configure_queue(aging_interval=aging_interval, weights=weights)

    # -- keys and plans -----------------------------------------------------------------
    def pool_key(self, name: str) -> str:
        """The Redis key of the concurrency pool ``name``."""
        return f"{self.prefix}pool:{name}"

    def bucket_key(self, name: str) -> str:
        """The Redis key of the GCRA bucket ``name``."""
        return f"{self.prefix}gcra:{name}"

    def pause_key(self, name: str) -> str:
        """The Redis key of the provider pause of ``name``."""
        return f"{self.prefix}pause:{name}"

    def plan(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
             pauses: Sequence[str] = ()) -> Plan:
        """What every call of this shape sends (cached; a bucket's amount is per call)."""
        shape = (tuple(pools), tuple((b.key, b.rate, b.burst) for b in buckets), tuple(pauses))
        plan = self._plans.get(shape)
        if plan is None:
            if len(self._plans) >= 1024:
                self._plans.clear()
            plan = self._plans[shape] = Plan(
                prefix=self.prefix, aging_ms=self.aging_ms, process=self._proc,
                ttl_ms=round(self.ttl * 1000), pools=pools, buckets=buckets, pauses=pauses,
                generation=self.plan_generation)
        return plan

    def _member(self) -> str:
        return f"{self._proc}:{next(self._ids)}"

    def _schedule(self, reply: Sequence[Any]) -> None:
        """Schedule the next pass from ``[wake-at ms, now ms, process]`` of a script."""
        if reply and reply[0]:
            self._timer.schedule(ms(reply[0]), ms(reply[1]) or 0.0, text(reply[2]))

    def _failed(self) -> None:
        self._outage.due = True  # (Redis failed: lease again what runs, see :mod:`.outage`)

    def _spawn(self, coro: Any) -> None:
        with contextlib.suppress(RuntimeError):  # (no loop: nothing to do)
            task = asyncio.get_running_loop().create_task(coro)
            self._giveback._tasks.add(task)
            task.add_done_callback(self._giveback._tasks.discard)
            return
        coro.close()

    # -- acquiring (the hot path lives in :mod:`.permits`) -------------------------------
    async def try_acquire(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                          pauses: Sequence[str] = ()) -> tuple[Grant, RedisLease | None]:
        """One round trip that grants at once or refuses; never queues.

        Refuses (``reason="queued"``) while anyone waits in the global queue: nobody barges.

        :raises BackendUnavailable: Redis could not be reached (the caller applies the policy).
        """
        return await self._permits.try_acquire(pools, buckets, pauses)

    async def acquire(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                      pauses: Sequence[str] = (), *, priority: int = 0, tenant: str = "",
                      cost: float = 1.0, timeout: float | None = None) -> RedisLease:
        """Wait in the global queue until every permit can be taken together, then take all.

        :param priority: higher is more urgent (aged by ``aging_interval``).
        :param tenant: the fair-share owner; ``cost`` is charged to it (weighted).
        :param timeout: seconds the call may wait (``None``: no bound).
        :raises DeadlineUnmeetable: the known wait (rate, pause) exceeds ``timeout``.
        :raises WaitTimeout: still waiting when ``timeout`` ran out.
        :raises BackendUnavailable: Redis could not be reached (the caller applies the policy).

        Cancellation (or the timeout) at any point takes nothing: a call still queued leaves
        the queue, a grant that raced the cancellation is given back, its tokens refunded
        (see :mod:`.giveback`) — right away, not when a TTL runs out.
        """
        plan = self.plan(pools, buckets, pauses)
        return await self._permits.acquire(plan, [repr(float(b.amount)) for b in buckets],
                                           priority=priority, tenant=tenant, cost=cost,
                                           timeout=timeout)

    def acquire_plan(self, plan: Plan, amounts: Sequence[str], *, priority: int = 0,
                     tenant: str = "", cost: float = 1.0,
                     timeout: float | None = None) -> Coroutine[Any, Any, RedisLease]:
        """:meth:`acquire` for a :meth:`plan` and the amounts (``repr`` of floats) this
        call takes of its buckets: what :class:`RedisLimits` calls, its plans cached.
        (Returns the acquire's coroutine: no frame of its own on the hot path.)"""
        return self._permits.acquire(plan, amounts, priority=priority, tenant=tenant,
                                     cost=cost, timeout=timeout)

    async def _reachable(self) -> bool:
        """Whether Redis answers now (one heartbeat: it also wakes waiters granted while
        their mailbox message was lost)."""
        await self._heartbeat.beat()
        return self.available

    async def _tick(self) -> tuple[float | None, float, str]:
        reply = await self._run("tick", [self._queue_key], [self.prefix, self.aging_ms])
        return ms(reply[0]), ms(reply[1]) or 0.0, text(reply[2])

    # -- the policies (see :mod:`.outage`) ----------------------------------------------
    def degraded_lease(self) -> RedisLease:
        """A lease standing for "no global permits" (``fail_open``); counts it."""
        return self._outage.open_lease()

    async def acquire_share(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                            *, priority: int, tenant: str, cost: float,
                            timeout: float | None, info: Any = None) -> RedisLease:
        """Wait for this process's share of the limits (``degrade``), in memory."""
        return await self._outage.share(pools, buckets, priority=priority, tenant=tenant,
                                        cost=cost, timeout=timeout, info=info)

    def count_failed_closed(self) -> None:
        """Count a call refused because Redis was unavailable (``fail_closed``)."""
        self._counts["failed_closed"] += 1

    async def pause(self, name: str, seconds: float) -> float:
        """Pause ``name`` for every process for ``seconds`` (keeps the later pause).

        A pause above ``max_pause`` (``inf`` included) is shortened to it (and logged).
        Returns the pause left in seconds.

        :raises ValueError: ``seconds`` is not a number >= 0 (``nan``, negative, a string).
        :raises BackendUnavailable: Redis is unreachable.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            seconds >= 0
        ):
            raise ValueError(f"pause seconds must be a number >= 0, got {seconds!r}")
        if seconds > self.max_pause:  # (inf included)
            self._counts["capped_pauses"] += 1
            _log.warning("provider pause of %r shortened from %.3f s to max_pause %.3f s",
                         name, seconds, self.max_pause)
            seconds = self.max_pause
        ms = max(1, math.ceil(seconds * 1000))
        left = await self._run("pause", [self.pause_key(name)], [ms])
        return int(left) / 1000.0

    def configure_queue(self, *, aging_interval: float | None = 1.0,
                        weights: dict[str, float] | None = None) -> None:
        """Set the global queue's order (``[stageflow_plus.priority]`` of the config): the
        aging interval and tenant weights, the same in every process of the prefix."""
        check_order(aging_interval, weights)
        self.aging_ms = "" if aging_interval is None else repr(float(aging_interval) * 1000)
        self.weights = dict(weights or {})
        self.share = LocalShare(aging_ms=None if aging_interval is None
                                else float(aging_interval) * 1000, weights=self.weights)
        self._plans.clear()  # (a plan carries the aging interval)
        self.plan_generation = getattr(self, "plan_generation", 0) + 1

    def limits(self, *, concurrency: int | None = None,
               per_tool: int | Mapping[str, int] | None = None,
               per_tenant: int | Mapping[str, int] | None = None, per_run: int | None = None,
               rates: Rate | Sequence[Rate] = (),
               rate_key: str | Callable[[ToolCall], str] = "global", fair_cost: str = "calls",
               clock: Clock | Callable[[], float] | None = None) -> list[ToolCallInterceptor]:
        """The chain steps for these limits held in Redis: see
        :func:`~stageflow_plus.backends.limits.redis_limits`."""
        from .limits import redis_limits  # (the interceptor adapter imports this module)

        return redis_limits(self, concurrency=concurrency, per_tool=per_tool,
                            per_tenant=per_tenant, per_run=per_run, rates=rates,
                            rate_key=rate_key, fair_cost=fair_cost, clock=clock)

    # -- life --------------------------------------------------------------------------
    async def drain(self) -> None:
        """Wait until the releases and cancels already given are in Redis (one round trip
        when Redis answers; at most ``op_timeout`` plus the retries' ``recheck_s``)."""
        if self._conn is not None and self._conn.ready:
            with contextlib.suppress(RedisError, OSError):
                await self._conn.send(b"*1\r\n$4\r\nPING\r\n")  # behind everything sent
        await self._giveback.drain(self.op_timeout + self.recheck_s)

    async def aclose(self) -> None:
        """Give back what is on its way (:meth:`drain`), stop the heartbeat, the mailbox
        and the timer, close the connections (held leases then expire by TTL)."""
        await self._heartbeat.stop()
        self._timer.cancel()
        await self.drain()
        await self.mailbox.aclose()
        if self._conn is not None:
            self._conn.close()
        await self.client.aclose()
        if isinstance(self.mailbox, ClientMailbox) and self.mailbox._client is not self.client:
            await self.mailbox._client.aclose()

    def statistics(self) -> RedisStatistics:
        """A frozen snapshot of this process's counters."""
        c = self._counts
        return RedisStatistics(
            url=self.url, policy=self.policy, held=len(self._held),
            queued=len(self.mailbox.waiters), acquired=c["acquired"], refused=c["refused"],
            round_trips=c["round_trips"], unavailable=c["unavailable"],
            failed_open=c["failed_open"], failed_closed=c["failed_closed"],
            degraded=c["degraded"], lost_leases=c["lost_leases"], woken=self.mailbox.woken,
            capped_pauses=c["capped_pauses"], live_processes=self.share.live,
            acquire_latency=self._latency.percentiles(),
        )

    def __repr__(self) -> str:
        return (f"<RedisBackend {self.url} prefix={self.prefix!r} ttl={self.ttl:g}s "
                f"{self.policy}, {len(self._held)} held, {len(self.mailbox.waiters)} queued>")
