"""Memory against the number of distinct keys: does per-run / per-tenant state go away?

Every pipeline run has a new run id, and a service may see any number of tenants, so the
limiters' per-key state (concurrency pools, rate buckets, fair-share records, per-run queue
counts, deadline entries) must be released once idle, or a long-running service grows
without bound. :func:`measure_distinct_keys` runs ``calls`` tool calls with ``distinct``
different run ids and tenants through a full chain (backpressure, priority-fair queue,
per-tenant rate buckets, global / per-run / per-tenant concurrency, per-run limits) on
virtual time, and reports the growth of the process's RSS and allocated blocks, and the
size of every per-key table at the end.

Reused by the reliability benchmark; run it alone with ``python -m
stageflow_plus.bench.memory [--calls N] [--distinct K]``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..interceptors import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from ..primitives import Rate, Rejected
from ..testing import run_virtual
from .listeners import SilentListener

__all__ = [
    "MemoryGrowth",
    "full_chain",
    "main",
    "measure_distinct_keys",
    "rss_mib",
    "state_sizes",
]


@dataclass(frozen=True, slots=True)
class MemoryGrowth:
    """What ``calls`` calls over ``distinct`` run ids and tenants left behind.

    :ivar calls: calls run (after the warm-up).
    :ivar distinct: distinct run ids (and as many tenants).
    :ivar rss_mib: resident set size after minus before, MiB (after a full collection).
    :ivar blocks: ``sys.getallocatedblocks()`` after minus before.
    :ivar state: size of each per-key table of the chain at the end (see
        :func:`state_sizes`).
    :ivar admitted: calls admitted (the rest were refused with a typed error).
    :ivar seconds: wall-clock seconds of the measured run.
    """

    calls: int
    distinct: int
    rss_mib: float
    blocks: int
    state: tuple[tuple[str, int], ...]
    admitted: int
    seconds: float




def rss_mib() -> float:
    """This process's resident set size in MiB (Linux ``/proc``; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def full_chain() -> ToolCallChain:
    """The chain :func:`measure_distinct_keys` drives: every kind of per-key state."""
    return ToolCallChain(
        [
            Backpressure(max_queue=10_000),
            PriorityFairQueue(aging_interval=1.0, fair_cost="tokens"),
            TokenBucketRateLimiter(
                [Rate(60, per=60), Rate(60_000, per=60, dimension="tokens")], key="tenant"
            ),
            ConcurrencyLimiter(16, per_run=2, per_tenant=4),
        ],
        listener=SilentListener(),
    )


def state_sizes(chain: ToolCallChain) -> dict[str, int]:
    """The size of every per-key table of ``chain``'s limiter interceptors."""
    sizes: dict[str, int] = {}
    gate = chain.gate
    if gate is None:
        return sizes
    for part in gate.parts:
        if isinstance(part, ConcurrencyLimiter):
            sizes["pools"] = sum(len(group.pools) for group in part._groups)
        elif isinstance(part, TokenBucketRateLimiter):
            sizes["buckets"] = len(part._buckets)
            sizes["run_buckets"] = len(part._run_buckets)
    ordering: Any = gate.limiter.ordering
    for name in ("_tenants", "_idle", "_levels"):
        table = getattr(ordering, name, None)
        if isinstance(table, Mapping):
            sizes[f"fair{name}"] = len(table)
    sizes["run_waiting"] = len(gate._run_waiting)
    sizes["deadlines"] = len(gate.limiter._deadlines)
    sizes["waiting"] = len(gate.limiter)
    return sizes


async def _drive(chain: ToolCallChain, calls: int, distinct: int, wave: int, start: int) -> int:
    admitted = 0

    async def tool(call: ToolCall) -> None:
        await asyncio.sleep(0.01)  # virtual time: holds its permits, buckets refill

    async def one(i: int) -> None:
        nonlocal admitted
        key = (start + i) % distinct
        limits: dict[str, Any] = {}
        if key % 2:  # per-run limits: a run bucket, a per-run queue bound
            limits = {"rates": {"requests": 50.0}, "max_queue": 8, "concurrency": 1}
        call = ToolCall(
            "llm",
            run_id=f"run-{start + i}" if distinct >= calls else f"run-{key}",
            tenant=f"tenant-{key}",
            priority=i % 3,
            cost={"tokens": 100.0},
            deadline=chain.now() + 30.0,
            limits=limits,
        )
        try:
            await chain.run(call, tool)
            admitted += 1
        except Rejected:
            pass

    for first in range(0, calls, wave):
        await asyncio.gather(*(one(i) for i in range(first, min(calls, first + wave))))
    return admitted


def measure_distinct_keys(
    calls: int = 200_000,
    distinct: int | None = None,
    *,
    wave: int = 64,
    warmup: int = 2_000,
) -> MemoryGrowth:
    """Run ``calls`` calls over ``distinct`` run ids and tenants (default: all distinct)
    through :func:`full_chain` on virtual time, ``wave`` at a time (more than the global
    cap, so calls queue); return the growth of RSS and allocated blocks and the per-key
    table sizes. ``warmup`` calls run first (caches, code paths) and are not counted."""
    if calls < 1 or wave < 1 or warmup < 0:
        raise ValueError("calls and wave must be >= 1, warmup >= 0")
    keys = calls if distinct is None else distinct
    if keys < 1:
        raise ValueError("distinct must be >= 1")

    async def main() -> MemoryGrowth:
        chain = full_chain()
        await _drive(chain, warmup, max(keys, 1), wave, start=calls)
        gc.collect()
        rss, blocks = rss_mib(), sys.getallocatedblocks()
        began = time.perf_counter()
        admitted = await _drive(chain, calls, keys, wave, start=0)
        seconds = time.perf_counter() - began
        gc.collect()
        return MemoryGrowth(
            calls=calls,
            distinct=keys,
            rss_mib=rss_mib() - rss,
            blocks=sys.getallocatedblocks() - blocks,
            state=tuple(sorted(state_sizes(chain).items())),
            admitted=admitted,
            seconds=seconds,
        )

    return run_virtual(main())


def main(argv: list[str] | None = None) -> int:
    """``python -m stageflow_plus.bench.memory``: print one measurement as JSON."""
    parser = argparse.ArgumentParser(prog="python -m stageflow_plus.bench.memory")
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--distinct", type=int, default=None,
                        help="distinct run ids / tenants (default: every call its own)")
    args = parser.parse_args(argv)
    result = measure_distinct_keys(args.calls, args.distinct)
    print(json.dumps(asdict(result), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
