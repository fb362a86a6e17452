"""The strategies compared, behind one interface: ``bind(registry)`` then ``call(spec, record)``.

Every strategy executes the same Stageflow tool (``PROVIDER_CALL``) through a Stageflow
``ToolRegistry``; they differ only in what stands around ``registry.execute``:

==================  ==========================================================================
``none``            nothing: every call goes out at once; a 429 is a failed call
``semaphore``       ``asyncio.Semaphore(max_concurrent)``; a 429 is a failed call
``semaphore+retry`` the semaphore plus exponential backoff on 429, keeping the slot while
                    sleeping (what penguiflow does)
``aiolimiter``      ``aiolimiter.AsyncLimiter`` for requests and one for tokens (the
                    provider's rates, no concurrency cap); a 429 is a failed call
``stageflow-plus``  :class:`~stageflow_plus.stageflow.tools.LimitedToolRegistry` over a
                    :class:`~stageflow_plus.interceptors.chain.ToolCallChain` of
                    ``Backpressure`` · ``PriorityFairQueue`` · ``TokenBucketRateLimiter``
                    (RPM + TPM, ``Retry-After`` pauses the key) · ``ConcurrencyLimiter``, with
                    a ``RateLimitHeaderLearner``; settings from :func:`limits_from_provider`
==================  ==========================================================================

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import abc
import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from aiolimiter import AsyncLimiter
from stageflow.tools import ToolRegistry

from ..interceptors.backpressure import Backpressure
from ..interceptors.chain import ToolCallChain
from ..interceptors.concurrency import ConcurrencyLimiter
from ..interceptors.priority import PriorityFairQueue
from ..interceptors.provider_feedback import RateLimitHeaderLearner, limits_from_provider
from ..interceptors.rate import TokenBucketRateLimiter
from ..primitives.errors import Rejected
from ..stageflow.scope import call_scope
from ..stageflow.tools import LimitedToolRegistry
from ..testing import SimpleAction
from .metrics import CallRecord
from .provider import ProviderLimits
from .tools import PROVIDER_ACTION
from .workloads import CallSpec, Workload

__all__ = [
    "STRATEGIES",
    "AioLimiterStrategy",
    "NoLimitStrategy",
    "RetryStrategy",
    "SemaphoreStrategy",
    "StageflowPlusStrategy",
    "Strategy",
]


class Strategy(abc.ABC):
    """One way of calling the provider. A fresh instance per run (its limiters start fresh).

    :param limits: the provider's published limits (what a user would configure from).
    :param workload: the workload about to run (tenants, weights, mean call size).
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, limits: ProviderLimits, workload: Workload) -> None:
        self.limits = limits
        self.workload = workload
        self.registry: ToolRegistry | None = None

    def bind(self, registry: ToolRegistry) -> None:
        """Use ``registry`` (holding the ``PROVIDER_CALL`` tool) for the run's calls."""
        self.registry = registry

    @abc.abstractmethod
    async def call(self, spec: CallSpec, record: CallRecord) -> None:
        """Make ``spec``'s call, filling ``record`` (sent, done, status, attempts, 429s)."""

    def extra(self) -> dict[str, Any]:
        """Strategy-specific facts for the report (settings, limiter statistics)."""
        return {}

    async def _attempt(self, registry: ToolRegistry, spec: CallSpec, record: CallRecord) -> Any:
        """One request through ``registry``; records it; returns the ``ToolOutput``."""
        action = SimpleAction(PROVIDER_ACTION, {
            "tokens": spec.tokens, "tenant": spec.tenant, "priority": spec.priority,
        })
        output = await registry.execute(action, {"org_id": spec.tenant})
        data = (output.data or {}) if output is not None else {}
        record.attempts += 1
        record.sent = data.get("sent_at", record.sent)
        record.done = data.get("answered_at", asyncio.get_running_loop().time())
        status = data.get("status")
        if status == 429:
            record.got_429 += 1
            record.status = "http_429"
        elif output is not None and output.success:
            record.status = "ok"
        else:
            record.status = "error"
        return output


