"""Part (d) of the core benchmark (:mod:`stageflow_plus.bench.core`): the registry path.

What a Stageflow user pays per tool call, built the way a stage makes one: a fresh action
(``SimpleAction``) and a context dict per call, executed by an instant tool through

* ``registry`` — a bare Stageflow ``ToolRegistry.execute`` (the baseline);
* ``registry_semaphore`` / ``registry_aiolimiter`` — the same inside ``async with
  asyncio.Semaphore`` / ``aiolimiter.AsyncLimiter``;
* ``registry_limited`` — :class:`~stageflow_plus.stageflow.tools.LimitedToolRegistry` over
  the four-interceptor chain, with its default listeners on (the stdlib
  :class:`~stageflow_plus.interceptors.observe.LoggingListener` and the Stageflow event
  listener), inside a :func:`~stageflow_plus.stageflow.scope.call_scope` block per call
  as a pipeline sets one.

µs per call are medians over repeats that alternate the variants' order; the overheads
subtract the bare registry's time of the same repeat.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiolimiter import AsyncLimiter
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

from ..interceptors import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    TokenBucketRateLimiter,
    ToolCallChain,
)
from ..primitives import Rate
from ..stageflow.scope import call_scope
from ..stageflow.tools import LimitedToolRegistry
from ..testing import SimpleAction
from .core_waiters import median, paired_ratio

__all__ = ["REGISTRY_ROWS", "measure_registry"]

REGISTRY_ROWS: dict[str, str] = {
    "registry": "ToolRegistry.execute",
    "registry_semaphore": "  inside Semaphore",
    "registry_aiolimiter": "  inside aiolimiter",
    "registry_limited": "LimitedToolRegistry.execute",
}
"""Result key → row label, in display order."""

_ACTION = "BENCH_CALL"


class _InstantTool(BaseTool):
    """Answers at once."""

    name = "bench_call"
    description = "answers at once"
    action_type = _ACTION

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        return ToolOutput(success=True, data=None)


Loop = Callable[[int], Awaitable[None]]


def _variants() -> dict[str, Loop]:
    registry = ToolRegistry()
    registry.register(_InstantTool())
    sem = asyncio.Semaphore(1000)
    rate = AsyncLimiter(1e9, 1)
    chain = ToolCallChain([Backpressure(max_queue=10_000), PriorityFairQueue(),
                           TokenBucketRateLimiter(Rate(1e9, burst=1e9)),
                           ConcurrencyLimiter(1000)])
    limited = LimitedToolRegistry(chain, registry)
    ctx = {"pipeline_run_id": "run-1", "org_id": "acme"}

    async def bare(n: int) -> None:
        for i in range(n):
            await registry.execute(SimpleAction(_ACTION, {"i": i}), ctx)

    async def semaphore(n: int) -> None:
        for i in range(n):
            async with sem:
                await registry.execute(SimpleAction(_ACTION, {"i": i}), ctx)

    async def aiolimiter(n: int) -> None:
        for i in range(n):
            async with rate:
                await registry.execute(SimpleAction(_ACTION, {"i": i}), ctx)

    async def chained(n: int) -> None:
        with call_scope(tenant="acme", priority=1):
            for i in range(n):
                await limited.execute(SimpleAction(_ACTION, {"i": i}), ctx)

    return {"registry": bare, "registry_semaphore": semaphore,
            "registry_aiolimiter": aiolimiter, "registry_limited": chained}


async def measure_registry(calls: int, repeats: int) -> dict[str, Any]:
    """µs per call of each variant, overheads over the bare registry, paired ratios."""
    variants = _variants()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up
        await run(min(calls, 500))
    order = list(variants)
    for _ in range(repeats):
        for name in order:
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                await variants[name](calls)
                samples[name].append((time.perf_counter() - start) / calls * 1e6)
            finally:
                gc.enable()
        order.reverse()
    base = samples["registry"]
    overhead = {name: median([v - b for v, b in zip(values, base, strict=True)])
                for name, values in samples.items() if name != "registry"}
    return {
        "calls": calls,
        "us_per_call": {name: median(values) for name, values in samples.items()},
        "overhead_us": overhead,
        "limited_vs_aiolimiter": paired_ratio(samples["registry_limited"],
                                              samples["registry_aiolimiter"]),
        "limited_vs_semaphore": paired_ratio(samples["registry_limited"],
                                             samples["registry_semaphore"]),
    }
