"""RedisLimits: the tool-call interceptor over the global queue of a Redis backend.

It maps a :class:`~stageflow_plus.interceptors.call.ToolCall` to its global demands (pools,
buckets, pauses) and waits for them in the one global queue
(:meth:`~stageflow_plus.backends.redis.RedisBackend.acquire`): priority with aging and
weighted fair share hold across every process, a release anywhere wakes the next waiter
anywhere. Place it right after the in-process limiter interceptors of a chain — they keep
what is per process (per-run caps, queue bounds, backpressure) — or let
:meth:`RedisBackend.limits` / the pipeline config build the pair::

    backend = RedisBackend("redis://127.0.0.1:6379/0", ttl=5, on_unavailable="degrade")
    chain = ToolCallChain([PriorityFairQueue(), ConcurrencyLimiter(per_run=2),
                           RedisLimits(backend, concurrency=8,
                                       rates=[Rate(600, per=60),
                                              Rate(90_000, per=60, dimension="tokens")])])

The global limits are not repeated in front of it: a local cap would hold calls back in
this process before they reach the global queue, and its order would no longer be global.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._logging import LogDigest, stdlib_emit
from ..interceptors.call import Proceed, ToolCall, ToolCallInterceptor, check_cost
from ..interceptors.concurrency import ConcurrencyLimiter
from ..interceptors.rate import KEYS, default_retry_after
from ..primitives.clock import Clock, as_clock
from ..primitives.errors import BackendUnavailable, ConfigError, CostTooLarge
from ..primitives.resources import Rate
from .redis import GlobalBucket, GlobalPool, RedisBackend, RedisLease, RedisStatistics
from .scripts import Plan

__all__ = ["RedisLimits", "redis_limits"]

_log = logging.getLogger("stageflow_plus.redis")

MAX_ACTUAL_COST = 1e15
"""Largest actual cost of one dimension a call may report (Redis keeps bucket times in
milliseconds as doubles; a larger charge would overflow them)."""


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
        refunded in the release round trip. One that raises or returns junk (not a mapping
        of finite numbers ``>= 0`` up to ``MAX_ACTUAL_COST``) is logged, aggregated, and
        counted in ``observer_errors``; the tool's result is kept and the estimate stands.
    :param retry_after: finds a provider's ``Retry-After``; the rate key is then paused for
        every process (at most the backend's ``max_pause``). One that raises is logged,
        aggregated, and counted in ``observer_errors``; the tool's outcome is kept and
        nothing is paused.
    :param fair_cost: what a call costs its tenant's fair share: ``"calls"`` (1) or a cost
        dimension such as ``"tokens"`` (at least 1).
    :param clock: the clock of ``call.deadline`` (use the chain's; default the loop's).
    :param max_wait: longest wait in the global queue without a deadline (``None``: none).

    Errors: :class:`CostTooLarge` (a call above a bucket's burst), :class:`DeadlineUnmeetable`
    (the known wait exceeds the deadline), :class:`WaitTimeout` (still queued at the
    deadline), :class:`BackendUnavailable` (Redis down under ``fail_closed``). Cancellation
    at any point of the acquire takes nothing (a grant racing it is given back, its tokens
    refunded); cancellation while running releases at once (pipelined, retried until Redis
    answers).
    """

    __slots__ = ("_actual_cost", "_clock", "_fair_dimension", "_observer_errors", "_plans",
                 "_pools", "_rate_key", "_rates", "_retry_after", "backend", "max_wait",
                 "observer_errors")

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
        fair_cost: str = "calls",
        clock: Clock | Callable[[], float] | None = None,
        max_wait: float | None = None,
    ) -> None:
        if not isinstance(backend, RedisBackend):
            raise ConfigError(f"RedisLimits needs a RedisBackend, got {type(backend).__name__}")
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
        if max_wait is not None and (isinstance(max_wait, bool) or not isinstance(
                max_wait, (int, float)) or not (max_wait > 0 and math.isfinite(max_wait))):
            raise ConfigError(f"RedisLimits max_wait must be a number > 0, got {max_wait!r}")
        if not isinstance(fair_cost, str) or not fair_cost:
            raise ConfigError(f"RedisLimits fair_cost must be 'calls' or a cost name, "
                              f"got {fair_cost!r}")
        self._fair_dimension = None if fair_cost == "calls" else fair_cost
        self.max_wait = max_wait
        self._actual_cost = actual_cost
        self._retry_after = retry_after
        self._clock = as_clock(clock)
        self._observer_errors = LogDigest(stdlib_emit(_log), clock=self._clock)
        #: calls whose ``actual_cost`` raised or returned junk (their estimate stood)
        self.observer_errors = 0
        # (tool, tenant, rate key) -> the plan and its buckets: built once per shape
        self._plans: dict[tuple[str, str, str], tuple[Plan, list[GlobalPool],
                                                       list[GlobalBucket], list[str]]] = {}

    # -- what a call needs -------------------------------------------------------------
    def spec(self, call: ToolCall) -> tuple[list[GlobalPool], list[GlobalBucket], list[str]]:
        """The ``(pools, buckets, pauses)`` of ``call`` in Redis terms."""
        _, pools, shapes, pauses = self._shape(call)
        buckets = [GlobalBucket(b.key, b.rate, b.burst, self._amount(b, call)) for b in shapes]
        return pools, buckets, pauses

    def _shape(self, call: ToolCall) -> tuple[Plan, list[GlobalPool], list[GlobalBucket],
                                              list[str]]:
        key = self._rate_key(call) if self._rates else ""
        found = self._plans.get((call.tool, call.tenant, key))
        if found is not None and found[0].generation == self.backend.plan_generation:
            return found
        pools: list[GlobalPool] = []
        for name, default, overrides, key_of in self._pools:
            group = key_of(call)
            cap = overrides.get(group, default)
            if cap is not None:
                pools.append(GlobalPool(f"{name}:{group}", cap))
        buckets: list[GlobalBucket] = []
        pauses: list[str] = []
        if self._rates:
            pauses.append(f"rate:{key}")
            for r in self._rates:
                name = f"rate:{key}:{float(r.limit)!r}/{float(r.per)!r}s:{r.dimension}"
                buckets.append(GlobalBucket(name, r.rate, r.capacity, 0.0))
        if len(self._plans) >= 4096:
            self._plans.clear()
        found = self._plans[(call.tool, call.tenant, key)] = (
            self.backend.plan(pools, buckets, pauses), pools, buckets, pauses)
        return found

    @staticmethod
    def _amount(bucket: GlobalBucket, call: ToolCall) -> float:
        return 1.0 if bucket.dimension == "requests" else float(
            call.cost.get(bucket.dimension, 0.0))

    def _fair_cost(self, call: ToolCall) -> float:
        if self._fair_dimension is None:
            return 1.0
        return max(1.0, float(call.cost.get(self._fair_dimension, 1.0)))

    # -- acquiring ---------------------------------------------------------------------
    async def acquire(self, call: ToolCall) -> RedisLease:
        """Wait for every global permit of ``call`` (see the class docstring for errors)."""
        plan, pools, shapes, _ = self._shape(call)
        amounts: list[str] = []
        cost = call.cost
        for b, dimension in zip(shapes, plan.dimensions, strict=True):
            amount = 1.0 if dimension == "requests" else float(cost.get(dimension, 0.0))
            if not (math.isfinite(amount) and amount >= 0):
                raise ConfigError(f"redis: the cost {b.dimension!r} of a call to {call.tool!r} "
                                  f"must be a finite number >= 0, got {amount!r}")
            if amount > b.burst:
                raise CostTooLarge(f"redis: a call needs {amount:g} of {b.key!r}, which can "
                                   f"never grant more than {b.burst:g} at once",
                                   key=b.key, limiter="redis")
            amounts.append(repr(amount))
        timeout = None if call.deadline is None else call.deadline - self._clock.now()
        if self.max_wait is not None:
            timeout = self.max_wait if timeout is None else min(timeout, self.max_wait)
        backend = self.backend
        try:
            return await backend.acquire_plan(plan, amounts, priority=call.priority,
                                              tenant=call.tenant, cost=self._fair_cost(call),
                                              timeout=timeout)
        except BackendUnavailable:
            if backend.policy == "fail_open":
                return backend.degraded_lease()
            if backend.policy == "degrade":
                buckets = [GlobalBucket(b.key, b.rate, b.burst, float(a))
                           for b, a in zip(shapes, amounts, strict=True)]
                return await backend.acquire_share(
                    pools, buckets, priority=call.priority, tenant=call.tenant,
                    cost=self._fair_cost(call), timeout=timeout, info=call)
            backend.count_failed_closed()
            raise

    # -- the interceptor ---------------------------------------------------------------
    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        lease = await self.acquire(call)
        try:
            result = await proceed(call)
        except Exception as error:
            lease.release_nowait()
            await self._maybe_pause(call, error)
            raise
        except BaseException:
            lease.release_nowait()  # cancelled while running
            raise
        actual: dict[str, float] | None = None
        try:
            if self._actual_cost is not None:
                actual = self._measured(call, result)
        finally:
            # pipelined: written before any later command of this process, so a charge
            # is in place before this process's next call is admitted; the permits come
            # back (and wake the next waiter anywhere) as soon as it lands
            lease.release_nowait(actual)
        await self._maybe_pause(call, result)
        return result

    def _measured(self, call: ToolCall, result: Any) -> dict[str, float] | None:
        """``actual_cost(result)``, checked; a callback that raises or returns junk is
        reported (aggregated WARNING on ``stageflow_plus.redis``), never allowed to replace
        the tool's result: the estimate stays charged, as in the in-memory chain."""
        assert self._actual_cost is not None
        try:
            measured = self._actual_cost(result)
            if measured is None:
                return None
            checked = check_cost(measured, "RedisLimits actual_cost", f" of tool {call.tool!r}")
            for name, value in checked.items():
                if value > MAX_ACTUAL_COST:
                    raise ConfigError(f"RedisLimits actual_cost[{name!r}] of tool {call.tool!r}"
                                      f" = {value!r} is above {MAX_ACTUAL_COST:g}")
            return {name: float(value) for name, value in checked.items()} or None
        except Exception as error:
            self._observer_failed(call, "actual_cost", error,
                                  "the estimate stood", "its estimated cost stays charged")
            return None

    def _observer_failed(self, call: ToolCall, hook: str, error: Exception, stood: str,
                         consequence: str) -> None:
        """Report a callback of ours that raised or returned junk (aggregated WARNING on
        ``stageflow_plus.redis``, its type only unless it is our own ``ConfigError``)."""
        detail = str(error) if isinstance(error, ConfigError) else type(error).__name__
        self._observer_errors.note(
            logging.WARNING, f"{call.tool} ({hook})", type(error).__name__,
            what=f"failed {hook} calls ({stood})",
            event="tool_call.observer_failed",
            first=lambda: ("tool_call.observer_failed",
                           f"tool_call.observer_failed: RedisLimits {hook} raised for "
                           f"tool {call.tool!r} (call {call.call_id}, run {call.run_id}): "
                           f"{detail}; the tool's outcome is kept, {consequence}",
                           {"tool": call.tool}))
        self.observer_errors += 1

    async def _maybe_pause(self, call: ToolCall, outcome: Any) -> None:
        if self._retry_after is None or not self._rates:
            return
        try:
            seconds = self._retry_after(outcome)
        except Exception as error:  # a callback's bug never costs the caller the outcome
            self._observer_failed(call, "retry_after", error, "nothing paused",
                                  "nothing is paused")
            return
        if seconds is not None:
            await self.pause(self._rate_key(call), seconds)

    async def pause(self, key: str, seconds: float) -> None:
        """Pause rate key ``key`` for every process (a provider's ``Retry-After``), at most
        the backend's ``max_pause``. Never raises for Redis trouble (logged, counted)."""
        try:
            await self.backend.pause(f"rate:{key}", seconds)
        except BackendUnavailable:
            pass
        except ValueError as error:  # a provider's nonsense never costs the caller its result
            _log.warning("ignored a provider pause for %r: %s", key, error)

    async def aclose(self) -> None:
        """Wait until the releases on their way are in Redis."""
        await self.backend.drain()

    def statistics(self) -> RedisStatistics:
        """The backend's counters (this process)."""
        return self.backend.statistics()

    def __repr__(self) -> str:
        caps = ", ".join(f"{n}={d if d is not None else o}" for n, d, o, _ in self._pools
                         if d is not None or o)
        rates = ", ".join(f"{r.limit:g} {r.dimension}/{r.per:g}s" for r in self._rates)
        return f"RedisLimits({caps}{'; ' if caps and rates else ''}{rates})"


def redis_limits(
    backend: RedisBackend,
    *,
    concurrency: int | None = None,
    per_tool: int | Mapping[str, int] | None = None,
    per_tenant: int | Mapping[str, int] | None = None,
    per_run: int | None = None,
    rates: Rate | Sequence[Rate] = (),
    rate_key: str | Callable[[ToolCall], str] = "global",
    fair_cost: str = "calls",
    clock: Clock | Callable[[], float] | None = None,
) -> list[ToolCallInterceptor]:
    """The chain steps for global limits: what stays per process, then :class:`RedisLimits`.

    Per process: a :class:`ConcurrencyLimiter` with only ``per_run`` (a run lives in one
    process; it is always there, uncapped without ``per_run``, so a run's own
    ``_concurrency`` override applies). Global, in Redis: ``concurrency``, ``per_tool``,
    ``per_tenant`` and ``rates``, ordered by the global queue.
    """
    return [
        ConcurrencyLimiter(per_run=per_run),
        RedisLimits(backend, concurrency=concurrency, per_tool=per_tool, per_tenant=per_tenant,
                    rates=rates, rate_key=rate_key, fair_cost=fair_cost, clock=clock),
    ]
