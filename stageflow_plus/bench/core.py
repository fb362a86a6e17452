"""Core micro/macro benchmark: what the limiter costs against asyncio's own primitives.

Every ratio is against a baseline measured in the *same* process, interleaved with it repeat
by repeat (alternating the order), and every figure is a **median over repeats** (the
machines are shared; ±35 % run to run is normal). Every chain call builds a fresh
:class:`ToolCall` through the public constructor, as a user's code does:

* ``uncontended`` — µs per call of a bare ``await tool(call)``, ``async with
  asyncio.Semaphore``, ``async with aiolimiter.AsyncLimiter``, the full four-interceptor
  :class:`ToolCallChain` (and the same chain reusing one call), each limiter interceptor
  alone, and a raw :meth:`Limiter.acquire` + ``release``. The chains keep their default
  listener (the stdlib ``LoggingListener``: nothing is formatted unless DEBUG is on).
* ``contended`` — N tasks (10 000) through a limit of 100, each yielding twice while holding
  (three times the repeats of the other parts: its runs are short and the noisiest):
  ``asyncio.Semaphore(100)`` versus a chain of ``ConcurrencyLimiter(100)`` +
  ``PriorityFairQueue`` (random priorities 0-3, 4 tenants) + ``Backpressure``. Tasks are
  created the same way for both (``loop.create_task`` of one coroutine per call).
* ``waiters`` — :mod:`~stageflow_plus.bench.core_waiters`: time and memory per waiter.
* ``registry`` — :mod:`~stageflow_plus.bench.core_registry`: ``LimitedToolRegistry.execute``
  against Stageflow's ``ToolRegistry.execute`` bare and inside a semaphore / aiolimiter.
* ``loop_lag`` — :mod:`~stageflow_plus.bench.loop_lag`: 50 000 waiters behind a cap of 64,
  drain time, the longest loop stall and mass cancellation beside ``asyncio.Semaphore``.

The queueing parts use :class:`~stageflow_plus.bench.listeners.SilentListener` except
``loop_lag``, which keeps the default listener. Timing goals live here, never in tests. Run
``stageflow-plus bench --core [--quick] [--json PATH]``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiolimiter import AsyncLimiter

from .. import _accel
from ..interceptors import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from ..primitives import ConcurrencyPool, Limiter, Rate
from .core_registry import measure_registry
from .core_waiters import measure_waiters, median, paired_ratio
from .listeners import SilentListener
from .loop_lag import measure_loop_lag
from .report import write_json
from .table import TARGETS, evaluate_targets, format_core_table

__all__ = ["DEFAULT_SIZES", "QUICK_SIZES", "TARGETS", "format_core_table", "main",
           "run_core_bench"]

DEFAULT_SIZES: Mapping[str, int] = {"calls": 20_000, "tasks": 10_000, "limit": 100,
                                    "waiters_small": 10_000, "waiters_large": 100_000,
                                    "memory_n": 20_000, "registry_calls": 10_000,
                                    "lag_waiters": 50_000, "lag_repeats": 5}
QUICK_SIZES: Mapping[str, int] = {"calls": 2_000, "tasks": 2_000, "limit": 100,
                                  "waiters_small": 2_000, "waiters_large": 20_000,
                                  "memory_n": 5_000, "registry_calls": 2_000,
                                  "lag_waiters": 10_000, "lag_repeats": 2}

Tool = Callable[[ToolCall], Awaitable[Any]]


async def _noop_tool(call: ToolCall) -> None:
    return None


async def _yielding_tool(call: ToolCall) -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


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


def _uncontended_variants() -> dict[str, Callable[[int], Awaitable[None]]]:
    sem = asyncio.Semaphore(1000)
    rate = AsyncLimiter(1e9, 1)
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
    shared = ToolCall("bench", tenant="a")

    async def bare(n: int) -> None:
        for _ in range(n):
            await tool(shared)

    async def semaphore(n: int) -> None:
        for _ in range(n):
            async with sem:
                await tool(shared)

    async def aiolimiter(n: int) -> None:
        for _ in range(n):
            async with rate:
                await tool(shared)

    def chain_loop(chain: ToolCallChain) -> Callable[[int], Awaitable[None]]:
        async def run(n: int) -> None:
            for _ in range(n):  # a fresh call each time, as a user's code makes it
                await chain.run(ToolCall("bench", tenant="a"), tool)
        return run

    async def chain_reuse(n: int) -> None:
        for _ in range(n):
            await full.run(shared, tool)

    async def raw_limiter(n: int) -> None:
        for _ in range(n):
            lease = await limiter.acquire(demands)
            lease.release()

    variants = {"bare": bare, "semaphore": semaphore, "aiolimiter": aiolimiter,
                "chain": chain_loop(full), "chain_reuse": chain_reuse}
    variants.update({name: chain_loop(chain) for name, chain in alone.items()})
    variants["limiter_acquire_release"] = raw_limiter
    return variants


async def _uncontended(calls: int, repeats: int) -> dict[str, Any]:
    variants = _uncontended_variants()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for loop in variants.values():  # warm-up: caches, pools, buckets
        await loop(min(calls, 500))
    order = list(variants)
    for _ in range(repeats):
        for name in order:
            with _Timer() as timer:
                await variants[name](calls)
            samples[name].append(timer.elapsed / calls * 1e6)
        order.reverse()  # no variant always runs right after the same other one
    us = {name: median(values) for name, values in samples.items()}
    return {
        "calls": calls,
        "us_per_call": us,
        "chain_vs_aiolimiter": paired_ratio(samples["chain"], samples["aiolimiter"]),
        "chain_vs_semaphore": paired_ratio(samples["chain"], samples["semaphore"]),
        "chain_vs_bare": paired_ratio(samples["chain"], samples["bare"]),
        "limiter_vs_semaphore": paired_ratio(samples["limiter_acquire_release"],
                                             samples["semaphore"]),
    }


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
    who = [(rng.choice(tenants), rng.randint(0, 3)) for _ in range(tasks)]
    tool = _yielding_tool
    shared = ToolCall("bench", tenant="t0")

    def semaphore_round(k: int) -> list[Coro]:
        sem = asyncio.Semaphore(limit)

        async def one() -> None:
            async with sem:
                await tool(shared)
        return [one() for _ in who[:k]]

    def chain_round(k: int) -> list[Coro]:
        chain = ToolCallChain(
            [Backpressure(max_queue=max(10_000, tasks)), PriorityFairQueue(),
             ConcurrencyLimiter(limit)],
            listener=SilentListener(),
        )

        async def one(tenant: str, priority: int) -> None:  # the call built in the task
            await chain.run(ToolCall("bench", tenant=tenant, priority=priority), tool)
        return [one(tenant, priority) for tenant, priority in who[:k]]

    def bare_round(k: int) -> list[Coro]:
        async def one() -> None:
            await tool(shared)
        return [one() for _ in who[:k]]

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
        "us_per_task": {name: median(values) for name, values in samples.items()},
        "chain_vs_semaphore": paired_ratio(samples["chain"], samples["semaphore"]),
    }


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
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    result["uncontended"] = await _uncontended(sizes["calls"], repeats)
    seconds["uncontended"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # (b)'s runs are short (~0.2 s) and the noisiest on a shared machine: 3x the repeats
    result["contended"] = await _contended(sizes["tasks"], sizes["limit"], 3 * repeats)
    seconds["contended"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result["waiters"] = await measure_waiters(sizes["waiters_small"], sizes["waiters_large"],
                                              repeats, memory_n=sizes["memory_n"])
    seconds["waiters"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result["registry"] = await measure_registry(sizes["registry_calls"], repeats)
    seconds["registry"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result["loop_lag"] = await measure_loop_lag(
        waiters=sizes["lag_waiters"], repeats=min(repeats, sizes["lag_repeats"]))
    seconds["loop_lag"] = time.perf_counter() - t0
    result["section_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return result


def run_core_bench(
    *,
    quick: bool = False,
    repeats: int | None = None,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Run the five parts in a fresh event loop and return a JSON-able result.

    :param quick: smaller sizes and 3 repeats (finishes in seconds).
    :param repeats: timed repeats per figure (default 7, quick 3); medians are reported.
    :param sizes: override any of ``calls``, ``tasks``, ``limit``, ``waiters_small``,
        ``waiters_large``, ``memory_n``, ``registry_calls``, ``lag_waiters``,
        ``lag_repeats`` (e.g. tiny sizes in tests).
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
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
