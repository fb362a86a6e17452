"""RedisLimits: the tool-call interceptor taking a call's global permits from Redis.

Place it right after the local limiter interceptors of a
:class:`~stageflow_plus.interceptors.chain.ToolCallChain` (they form the per-process waiting
room: priority, fairness, queue bounds, cancellation)::

    backend = RedisBackend("redis://127.0.0.1:6379/0", ttl=5, on_unavailable="fail_open")
    chain = ToolCallChain([
        PriorityFairQueue(), ConcurrencyLimiter(8),            # local waiting room
        RedisLimits(backend, concurrency=8, rates=[Rate(600, per=60),
                                                   Rate(90_000, per=60, dimension="tokens")]),
    ])

A call admitted locally then asks Redis for all its global permits at once (one round trip).
Refused, it sleeps the wait Redis computed (exact for rates and pauses; a short poll for
concurrency, since a release may come any time) and asks again. While it waits it keeps its
*local* permit: local permits are per process and always taken first, so no cycle (and no
deadlock) can form; the local cap bounds how many calls of a process wait on Redis. Only one
call per blocking key and process polls at a time; the others, newcomers included, queue
behind it in arrival order (the local gate's priority order), so a busy key causes no herd
of round trips and nobody overtakes within a process.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..interceptors.call import Proceed, ToolCall
from ..interceptors.rate import KEYS, default_retry_after
from ..primitives.clock import Clock, as_clock
from ..primitives.errors import ConfigError, CostTooLarge, DeadlineUnmeetable, WaitTimeout
from ..primitives.resources import Rate
from .base import BackendUnavailable
from .redis import GlobalBucket, Grant, RedisBackend, RedisLease, RedisStatistics

__all__ = ["RedisLimits"]


def _caps(value: int | Mapping[str, int] | None, where: str) -> tuple[int | None, dict[str, int]]:
    if value is None:
        return None, {}
    items = {"": value} if isinstance(value, int) else dict(value)
    for group, cap in items.items():
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigError(f"RedisLimits {where}{f'[{group!r}]' if group else ''} must be "
                              f"an int >= 1, got {cap!r}")
    return (value, {}) if isinstance(value, int) else (None, items)


class RedisLimits:
    """Global concurrency caps, rate buckets and provider pauses shared through Redis.

    :param backend: the :class:`~stageflow_plus.backends.redis.RedisBackend`.
    :param concurrency: global cap on calls in flight across all processes.
    :param per_tool: an int caps every tool; a mapping caps the tools it names.
    :param per_tenant: an int caps every tenant; a mapping caps the tenants it names.
    :param rates: :class:`Rate` s per rate key (``requests`` costs 1, other dimensions cost
        ``call.cost[dimension]``); GCRA, starting full (``start_full`` is ignored).
    :param rate_key: ``"global"`` (default), ``"tool"``, ``"tenant"`` or a function.
    :param actual_cost: reads the actual cost from a result; the difference is charged or
        refunded in the release round trip.
    :param retry_after: finds a provider's ``Retry-After``; the rate key is then paused for
        every process.
    :param clock: the clock of ``call.deadline`` (use the chain's; default the loop's).
    :param poll_interval: seconds between tries while blocked on a concurrency cap.
    :param max_wait: longest wait for global permits without a deadline (``None``: none).

    Errors: :class:`CostTooLarge` (a call above a bucket's burst), :class:`DeadlineUnmeetable`
    (the known wait exceeds the deadline), :class:`WaitTimeout` (still blocked at the
    deadline), :class:`BackendUnavailable` (Redis down under ``fail_closed``); each carries
    ``retry_after`` when known. Cancellation while waiting takes nothing; a grant racing with
    a cancellation is released at once; cancellation while running releases in the
    background (or by TTL).
    """

    __slots__ = ("_actual_cost", "_background", "_buckets", "_clock", "_locks", "_pools",
                 "_rate_key", "_rates", "_retry_after", "backend", "max_wait", "poll_interval")

    outside_limits = False

    def __init__(
        self,
        backend: RedisBackend,
        *,
        concurrency: int | None = None,
        per_tool: int | Mapping[str, int] | None = None,
        per_tenant: int | Mapping[str, int] | None = None,
        rates: Rate | Sequence[Rate] = (),
        rate_key: str | Callable[[ToolCall], str] = "global",
        actual_cost: Callable[[Any], Mapping[str, float] | None] | None = None,
        retry_after: Callable[[Any], float | None] | None = default_retry_after,
        clock: Clock | Callable[[], float] | None = None,
        poll_interval: float = 0.002,
        max_wait: float | None = None,
    ) -> None:
        self.backend = backend
        self._pools = (
            ("global", *_caps(concurrency, "concurrency"), lambda c: "*"),
            ("tool", *_caps(per_tool, "per_tool"), lambda c: c.tool),
            ("tenant", *_caps(per_tenant, "per_tenant"), lambda c: c.tenant),
        )
        self._rates = (rates,) if isinstance(rates, Rate) else tuple(rates)
        if not all(isinstance(r, Rate) for r in self._rates):
            raise ConfigError("RedisLimits rates must be Rate objects")
        if isinstance(rate_key, str):
            if rate_key not in KEYS:
                raise ConfigError(f"RedisLimits rate_key must be one of {sorted(KEYS)} or a "
                                  f"function, got {rate_key!r}")
            self._rate_key = KEYS[rate_key]
        else:
            self._rate_key = rate_key
        for name, value in (("poll_interval", poll_interval), ("max_wait", max_wait)):
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not (value > 0 and math.isfinite(value))):
                raise ConfigError(f"RedisLimits {name} must be a number > 0, got {value!r}")
        self.poll_interval = float(poll_interval)
        self.max_wait = max_wait
        self._actual_cost = actual_cost
        self._retry_after = retry_after
        self._clock = as_clock(clock)
        self._locks: dict[str, list[Any]] = {}  # key -> [lock, users]: one poller per key
        self._background: set[asyncio.Task[None]] = set()
        self._buckets: dict[tuple[str, float], tuple[tuple[str, Rate], ...]] = {}

    # -- what a call needs -------------------------------------------------------------
    def spec(self, call: ToolCall) -> tuple[list[tuple[str, int]], list[GlobalBucket], list[str]]:
        """The ``(pools, buckets, pauses)`` of ``call`` in Redis terms."""
        pools: list[tuple[str, int]] = []
        for name, default, overrides, key_of in self._pools:
            group = key_of(call)
            cap = overrides.get(group, default)
            if cap is not None:
                pools.append((f"{name}:{group}", cap))
        buckets: list[GlobalBucket] = []
        pauses: list[str] = []
        if self._rates:
            key = self._rate_key(call)
            pauses.append(f"rate:{key}")
            for r in self._rates:
                amount = 1.0 if r.dimension == "requests" else float(
                    call.cost.get(r.dimension, 0.0))
                name = f"rate:{key}:{float(r.limit)!r}/{float(r.per)!r}s:{r.dimension}"
                buckets.append(GlobalBucket(name, r.rate, r.capacity, amount))
        return pools, buckets, pauses

    # -- acquiring ---------------------------------------------------------------------
    async def acquire(self, call: ToolCall) -> RedisLease:
        """Wait for every global permit of ``call`` (see the class docstring for errors)."""
        pools, buckets, pauses = self.spec(call)
        for b in buckets:
            if b.amount > b.burst:
                raise CostTooLarge(f"redis: a call needs {b.amount:g} of {b.key!r}, which can "
                                   f"never grant more than {b.burst:g} at once",
                                   key=b.key, limiter="redis")
        deadline = call.deadline
        if self.max_wait is not None:
            limit = self._clock.now() + self.max_wait
            deadline = limit if deadline is None else min(deadline, limit)
        backend = self.backend
        keys = [backend.pool_key(name) for name, _ in pools]
        keys += [backend.bucket_key(b.key) for b in buckets]
        keys += [backend.pause_key(name) for name in pauses]
        busy = next((k for k in keys if k in self._locks), None)
        if busy is None:  # nobody of this process polls on these keys: try at once
            grant, lease = await self._try(call, pools, buckets, pauses)
            if lease is not None:
                return lease
            self._wait_for(grant, deadline, call)  # refuses at once when the deadline is near
            busy = grant.key
        else:  # queue behind this process's poller instead of overtaking it
            grant = Grant(False, self.poll_interval, "queued", busy)
        entry = self._locks.get(busy)
        if entry is None:
            entry = self._locks[busy] = [asyncio.Lock(), 0]
        lock: asyncio.Lock = entry[0]
        entry[1] += 1  # users of this key's lock; the lock is dropped with the last one
        try:
            try:
                when = None if deadline is None else (
                    asyncio.get_running_loop().time() + max(0.0, deadline - self._clock.now()))
                async with asyncio.timeout_at(when):
                    await lock.acquire()
            except TimeoutError:
                raise self._timeout(grant, call) from None
            try:
                while True:
                    grant, lease = await self._try(call, pools, buckets, pauses)
                    if lease is not None:
                        return lease
                    await asyncio.sleep(self._wait_for(grant, deadline, call))
            finally:
                lock.release()
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[busy]

    def _wait_for(self, grant: Grant, deadline: float | None, call: ToolCall) -> float:
        """Seconds to sleep before the next try, or the refusal the deadline calls for."""
        wait = grant.wait
        if grant.reason == "concurrency":
            wait = min(wait, self.poll_interval * (0.5 + random.random()))
        if deadline is not None:
            remaining = deadline - self._clock.now()
            if grant.reason != "concurrency" and grant.wait > remaining:
                raise DeadlineUnmeetable(
                    f"redis: {grant.reason} on {grant.key!r} needs {grant.wait:.3f} s, "
                    f"the call's deadline is in {max(0.0, remaining):.3f} s",
                    key=grant.key, limiter="redis", retry_after=grant.wait)
            if remaining <= 0:
                raise self._timeout(grant, call)
            wait = min(wait, remaining)
        return wait

    def _timeout(self, grant: Grant, call: ToolCall) -> WaitTimeout:
        return WaitTimeout(f"redis: still blocked by {grant.reason} on {grant.key!r} at the "
                           "call's deadline", key=grant.key, limiter="redis",
                           retry_after=grant.wait or None)

    async def _try(
        self,
        call: ToolCall,
        pools: list[tuple[str, int]],
        buckets: list[GlobalBucket],
        pauses: list[str],
    ) -> tuple[Grant, RedisLease | None]:
        backend = self.backend
        task = asyncio.ensure_future(backend.try_acquire(pools, buckets, pauses))
        try:
            return await asyncio.shield(task)
        except BackendUnavailable as exc:
            if backend.policy == "fail_open":
                return Grant(True, 0.0, "", ""), backend.degraded_lease()
            backend.count_failed_closed()
            exc.retry_after = backend.recheck_s
            raise
        except asyncio.CancelledError:
            task.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, task: asyncio.Task[tuple[Grant, RedisLease | None]]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        lease = task.result()[1]
        if lease is not None:
            self._release_later(lease, None)

    def _release_later(self, lease: RedisLease, actual: dict[str, float] | None) -> None:
        task = asyncio.get_running_loop().create_task(lease.release(actual))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the interceptor ---------------------------------------------------------------
    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        lease = await self.acquire(call)
        try:
            result = await proceed(call)
        except Exception as error:
            await lease.release()
            await self._maybe_pause(call, error)
            raise
        except BaseException:
            self._release_later(lease, None)  # cancelled while running
            raise
        actual: dict[str, float] | None = None
        try:
            if self._actual_cost is not None:
                measured = self._actual_cost(result)
                if measured:
                    actual = {k: float(v) for k, v in measured.items()}
        finally:  # a failing actual_cost still gives the permits back (unreconciled)
            await lease.release(actual)
        await self._maybe_pause(call, result)
        return result

    async def _maybe_pause(self, call: ToolCall, outcome: Any) -> None:
        if self._retry_after is None or not self._rates:
            return
        seconds = self._retry_after(outcome)
        if seconds is not None:
            await self.pause(self._rate_key(call), seconds)

    async def pause(self, key: str, seconds: float) -> None:
        """Pause rate key ``key`` for every process (a provider's ``Retry-After``).

        Never raises for Redis trouble (logged and counted by the backend).
        """
        with contextlib.suppress(BackendUnavailable):
            await self.backend.pause(f"rate:{key}", seconds)

    def statistics(self) -> RedisStatistics:
        """The backend's counters (this process)."""
        return self.backend.statistics()

    def __repr__(self) -> str:
        caps = ", ".join(f"{n}={d if d is not None else o}" for n, d, o, _ in self._pools
                         if d is not None or o)
        rates = ", ".join(f"{r.limit:g} {r.dimension}/{r.per:g}s" for r in self._rates)
        return f"RedisLimits({caps}{'; ' if caps and rates else ''}{rates})"
