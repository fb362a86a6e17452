"""The reliability benchmark: long uptimes, many keys, many waiters, Redis faults.

``stageflow-plus bench --reliability [--quick] [--json PATH]`` runs four parts and reports
each target as ``{"measured": x, "met": bool}`` under ``targets``:

* **steady** — ``calls`` (1 000 000) tool calls through the full chain (backpressure,
  priority-fair queue, RPM+TPM buckets, global / per-run / per-tenant concurrency, per-run
  overrides) over a fixed set of runs and tenants, 256 callers against a cap of 64, so calls
  queue. RSS and allocated blocks (``sys.getallocatedblocks``) are read at ten checkpoints;
  *flat* means no growth between the first checkpoint (after warm-up) and the last.
* **distinct** — the same with every call of a new run id and a new tenant (a service sees
  a new run id per pipeline run): memory bounded, every per-key table bounded.
* **loop lag** — 50 000 callers queue behind a cap of 64, drain, and are cancelled at once,
  beside ``asyncio.Semaphore`` in the same process
  (:mod:`~stageflow_plus.bench.loop_lag`): drain time, the longest loop stall, the p99 lag,
  mass-cancellation time.
* **redis faults** — a holder process SIGKILLed, the server restarted, stalled, unreachable
  at start, under ``fail_closed``, ``fail_open`` and ``degrade``
  (:mod:`~stageflow_plus.bench.redis_faults`): lost calls, seconds above the cap, leases
  left. Needs ``redis-server`` (skipped with a note, never silently, when absent).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import gc
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping
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
from .listeners import SilentListener
from .memory import rss_mib, state_sizes

__all__ = ["DEFAULT_SIZES", "QUICK_SIZES", "format_reliability_table", "run_reliability"]

DEFAULT_SIZES: Mapping[str, int] = {"calls": 1_000_000, "callers": 256, "waiters": 50_000,
                                    "lag_repeats": 3}
QUICK_SIZES: Mapping[str, int] = {"calls": 20_000, "callers": 256, "waiters": 5_000,
                                  "lag_repeats": 1}
CHECKPOINTS = 10

# What "flat" and "bounded" mean, stated once (bytes of RSS are read in 4 KiB pages, and
# the allocator keeps freed arenas for reuse: a little noise is not growth)
FLAT_RSS_MIB = 2.0
FLAT_BLOCKS = 20_000
BOUNDED_RSS_MIB = 16.0
BOUNDED_BLOCKS = 100_000
BOUNDED_TABLE = 5_000
LAG_RATIO = 1.5




def _chain() -> ToolCallChain:
    return ToolCallChain(
        [
            Backpressure(max_queue=100_000),
            PriorityFairQueue(aging_interval=1.0, fair_cost="tokens"),
            # rates far above what the run reaches: buckets are created, charged and
            # released per tenant, but nobody waits on them (this is not a rate test)
            TokenBucketRateLimiter(
                [Rate.per_second(1e6), Rate.per_second(1e9, dimension="tokens")],
                key="tenant",
            ),
            ConcurrencyLimiter(64, per_run=2, per_tenant=8),
        ],
        listener=SilentListener(),
    )


async def _calls(
    chain: ToolCallChain,
    calls: int,
    callers: int,
    key_of: Callable[[int], tuple[str, str]],
    on_checkpoint: Callable[[int], None],
) -> dict[str, int]:
    """``calls`` calls from ``callers`` closed-loop callers; ``on_checkpoint(done)`` after
    every ``calls / CHECKPOINTS`` calls (called from the caller that completes them)."""
    counts = {"admitted": 0, "refused": 0}
    step = max(1, calls // CHECKPOINTS)
    issued = 0

    async def tool(call: ToolCall) -> None:
        await asyncio.sleep(0)  # hold the permits across one loop turn

    async def caller() -> None:
        nonlocal issued
        while issued < calls:
            index = issued
            issued += 1
            run_id, tenant = key_of(index)
            call = ToolCall(
                "llm", run_id=run_id, tenant=tenant, priority=index % 4,
                cost={"tokens": 100.0},
                limits={"concurrency": 1, "max_queue": 64} if index % 2 else {},
            )
            try:
                await chain.run(call, tool)
                counts["admitted"] += 1
            except Rejected:
                counts["refused"] += 1
            done = counts["admitted"] + counts["refused"]
            if done % step == 0:
                on_checkpoint(done)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return counts


def _memory_run(calls: int, callers: int, distinct: bool) -> dict[str, Any]:
    """One memory run; ``distinct``: every call a new run id and tenant."""
    runs, tenants = 200, 20

    def key_of(index: int) -> tuple[str, str]:
        if distinct:
            return f"run-{index}", f"tenant-{index}"
        return f"run-{index % runs}", f"tenant-{index % tenants}"

    async def main() -> dict[str, Any]:
        chain = _chain()
        warm = max(1_000, calls // 50)
        await _calls(chain, warm, callers, lambda i: key_of(calls + i), lambda done: None)
        gc.collect()
        rss0, blocks0 = rss_mib(), sys.getallocatedblocks()
        series: list[dict[str, float]] = []

        def checkpoint(done: int) -> None:
            series.append({"calls": done, "rss_mib": rss_mib() - rss0,
                           "blocks": sys.getallocatedblocks() - blocks0})

        began = time.perf_counter()
        counts = await _calls(chain, calls, callers, key_of, checkpoint)
        seconds = time.perf_counter() - began
        gc.collect()
        end = {"calls": calls, "rss_mib": rss_mib() - rss0,
               "blocks": sys.getallocatedblocks() - blocks0}
        first = series[0] if series else end
        sizes = state_sizes(chain)
        stats = chain.statistics()
        return {
            "calls": calls, "callers": callers, "distinct_keys": calls if distinct else runs,
            **counts, "seconds": round(seconds, 2),
            "us_per_call": round(seconds / calls * 1e6, 2),
            "rss_mib": round(end["rss_mib"], 3), "blocks": int(end["blocks"]),
            "growth_after_first_checkpoint": {
                "rss_mib": round(end["rss_mib"] - first["rss_mib"], 3),
                "blocks": int(end["blocks"] - first["blocks"]),
            },
            "checkpoints": series,
            "tables": sizes,
            "in_flight_after": stats.in_flight if stats is not None else 0,
        }

    return asyncio.run(main())


def _lag(waiters: int, repeats: int) -> dict[str, Any]:
    from .loop_lag import run_loop_lag

    return run_loop_lag(waiters=waiters, repeats=repeats)


def _faults(quick: bool) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        return {"skipped": "redis-server is not installed (apt-get install redis-server)"}
    from .redis_faults import run_redis_faults

    return run_redis_faults(quick=quick)


def _target(measured: float, met: bool) -> dict[str, Any]:
    return {"measured": measured, "met": bool(met)}


def _targets(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every target of the parts that ran (see the module constants for the bounds)."""
    targets: dict[str, dict[str, Any]] = {}
    steady, distinct = result.get("steady"), result.get("distinct")
    if steady is not None:
        grow = steady["growth_after_first_checkpoint"]
        targets["steady_rss_flat_mib"] = _target(grow["rss_mib"],
                                                 grow["rss_mib"] <= FLAT_RSS_MIB)
        targets["steady_blocks_flat"] = _target(grow["blocks"], grow["blocks"] <= FLAT_BLOCKS)
    if distinct is not None:
        targets["distinct_rss_bounded_mib"] = _target(
            distinct["rss_mib"], distinct["rss_mib"] <= BOUNDED_RSS_MIB)
        targets["distinct_blocks_bounded"] = _target(
            distinct["blocks"], distinct["blocks"] <= BOUNDED_BLOCKS)
        largest = max(distinct["tables"].values(), default=0)
        targets["distinct_largest_table"] = _target(largest, largest <= BOUNDED_TABLE)
    runs = [run for run in (steady, distinct) if run is not None]
    if runs:
        leaked = sum(run["in_flight_after"] for run in runs)
        lost = sum(run["calls"] - run["admitted"] - run["refused"] for run in runs)
        targets["memory_runs_lost_calls"] = _target(lost, lost == 0)
        targets["memory_runs_leaked_permits"] = _target(leaked, leaked == 0)
    lag = result.get("loop_lag")
    if lag is not None:
        for name in ("drain", "stall", "cancel", "cancel_stall"):
            value = lag["ratios"][name]
            targets[f"loop_{name}_vs_semaphore"] = _target(
                round(value, 3), math.isfinite(value) and value <= LAG_RATIO)
    faults = result.get("redis_faults")
    if faults is not None and "targets" in faults:
        for name, value in faults["targets"].items():
            targets[f"redis_{name}"] = value
    return targets