def _registry(strategy: Strategy) -> ToolRegistry:
    if strategy.registry is None:
        raise RuntimeError(f"{type(strategy).__name__}.bind(registry) was not called")
    return strategy.registry


class NoLimitStrategy(Strategy):
    """Every call goes out at once."""

    name = "none"
    description = "no limiter"

    async def call(self, spec: CallSpec, record: CallRecord) -> None:
        await self._attempt(_registry(self), spec, record)


class SemaphoreStrategy(Strategy):
    """``asyncio.Semaphore(N)``: a global cap on calls in flight, nothing else."""

    name = "semaphore"
    description = "asyncio.Semaphore(max_concurrent)"

    def __init__(self, limits: ProviderLimits, workload: Workload) -> None:
        super().__init__(limits, workload)
        self.semaphore = asyncio.Semaphore(limits.max_concurrent)

    async def call(self, spec: CallSpec, record: CallRecord) -> None:
        async with self.semaphore:
            await self._attempt(_registry(self), spec, record)


class RetryStrategy(SemaphoreStrategy):
    """The semaphore plus exponential backoff with jitter on 429, slot held while sleeping.

    Backoff ``min(cap, base·2^k)·U(0.5, 1.5)`` with ``base = 50 ms``, ``cap = 2 s``, at most
    ``max_attempts`` requests.
    """

    name = "semaphore+retry"
    description = "Semaphore + exponential backoff on 429 (slot held during backoff)"
    base = 0.05
    cap = 2.0
    max_attempts = 10

    def __init__(self, limits: ProviderLimits, workload: Workload) -> None:
        super().__init__(limits, workload)
        self._random = random.Random(7)

    async def call(self, spec: CallSpec, record: CallRecord) -> None:
        async with self.semaphore:
            for attempt in range(self.max_attempts):
                await self._attempt(_registry(self), spec, record)
                if record.status != "http_429" or attempt == self.max_attempts - 1:
                    return
                delay = min(self.cap, self.base * 2**attempt) * self._random.uniform(0.5, 1.5)
                await asyncio.sleep(delay)


class AioLimiterStrategy(Strategy):
    """``aiolimiter.AsyncLimiter`` for requests and one for tokens, at the provider's rates.

    Each limiter holds ``burst_s`` seconds of its rate (``AsyncLimiter(rate·burst_s,
    burst_s)``), like the provider's buckets. No concurrency cap: aiolimiter has none.
    """

    name = "aiolimiter"
    description = "aiolimiter.AsyncLimiter for RPM and TPM"

    def __init__(self, limits: ProviderLimits, workload: Workload) -> None:
        super().__init__(limits, workload)
        self.requests = AsyncLimiter(limits.request_burst, limits.burst_s)
        self.tokens = AsyncLimiter(limits.token_burst, limits.burst_s)

    async def call(self, spec: CallSpec, record: CallRecord) -> None:
        await self.requests.acquire(1)
        await self.tokens.acquire(spec.tokens)
        await self._attempt(_registry(self), spec, record)


def _tokens_of(tool: str, payload: Mapping[str, Any]) -> Mapping[str, float]:
    return {"tokens": float(payload.get("tokens", 0))}


