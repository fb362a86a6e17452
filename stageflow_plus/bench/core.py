"""Core micro/macro benchmark: what the limiter costs against asyncio's own primitives.

Three parts, every ratio against a baseline measured in the *same* process, interleaved
with it repeat by repeat, and every figure a **median over repeats** (the machines are
shared; ±35 % run to run is normal):

* ``uncontended`` — µs per call of a bare ``await tool(call)``, ``async with
  asyncio.Semaphore``, the full four-interceptor :class:`ToolCallChain`, each limiter
  interceptor alone, and a raw :meth:`Limiter.acquire` + ``release``.
* ``contended`` — N tasks (10 000) through a limit of 100, each yielding twice while holding
  (three times the repeats of the other parts: its runs are short and the noisiest):
  ``asyncio.Semaphore(100)`` versus a chain of ``ConcurrencyLimiter(100)`` +
  ``PriorityFairQueue`` (random priorities 0-3, 4 tenants) + ``Backpressure``. Tasks are
  created the same way for both (``loop.create_task`` of one coroutine per call).
* ``waiters`` — a limit of 1 held, N waiters queued behind it, then released through: time
  per waiter (enqueue + dispatch) at a small and a large N, and the memory each waiter holds
  beyond its task (tracemalloc; the baseline is the same N tasks awaiting one plain future).

Listeners: the uncontended chains keep the chain's default ``StructlogListener`` (it logs
nothing on an immediate admission); the queueing parts use :class:`SilentListener`, because
the default logs one info event per queued call, which would measure log rendering.

Timing goals live here, never in tests. Run ``python -m stageflow_plus.bench.core [--quick]
[--json PATH]``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import _accel
from ..interceptors import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from ..primitives import ConcurrencyPool, Limiter, Rate, Rejected
from .table import TARGETS, evaluate_targets, format_core_table

__all__ = ["DEFAULT_SIZES", "QUICK_SIZES", "TARGETS", "format_core_table", "main",
           "run_core_bench"]

DEFAULT_SIZES: Mapping[str, int] = {"calls": 20_000, "tasks": 10_000, "limit": 100,
                                    "waiters_small": 10_000, "waiters_large": 100_000,
                                    "memory_n": 20_000}
QUICK_SIZES: Mapping[str, int] = {"calls": 2_000, "tasks": 2_000, "limit": 100,
                                  "waiters_small": 2_000, "waiters_large": 20_000,
                                  "memory_n": 5_000}

Tool = Callable[[ToolCall], Awaitable[Any]]


class SilentListener:
    """Drops limiter events: the benchmark measures the limiter, not log rendering."""

    def on_queued(self, info: Any, depth: int) -> None: ...
    def on_admitted(self, info: Any, wait: float) -> None: ...
    def on_rejected(self, info: Any, error: Rejected) -> None: ...
    def on_released(self, info: Any, held: float) -> None: ...


async def _noop_tool(call: ToolCall) -> None:
    return None


async def _yielding_tool(call: ToolCall) -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


class _Timer:
    """Times a section with the cyclic GC off (re-enabled after, even on error)."""

    def __enter__(self) -> _Timer:
        gc.collect()
        gc.disable()
        self.start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
        gc.enable()


# -- (a) uncontended ---------------------------------------------------------------------
def _four_chain(listener: Any = None) -> ToolCallChain:
    return ToolCallChain(
        [Backpressure(max_queue=10_000), PriorityFairQueue(),
         TokenBucketRateLimiter(Rate(1e9, burst=1e9)), ConcurrencyLimiter(1000)],
        listener=listener,
    )


def _uncontended_variants() -> dict[str, Callable[[ToolCall, int], Awaitable[None]]]:
    sem = asyncio.Semaphore(1000)
    full = _four_chain()
    alone = {
        "backpressure": ToolCallChain([Backpressure(max_queue=10_000)]),
        "priority_fair_queue": ToolCallChain([PriorityFairQueue()]),
        "token_bucket": ToolCallChain([TokenBucketRateLimiter(Rate(1e9, burst=1e9))]),
        "concurrency": ToolCallChain([ConcurrencyLimiter(1000)]),
    }
    limiter = Limiter(name="bench")
    demands = [(ConcurrencyPool("bench", 1000), 1.0)]
    tool = _noop_tool

    async def bare(call: ToolCall, n: int) -> None:
        for _ in range(n):
            await tool(call)

    async def semaphore(call: ToolCall, n: int) -> None:
        for _ in range(n):
            async with sem:
                await tool(call)

    def chain_loop(chain: ToolCallChain) -> Callable[[ToolCall, int], Awaitable[None]]:
        async def run(call: ToolCall, n: int) -> None:
            for _ in range(n):
                await chain.run(call, tool)
        return run

    async def raw_limiter(call: ToolCall, n: int) -> None:
        for _ in range(n):
            lease = await limiter.acquire(demands)
            lease.release()

    variants = {"bare": bare, "semaphore": semaphore, "chain": chain_loop(full)}
    variants.update({name: chain_loop(chain) for name, chain in alone.items()})
    variants["limiter_acquire_release"] = raw_limiter
    return variants


async def _uncontended(calls: int, repeats: int) -> dict[str, Any]:
    variants = _uncontended_variants()
    call = ToolCall("bench", tenant="a")
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for loop in variants.values():  # warm-up: caches, pools, buckets
        await loop(call, min(calls, 500))
    order = list(variants)
    for _ in range(repeats):
        for name in order:
            with _Timer() as timer:
                await variants[name](call, calls)
            samples[name].append(timer.elapsed / calls * 1e6)
        order.reverse()  # no variant always runs right after the same other one
    us = {name: _median(values) for name, values in samples.items()}
    ratio = _paired_ratio(samples["chain"], samples["semaphore"])
    return {
        "calls": calls,
        "us_per_call": us,
        "chain_vs_semaphore": ratio,
        "chain_vs_bare": _paired_ratio(samples["chain"], samples["bare"]),
        "limiter_vs_semaphore": _paired_ratio(samples["limiter_acquire_release"],
                                              samples["semaphore"]),
    }


def _paired_ratio(values: Sequence[float], base: Sequence[float]) -> float:
    """Median of per-repeat ratios (each pair measured back to back)."""
    return _median([v / b for v, b in zip(values, base, strict=True) if b > 0])


# -- (b) contended -----------------------------------------------------------------------
Coro = Coroutine[Any, Any, Any]


async def _run_tasks(coros: Sequence[Coro]) -> float:
    loop = asyncio.get_running_loop()
    with _Timer() as timer:
        tasks = [loop.create_task(c) for c in coros]
        await asyncio.gather(*tasks)
    return timer.elapsed


async def _contended(tasks: int, limit: int, repeats: int, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    tenants = ("t0", "t1", "t2", "t3")
    calls = [ToolCall("bench", tenant=rng.choice(tenants), priority=rng.randint(0, 3))
             for _ in range(tasks)]
    tool = _yielding_tool

    def semaphore_round(k: int) -> list[Coro]:
        sem = asyncio.Semaphore(limit)

        async def one(call: ToolCall) -> None:
            async with sem:
                await tool(call)
        return [one(c) for c in calls[:k]]

    def chain_round(k: int) -> list[Coro]:
        chain = ToolCallChain(
            [Backpressure(max_queue=max(10_000, tasks)), PriorityFairQueue(),
             ConcurrencyLimiter(limit)],
            listener=SilentListener(),
        )
        return [chain.run(c, tool) for c in calls[:k]]

    def bare_round(k: int) -> list[Coro]:
        return [tool(c) for c in calls[:k]]

    rounds = {"bare": bare_round, "semaphore": semaphore_round, "chain": chain_round}
    samples: dict[str, list[float]] = {name: [] for name in rounds}
    for make in rounds.values():  # warm-up
        await _run_tasks(make(min(tasks, 1000)))
    order = list(rounds)
    for _ in range(repeats):
        for name in order:
            coros = rounds[name](tasks)
            samples[name].append(await _run_tasks(coros) / tasks * 1e6)
        order.reverse()  # no variant always runs right after the same other one
    return {
        "tasks": tasks,
        "limit": limit,
        "repeats": repeats,
        "us_per_task": {name: _median(values) for name, values in samples.items()},
        "chain_vs_semaphore": _paired_ratio(samples["chain"], samples["semaphore"]),
    }


# -- (c) waiters -------------------------------------------------------------------------
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


async def _waiters(small: int, large: int, repeats: int, *, memory_n: int) -> dict[str, Any]:
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
    base = _median([await _bytes_per_waiter("future", mem_n) for _ in range(mem_reps)])
    for kind in kinds:
        entry: dict[str, Any] = {}
        totals: dict[int, list[float]] = {}
        for n in (small, large):
            runs = per[kind][n]
            totals[n] = [(a + b) / n * 1e6 for a, b in runs]
            entry[f"n{n}"] = {
                "us_per_waiter": _median(totals[n]),
                "enqueue_us": _median([a / n * 1e6 for a, _ in runs]),
                "dispatch_us": _median([b / n * 1e6 for _, b in runs]),
            }
        entry["growth"] = _paired_ratio(totals[large], totals[small])
        mem = _median([await _bytes_per_waiter(kind, mem_n) for _ in range(mem_reps)])
        entry["bytes_per_waiter"] = mem - base
        out[kind] = entry
    out["memory_n"] = mem_n
    out["future_task_bytes"] = base
    return out


# -- driver ------------------------------------------------------------------------------
def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in load],
        "core": str(_accel.status()),  # compiled (mypyc) or pure Python, and why
        "core_compiled": _accel.status().compiled,
    }


async def _bench(sizes: Mapping[str, int], repeats: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    t0 = time.perf_counter()
    result["uncontended"] = await _uncontended(sizes["calls"], repeats)
    t1 = time.perf_counter()
    # (b)'s runs are short (~0.2 s) and the noisiest on a shared machine: 3x the repeats
    result["contended"] = await _contended(sizes["tasks"], sizes["limit"], 3 * repeats)
    t2 = time.perf_counter()
    result["waiters"] = await _waiters(sizes["waiters_small"], sizes["waiters_large"], repeats,
                                       memory_n=sizes["memory_n"])
    seconds = {"uncontended": t1 - t0, "contended": t2 - t1,
               "waiters": time.perf_counter() - t2}
    result["section_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return result


def run_core_bench(
    *,
    quick: bool = False,
    repeats: int | None = None,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Run the three parts in a fresh event loop and return a JSON-able result.

    :param quick: smaller sizes and 3 repeats (finishes in seconds).
    :param repeats: timed repeats per figure (default 7, quick 3); medians are reported.
    :param sizes: override any of ``calls``, ``tasks``, ``limit``, ``waiters_small``,
        ``waiters_large`` (e.g. tiny sizes in tests).
    """
    chosen = {**(QUICK_SIZES if quick else DEFAULT_SIZES), **(sizes or {})}
    reps = repeats if repeats is not None else (3 if quick else 7)
    if reps < 1:
        raise ValueError(f"repeats must be >= 1, got {reps}")
    started = time.perf_counter()
    result = asyncio.run(_bench(chosen, reps))
    result["targets"] = evaluate_targets(result)
    result["machine"] = _machine()
    result["settings"] = {"quick": quick, "repeats": reps, "sizes": chosen,
                          "seconds": round(time.perf_counter() - started, 2)}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stageflow_plus.bench.core [--quick] [--repeats N] [--json PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m stageflow_plus.bench.core",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = run_core_bench(quick=args.quick, repeats=args.repeats)
    print(format_core_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