def run_reliability(*, quick: bool = False, parts: tuple[str, ...] = (
        "steady", "distinct", "loop_lag", "redis_faults")) -> dict[str, Any]:
    """Run the reliability benchmark; see the module docstring. ``quick``: small sizes;
    ``parts``: a subset of the four parts (targets are reported for those that ran)."""
    from .. import _accel

    unknown = sorted(set(parts) - {"steady", "distinct", "loop_lag", "redis_faults"})
    if unknown:
        raise ValueError(f"unknown reliability part(s) {unknown}")

    sizes = QUICK_SIZES if quick else DEFAULT_SIZES
    result: dict[str, Any] = {"core": str(_accel.status()), "quick": quick, "sizes": dict(sizes)}
    started = time.monotonic()
    if "steady" in parts:
        result["steady"] = _memory_run(sizes["calls"], sizes["callers"], distinct=False)
    if "distinct" in parts:
        result["distinct"] = _memory_run(sizes["calls"], sizes["callers"], distinct=True)
    if "loop_lag" in parts:
        result["loop_lag"] = _lag(sizes["waiters"], sizes["lag_repeats"])
    if "redis_faults" in parts:
        result["redis_faults"] = _faults(quick)
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["targets"] = _targets(result)
    return result


def format_reliability_table(result: Mapping[str, Any]) -> str:
    """The result for people: one block per part, then the targets."""
    lines = [f"stageflow-plus reliability ({result['core']})"]
    for name in ("steady", "distinct"):
        run = result.get(name)
        if run is None:
            continue
        grow = run["growth_after_first_checkpoint"]
        lines.append(
            f"  {name:<9} {run['calls']:>9,} calls, {run['distinct_keys']:>9,} run ids: "
            f"RSS {run['rss_mib']:+.2f} MiB ({grow['rss_mib']:+.2f} after the first "
            f"checkpoint), blocks {run['blocks']:+,} ({grow['blocks']:+,}), largest table "
            f"{max(run['tables'].values(), default=0):,}, {run['us_per_call']:.1f} µs/call")
    lag = result.get("loop_lag")
    if lag is not None:
        lines.append(f"  loop lag, {lag['waiters']:,} waiters behind a cap of {lag['cap']}:")
        lines.append(f"    {'':<10}{'drain s':>9}{'stall ms':>10}{'p99 ms':>8}{'cancel s':>10}"
                     f"{'stall ms':>10}")
        for who in ("semaphore", "chain"):
            row = lag[who]
            lines.append(f"    {who:<10}{row['drain_s']:>9.2f}{row['drain_lag_max_ms']:>10.0f}"
                         f"{row['drain_lag_p99_ms']:>8.1f}{row['cancel_s']:>10.2f}"
                         f"{row['cancel_lag_max_ms']:>10.0f}")
    faults = result.get("redis_faults")
    if faults is not None:
        if "skipped" in faults:
            lines.append(f"  redis faults: skipped ({faults['skipped']})")
        else:
            from .redis_faults import format_faults_table

            lines += ["  " + line for line in format_faults_table(faults).splitlines()]
    for name, target in result.get("targets", {}).items():
        mark = "met" if target["met"] else "MISSED"
        lines.append(f"  [{mark:>6}] {name} = {target['measured']}")
    return "\n".join(lines)
