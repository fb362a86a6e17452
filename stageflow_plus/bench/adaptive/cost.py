"""What adaptation costs per call: the policy's bookkeeping, the drop check, the whole hook.

Three figures, µs per call, each the median of repeats, measured in one process against a
baseline run interleaved with it (the machines are noisy):

* ``sample`` — :meth:`AdaptiveLimit.sample` inside a window (running sums only): the
  bookkeeping the controller adds per call;
* ``is_drop`` — :func:`~stageflow_plus.interceptors.drops.default_is_drop` on a successful
  Stageflow ``ToolOutput`` (the common case);
* ``chain`` — an uncontended call through ``ConcurrencyLimiter(per_tool=...)`` with
  :class:`AdaptiveConcurrency` minus the same chain without it: sample, drop check, key
  lookup, clock read and the gate's observer hook together.

Memory: what 20 000 more calls leave allocated (``tracemalloc``, after 5 000 calls of warm-up
that fill the limiter's own bounded statistics): the state does not grow with calls.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from typing import Any

from stageflow.tools.base import ToolOutput

from ... import _accel
from ...interceptors import ConcurrencyLimiter, ToolCall, ToolCallChain
from ...interceptors.adaptive import AdaptiveConcurrency
from ...interceptors.drops import default_is_drop
from ...primitives.adaptive import AdaptiveLimit, AdaptiveSettings
from ..listeners import SilentListener

__all__ = ["measure_cost"]

_RESULT = ToolOutput(success=True, data={"status": 200})


async def _tool(call: ToolCall) -> Any:
    return _RESULT


def _sample_cost(n: int) -> float:
    policy = AdaptiveLimit(AdaptiveSettings(window=1e9, max_window=1e10), 100, 0.0)
    sample = policy.sample
    t0 = time.perf_counter()
    for _ in range(n):
        sample(1.0, 0.5, 50, False)
    return (time.perf_counter() - t0) / n


def _loop_cost(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        pass
    return (time.perf_counter() - t0) / n


def _drop_cost(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        default_is_drop(_RESULT)
    return (time.perf_counter() - t0) / n


async def _chain_cost(adaptive: bool, n: int) -> float:
    steps: list[Any] = [ConcurrencyLimiter(per_tool=1_000)]
    if adaptive:
        steps.append(AdaptiveConcurrency("tool", settings=AdaptiveSettings(max_limit=1_000)))
    chain = ToolCallChain(steps, listener=SilentListener())
    call = ToolCall(tool="t")
    run = chain.run
    t0 = time.perf_counter()
    for _ in range(n):
        await run(call, _tool)
    return (time.perf_counter() - t0) / n


async def _retained(calls: int) -> int:
    steps = [ConcurrencyLimiter(per_tool=1_000),
             AdaptiveConcurrency("tool", settings=AdaptiveSettings(max_limit=1_000))]
    chain = ToolCallChain(steps, listener=SilentListener())
    call = ToolCall(tool="t")
    for _ in range(5_000):  # (past the limiter's own bounded statistics, 2 048 entries)
        await chain.run(call, _tool)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(calls):
        await chain.run(call, _tool)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename")
               if "stageflow_plus" in str(s.traceback))


def measure_cost(*, quick: bool = False) -> dict[str, Any]:
    """The per-call costs (µs, medians) and retained bytes; see the module docstring."""
    n, repeats = (20_000, 5) if quick else (100_000, 7)
    samples, drops, chains = [], [], []
    for _ in range(repeats):
        base = _loop_cost(n)
        samples.append(_sample_cost(n) - base)
        drops.append(_drop_cost(n) - base)
        without = asyncio.run(_chain_cost(False, n // 10))
        with_ = asyncio.run(_chain_cost(True, n // 10))
        chains.append(with_ - without)
    return {
        "core": str(_accel.status()),
        "sample_us": round(statistics.median(samples) * 1e6, 3),
        "is_drop_us": round(statistics.median(drops) * 1e6, 3),
        "chain_delta_us": round(statistics.median(chains) * 1e6, 3),
        "retained_bytes_after_20000_calls": asyncio.run(_retained(20_000)),
    }


if __name__ == "__main__":
    print(measure_cost())
