"""Event-loop responsiveness with many waiters: drain, stall and mass cancellation.

A service that queues tens of thousands of tool calls must keep its event loop responsive:
health checks, heartbeats and every other coroutine share the loop with the limiter. This
benchmark queues ``waiters`` callers behind a concurrency cap of ``cap`` (each admitted call
holds its permit for ``hold_s`` seconds), then measures, beside ``asyncio.Semaphore`` in the
same process:

* **drain** — wall time until every caller has run;
* **lag** — how late a 1 ms ``call_later`` ticker fires while the queue fills, drains and is
  cancelled (``p99`` and ``max`` over every tick: the longest stall of the loop);
* **cancel** — with every caller queued, the time from cancelling them all at once until the
  last one has finished unwinding (permits back, queue empty).

Callers are created the same way for both (one ``loop.create_task`` per caller); a chain
caller builds its :class:`~stageflow_plus.interceptors.call.ToolCall` inside its task, as a
user's code does, and the chain keeps its default listener. Medians over ``repeats`` runs
that alternate the order of the variants.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ..interceptors import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    ToolCall,
    ToolCallChain,
)

__all__ = ["LagProbe", "measure_loop_lag", "run_loop_lag"]

Caller = Callable[[int], Coroutine[Any, Any, None]]


class LagProbe:
    """Measures event-loop lag: a ``call_later(interval)`` chain records how late each tick
    fires (seconds past its due time). Start with :meth:`start`, stop with :meth:`stop`."""

    __slots__ = ("_due", "_handle", "_interval", "_loop", "lags")

    def __init__(self, interval: float = 0.001) -> None:
        self._interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.lags: list[float] = []

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self._interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        self.lags.append(max(0.0, self._loop.time() - self._due))
        self._arm()

    def stop(self) -> dict[str, float]:
        """Stop ticking; return ``{"p99_ms", "max_ms", "ticks"}``."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        lags = sorted(self.lags) or [0.0]
        p99 = lags[min(len(lags) - 1, math.ceil(0.99 * len(lags)) - 1)]
        return {"p99_ms": p99 * 1000, "max_ms": lags[-1] * 1000, "ticks": float(len(self.lags))}


def _semaphore_caller(cap: int, hold_s: float) -> Caller:
    sem = asyncio.Semaphore(cap)

    async def caller(index: int) -> None:
        async with sem:
            await asyncio.sleep(hold_s)

    return caller


def _chain_caller(cap: int, hold_s: float, seed: int) -> Caller:
    chain = ToolCallChain([
        Backpressure(),
        PriorityFairQueue(aging_interval=1.0),
        ConcurrencyLimiter(cap),
    ])
    rng = random.Random(seed)
    priorities = [rng.randrange(4) for _ in range(1024)]
    tenants = [f"tenant-{i}" for i in range(8)]

    async def hold(call: ToolCall) -> None:
        await asyncio.sleep(hold_s)

    async def caller(index: int) -> None:
        call = ToolCall("lag", priority=priorities[index % 1024], tenant=tenants[index % 8])
        await chain.run(call, hold)

    return caller


async def _drain(make: Callable[[], Caller], waiters: int) -> dict[str, float]:
    caller = make()
    loop = asyncio.get_running_loop()
    gc.collect()
    probe = LagProbe()
    probe.start()
    start = time.perf_counter()
    tasks = [loop.create_task(caller(i)) for i in range(waiters)]
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {"drain_s": elapsed, **{f"drain_lag_{k}": v for k, v in probe.stop().items()}}


async def _cancel(make: Callable[[], Caller], waiters: int) -> dict[str, float]:
    caller = make()
    loop = asyncio.get_running_loop()
    gc.collect()
    tasks = [loop.create_task(caller(i)) for i in range(waiters)]
    await asyncio.sleep(0)  # every caller has started: cap admitted, the rest queued
    await asyncio.sleep(0)
    probe = LagProbe()
    probe.start()
    start = time.perf_counter()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - start
    await asyncio.sleep(0.002)  # let the probe see the loop free again
    return {"cancel_s": elapsed, **{f"cancel_lag_{k}": v for k, v in probe.stop().items()}}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


async def _run(waiters: int, cap: int, hold_s: float, repeats: int) -> dict[str, Any]:
    makers: dict[str, Callable[[], Caller]] = {
        "semaphore": lambda: _semaphore_caller(cap, hold_s),
        "chain": lambda: _chain_caller(cap, hold_s, seed=7),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in makers}
    order = list(makers)
    for _ in range(repeats):
        for name in order:
            figures = await _drain(makers[name], waiters)
            figures.update(await _cancel(makers[name], waiters))
            samples[name].append(figures)
        order.reverse()
    result: dict[str, Any] = {"waiters": waiters, "cap": cap, "hold_ms": hold_s * 1000,
                              "repeats": repeats}
    for name, runs in samples.items():
        result[name] = {key: _median([run[key] for run in runs]) for key in runs[0]}
    base, ours = result["semaphore"], result["chain"]
    result["ratios"] = {
        "drain": _paired(samples, "drain_s"),
        "stall": _ratio(ours["drain_lag_max_ms"], base["drain_lag_max_ms"]),
        "cancel": _paired(samples, "cancel_s"),
        "cancel_stall": _ratio(ours["cancel_lag_max_ms"], base["cancel_lag_max_ms"]),
    }
    return result


def _ratio(value: float, base: float) -> float:
    return value / base if base > 0 else math.inf


def _paired(samples: dict[str, list[dict[str, float]]], key: str) -> float:
    return _median([_ratio(c[key], s[key])
                    for c, s in zip(samples["chain"], samples["semaphore"], strict=True)])


async def measure_loop_lag(
    *, waiters: int = 50_000, cap: int = 64, hold_s: float = 0.001, repeats: int = 3
) -> dict[str, Any]:
    """Run the benchmark in the running event loop; see the module docstring."""
    if waiters < 1 or cap < 1 or repeats < 1 or not hold_s >= 0:
        raise ValueError(f"loop lag needs waiters, cap, repeats >= 1 and hold_s >= 0, got "
                         f"{waiters}, {cap}, {repeats}, {hold_s}")
    return await _run(waiters, cap, hold_s, repeats)


def run_loop_lag(
    *, waiters: int = 50_000, cap: int = 64, hold_s: float = 0.001, repeats: int = 3
) -> dict[str, Any]:
    """Run the benchmark in a fresh event loop; see the module docstring for the figures."""
    return asyncio.run(measure_loop_lag(waiters=waiters, cap=cap, hold_s=hold_s,
                                        repeats=repeats))
