"""Part (c) of the core benchmark (:mod:`stageflow_plus.bench.core`): waiters behind a held
limit of 1 — time per waiter (enqueue + dispatch) at a small and a large N, and the memory each
waiter holds beyond its task (tracemalloc; the baseline is the same N tasks awaiting one plain
future).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from ..interceptors import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    ToolCall,
    ToolCallChain,
)
from ..primitives import ConcurrencyPool, Limiter
from .listeners import SilentListener

__all__ = ["measure_waiters", "median", "paired_ratio"]


async def _noop_tool(call: ToolCall) -> None:
    return None


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else math.nan


def paired_ratio(values: Sequence[float], base: Sequence[float]) -> float:
    """Median of per-repeat ratios (each pair measured back to back)."""
    return median([v / b for v, b in zip(values, base, strict=True) if b > 0])


class _Blocker:
    """One way to hold a limit of 1 and queue N waiters behind it."""

    def __init__(self, kind: str, n: int) -> None:
        self.kind = kind
        self.held: Any = None
        self.call = ToolCall("bench", tenant="a")
        self.sem = asyncio.Semaphore(1)
        self.limiter = Limiter(name="bench")
        self.demands = [(ConcurrencyPool("bench", 1), 1.0)]
        self.chain = ToolCallChain(
            [Backpressure(max_queue=n + 10), PriorityFairQueue(), ConcurrencyLimiter(1)],
            listener=SilentListener(),
        )
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hold(self) -> None:
        if self.kind == "semaphore":
            await self.sem.acquire()
        elif self.kind == "limiter":
            self.held = await self.limiter.acquire(self.demands)
        elif self.kind == "chain":
            assert self.chain.gate is not None
            self.held = await self.chain.gate.acquire(self.call)

    def unhold(self) -> None:
        if self.kind == "semaphore":
            self.sem.release()
        elif self.kind == "future":
            self.future.set_result(None)
        else:
            self.held.release()

    async def waiter(self) -> None:
        if self.kind == "semaphore":
            async with self.sem:
                pass
        elif self.kind == "limiter":
            lease = await self.limiter.acquire(self.demands)
            lease.release()
        elif self.kind == "chain":
            await self.chain.run(self.call, _noop_tool)
        else:
            await self.future


async def _queue_and_release(kind: str, n: int) -> tuple[float, float]:
    """Seconds to create and enqueue ``n`` waiters, and to release them all through."""
    blocker = _Blocker(kind, n)
    await blocker.hold()
    loop = asyncio.get_running_loop()
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        tasks = [loop.create_task(blocker.waiter()) for _ in range(n)]
        await asyncio.sleep(0)  # every task runs once and blocks
        t1 = time.perf_counter()
        blocker.unhold()
        await asyncio.gather(*tasks)
        t2 = time.perf_counter()
    finally:
        gc.enable()
    return t1 - t0, t2 - t1


async def _bytes_per_waiter(kind: str, n: int) -> float:
    """Traced bytes held by ``n`` tasks blocked on ``kind``, per task."""
    blocker = _Blocker(kind, n)
    await blocker.hold()
    loop = asyncio.get_running_loop()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tasks = [loop.create_task(blocker.waiter()) for _ in range(n)]
        await asyncio.sleep(0)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    blocker.unhold()
    await asyncio.gather(*tasks)
    return (after - before) / n


async def measure_waiters(
    small: int, large: int, repeats: int, *, memory_n: int
) -> dict[str, Any]:
    """Time per waiter at N = small and large, growth, and bytes per waiter per kind."""
    kinds = ("semaphore", "limiter", "chain")
    out: dict[str, Any] = {"n_small": small, "n_large": large}
    for kind in kinds:
        await _queue_and_release(kind, min(small, 1000))  # warm-up
    per: dict[str, dict[int, list[tuple[float, float]]]] = {
        k: {small: [], large: []} for k in kinds}
    for _ in range(repeats):
        for n in (small, large):
            for kind in kinds:
                per[kind][n].append(await _queue_and_release(kind, n))
    mem_n = memory_n
    mem_reps = 1 if repeats < 5 else 3  # traced bytes barely vary run to run
    base = median([await _bytes_per_waiter("future", mem_n) for _ in range(mem_reps)])
    for kind in kinds:
        entry: dict[str, Any] = {}
        totals: dict[int, list[float]] = {}
        for n in (small, large):
            runs = per[kind][n]
            totals[n] = [(a + b) / n * 1e6 for a, b in runs]
            entry[f"n{n}"] = {
                "us_per_waiter": median(totals[n]),
                "enqueue_us": median([a / n * 1e6 for a, _ in runs]),
                "dispatch_us": median([b / n * 1e6 for _, b in runs]),
            }
        entry["growth"] = paired_ratio(totals[large], totals[small])
        mem = median([await _bytes_per_waiter(kind, mem_n) for _ in range(mem_reps)])
        entry["bytes_per_waiter"] = mem - base
        out[kind] = entry
    out["memory_n"] = mem_n
    out["future_task_bytes"] = base
    return out