class StageflowPlusStrategy(Strategy):
    """stageflow-plus, configured from the provider's published limits.

    ``limits_from_provider(..., safety=SAFETY)`` gives RPM/TPM rates and a concurrency cap;
    the queue is bounded at ``MAX_QUEUE_S`` seconds of service, shedding the least urgent
    waiter; priorities age by ``AGING_INTERVAL`` per level. A 429 (none expected) is retried
    through the chain, which paused the key for everybody first.

    Tuning: keep the aging interval above the queue's drain time (``MAX_QUEUE_S``). Under
    sustained overload the waits of the levels that share service settle at
    ``w_p + p·τ ≈ const``; if the bounded queue can hold more than ``τ`` seconds of work for a
    level, that level ages past the one above it in steady state and the top priority's
    wait grows towards ``queue drain time − τ`` (with ``τ = 2 s`` and 3 s of queue the top
    priority's p99 was 23 % of the lowest's; with ``τ = 5 s`` and 1.5 s, a few per cent).
    """

    name = "stageflow-plus"
    description = "ToolCallChain: Backpressure, PriorityFairQueue, RPM+TPM buckets, concurrency"
    SAFETY = 0.97
    AGING_INTERVAL = 5.0
    MAX_QUEUE_S = 6.0
    max_attempts = 4

    def __init__(self, limits: ProviderLimits, workload: Workload) -> None:
        super().__init__(limits, workload)
        self.settings = limits_from_provider(
            rpm=limits.rpm, tpm=limits.tpm, max_concurrent=limits.max_concurrent,
            latency_s=limits.latency_ms / 1000.0, safety=self.SAFETY,
            mean_tokens=workload.mean_tokens, burst_s=limits.burst_s,
        )
        self.max_queue = max(1, round(self.MAX_QUEUE_S * self.settings.calls_per_second))
        self.rate = TokenBucketRateLimiter(self.settings.rates, key="global")
        self.learner = RateLimitHeaderLearner(self.rate, safety=self.SAFETY,
                                              burst_s=limits.burst_s, pause_on_empty=False)
        self.chain = ToolCallChain([
            Backpressure(max_queue=self.max_queue, shedding="evict_lowest_priority"),
            PriorityFairQueue(aging_interval=self.AGING_INTERVAL,
                              weights=workload.weights or None),
            self.rate,
            ConcurrencyLimiter(self.settings.concurrency),
            self.learner,
        ], listener=_Quiet(), name="bench")
        self.limited: LimitedToolRegistry | None = None

    def bind(self, registry: ToolRegistry) -> None:
        super().bind(registry)
        self.limited = LimitedToolRegistry(self.chain, registry, cost_of=_tokens_of)

    async def call(self, spec: CallSpec, record: CallRecord) -> None:
        limited = self.limited
        if limited is None:
            raise RuntimeError("StageflowPlusStrategy.bind(registry) was not called")
        with call_scope(tenant=spec.tenant, priority=spec.priority):
            for _ in range(self.max_attempts):
                try:
                    await self._attempt(limited, spec, record)
                except Rejected:
                    record.status = "shed"
                    record.done = asyncio.get_running_loop().time()
                    return
                if record.status != "http_429":
                    return

    def extra(self) -> dict[str, Any]:
        stats = self.chain.statistics()
        return {
            "concurrency": self.settings.concurrency,
            "rates": [f"{r.limit:g} {r.dimension}/{r.per:g}s burst {r.capacity:g}"
                      for r in self.settings.rates],
            "max_queue": self.max_queue,
            "aging_interval_s": self.AGING_INTERVAL,
            "header_updates": self.learner.updates,
            "rejected": dict(stats.rejected) if stats is not None else {},
        }


class _Quiet:
    """A limiter listener that drops events (the benchmark measures, it does not log).

    Like the default ``LoggingListener`` (whose per-call events are DEBUG), it asks for no
    event of a call admitted without waiting (``immediate_events = False``).
    """

    immediate_events = False

    def on_queued(self, info: Any, depth: int) -> None:
        """Ignored."""

    def on_admitted(self, info: Any, wait: float) -> None:
        """Ignored."""

    def on_rejected(self, info: Any, error: Rejected) -> None:
        """Ignored."""

    def on_released(self, info: Any, held: float) -> None:
        """Ignored."""


STRATEGIES: dict[str, Callable[[ProviderLimits, Workload], Strategy]] = {
    cls.name: cls
    for cls in (NoLimitStrategy, SemaphoreStrategy, RetryStrategy, AioLimiterStrategy,
                StageflowPlusStrategy)
}
"""Strategy name → factory, in report order."""
