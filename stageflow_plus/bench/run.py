"""Run the strategies side by side: ``run_bench`` (JSON, table, plots) and ``run_demo``.

Each (workload, strategy) pair gets a fresh loopback :class:`ProviderSimulator`, a fresh
``httpx.AsyncClient`` and a fresh strategy; every burst of the workload runs as one Stageflow
pipeline run whose :class:`~stageflow_plus.bench.tools.FanOutStage` makes the burst's calls
through the strategy. Strategies run one after another in one process, on the same
seeded workload. A run stops at the workload's hard time limit: unfinished calls are
cancelled and counted as ``timeout``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from stageflow import Pipeline, StageKind
from stageflow.stages.context import PipelineContext
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

from .. import _accel
from .demo import demo_workloads, judge_targets
from .metrics import CallRecord, aging_bound, summarize
from .provider import ProviderLimits, ProviderSimulator
from .report import evaluate_targets, format_table, headline, write_json
from .strategies import STRATEGIES, StageflowPlusStrategy, Strategy
from .tools import PROVIDER_ACTION, FanOutStage, current_burst, make_client, provider_registry
from .workloads import CallSpec, Workload, bench_limits, fairness, overload

__all__ = ["Progress", "measure_overhead", "run_bench", "run_demo", "run_strategy"]

RunRecords = dict[str, dict[str, list[CallRecord]]]


class Progress:
    """A one-line progress bar on stderr (no dependencies); silent when disabled."""

    def __init__(self, total: int, *, enabled: bool, width: int = 30) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.width = width
        self.label = ""
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more calls finished."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.1 or self.done >= self.total:
            self._last = now
            self.draw()

    def draw(self) -> None:
        """Redraw the bar."""
        if not self.enabled:
            return
        filled = round(self.width * min(1.0, self.done / self.total))
        bar = "#" * filled + "-" * (self.width - filled)
        percent = 100.0 * self.done / self.total
        sys.stderr.write(f"\r[{bar}] {percent:5.1f}% {self.label:<34}")
        sys.stderr.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            self.draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


async def run_strategy(
    strategy: Strategy,
    workload: Workload,
    limits: ProviderLimits,
    *,
    seed: int = 0,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[CallRecord], dict[str, Any]]:
    """Run ``workload`` through ``strategy`` against a fresh provider.

    Returns the per-call records (times in seconds since the start) and the provider's
    server-side counters.
    """
    loop = asyncio.get_running_loop()
    records = [CallRecord(spec, made=math.nan) for spec in workload.calls]
    finished = 0
    all_done = asyncio.Event()
    call_tasks: set[asyncio.Task[Any]] = set()

    async def one(spec: CallSpec) -> None:
        nonlocal finished
        record = records[spec.index]
        record.made = loop.time()
        task = asyncio.current_task()
        assert task is not None
        call_tasks.add(task)
        try:
            await strategy.call(spec, record)
        except asyncio.CancelledError:
            record.status = "timeout"
            raise
        except Exception:
            record.status = "error"
            record.done = loop.time()
        finally:
            call_tasks.discard(task)
            finished += 1
            if on_done is not None:
                on_done()
            if finished == len(records):
                all_done.set()

    def caller(spec: CallSpec) -> Callable[[], Any]:
        return lambda: one(spec)

    async with ProviderSimulator(limits, seed=seed) as provider, make_client(
        max(limits.max_concurrent, 1024), timeout=workload.time_limit
    ) as client:
        strategy.bind(provider_registry(client, provider.url))
        graph = Pipeline().with_stage("fan_out", FanOutStage(), StageKind.WORK).build()
        timeout_ms = int(workload.time_limit * 1000) + 5000
        runs: list[asyncio.Task[Any]] = []
        start = loop.time()

        async def drive() -> None:
            burst_var = current_burst()
            for at, specs in workload.bursts:
                delay = start + at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                token = burst_var.set([caller(s) for s in specs])
                try:
                    ctx = PipelineContext(data={"_timeout_ms": timeout_ms})
                    runs.append(asyncio.ensure_future(graph.run(ctx)))
                finally:
                    burst_var.reset(token)

        driver = asyncio.ensure_future(drive())
        if not records:
            all_done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), workload.time_limit)
        driver.cancel()
        for task in list(call_tasks):
            task.cancel()
        await asyncio.gather(driver, *runs, return_exceptions=True)
        stats = provider.stats()
    for record in records:
        for name in ("made", "sent", "done"):
            value = getattr(record, name)
            if value is not None and not math.isnan(value):
                setattr(record, name, value - start)
        if math.isnan(record.made):
            record.made = record.spec.at
    return records, stats


class _NoopTool(BaseTool):
    """``PROVIDER_CALL`` answered in-process at once (for measuring overhead)."""

    name = "provider_call"
    description = "answers at once"
    action_type = PROVIDER_ACTION

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        now = asyncio.get_running_loop().time()
        return ToolOutput(success=True, data={"status": 200, "sent_at": now, "answered_at": now})


async def measure_overhead(
    workload: Workload, *, calls: int = 3000, repeats: int = 7,
    detail: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Per-call cost (µs) each strategy adds around an instant tool, never blocking.

    Limits are set far above the load so only the bookkeeping is measured. Every strategy
    runs ``calls`` calls per repeat, the strategies interleaved within a repeat in an order
    that alternates, with the cyclic GC off while timing; a strategy's overhead is the
    median over repeats of its time minus the ``none`` strategy's (a bare
    ``ToolRegistry.execute``) *in the same repeat*, so load that comes and goes on a shared
    machine shifts both sides of each difference alike.

    :param detail: if given, filled with ``us_per_call`` (median per strategy), ``repeats``,
        ``calls`` and ``overhead_spread_us`` (min and max of the per-repeat differences).
    """
    huge = ProviderLimits(rpm=1e12, tpm=1e15, max_concurrent=1_000_000, latency_ms=1.0)
    specs = workload.calls[: min(len(workload.calls), 200)] or (CallSpec(0, 0, 0, 1, "t", 0),)
    strategies: dict[str, Strategy] = {}
    for name, factory in STRATEGIES.items():
        strategy = factory(huge, workload)
        registry = ToolRegistry()
        registry.register(_NoopTool())
        strategy.bind(registry)
        strategies[name] = strategy

    async def run(strategy: Strategy, n: int) -> float:
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for i in range(n):
                spec = specs[i % len(specs)]
                await strategy.call(spec, CallRecord(spec, made=0.0))
            return (time.perf_counter() - t0) / n * 1e6
        finally:
            gc.enable()

    for strategy in strategies.values():  # warm-up: buckets, pools, caches
        await run(strategy, min(calls, 200))
    samples: dict[str, list[float]] = {name: [] for name in strategies}
    order = list(strategies)
    for _ in range(max(1, repeats)):
        for name in order:
            samples[name].append(await run(strategies[name], calls))
        order.reverse()
    base = samples["none"]
    diffs = {name: [v - b for v, b in zip(values, base, strict=True)]
             for name, values in samples.items()}
    if detail is not None:
        detail.update({
            "calls": calls, "repeats": max(1, repeats),
            "us_per_call": {k: round(statistics.median(v), 2) for k, v in samples.items()},
            "overhead_spread_us": {k: [round(min(v), 2), round(max(v), 2)]
                                   for k, v in diffs.items()},
        })
    return {name: round(max(0.0, statistics.median(d)), 2) for name, d in diffs.items()}


def _workloads(quick: bool, limits: ProviderLimits) -> list[Workload]:
    if quick:
        return [overload(limits, duration=2.5), fairness(limits, duration=1.5)]
    return [overload(limits, duration=12.0), fairness(limits, duration=8.0)]


async def _bench(
    workloads: Sequence[Workload], limits: ProviderLimits, names: Sequence[str], *,
    progress: bool,
) -> tuple[dict[str, Any], RunRecords]:
    bar = Progress(sum(len(w.calls) for w in workloads) * len(names), enabled=progress)
    result: dict[str, Any] = {"provider": asdict(limits), "workloads": {}}
    records: RunRecords = {}
    for workload in workloads:
        entry: dict[str, Any] = {
            "description": workload.description,
            "calls": len(workload.calls),
            "time_limit_s": round(workload.time_limit, 2),
            "mean_tokens": round(workload.mean_tokens, 1),
            "strategies": {},
        }
        records[workload.name] = {}
        for name in names:
            strategy = STRATEGIES[name](limits, workload)
            bar.label = f"{workload.name} / {name}"
            bar.draw()
            recs, stats = await run_strategy(strategy, workload, limits, on_done=bar.advance)
            bound = None
            if isinstance(strategy, StageflowPlusStrategy) and len(workload.priorities) > 1:
                bound = aging_bound(strategy.AGING_INTERVAL, workload.priorities[-1],
                                    workload.priorities[0], strategy.max_queue,
                                    strategy.settings.calls_per_second)
            summary = summarize(recs, workload, limits, provider_stats=stats, bound_s=bound)
            summary["settings"] = strategy.extra()
            entry["strategies"][name] = summary
            records[workload.name][name] = recs
        result["workloads"][workload.name] = entry
    bar.label = "overhead"
    bar.draw()
    detail: dict[str, Any] = {}
    overhead = await measure_overhead(workloads[0], calls=500 if len(workloads[0].calls) < 300
                                      else 3000, detail=detail)
    bar.close()
    result["overhead_us_by_strategy"] = overhead
    result["overhead_detail"] = detail
    result["overhead_us_per_call"] = overhead.get(StageflowPlusStrategy.name)
    result["strategies"] = headline(result)
    result["targets"] = evaluate_targets(result)
    return result, records


def _quiet_logs() -> None:
    for name in ("stageflow", "stageflow_plus", "httpx", "aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_bench(
    *,
    quick: bool = False,
    json_path: str | None = None,
    plot_dir: str | None = None,
    progress: bool = True,
    strategies: Sequence[str] | None = None,
    llm: bool = True,
) -> dict[str, Any]:
    """Every strategy on every workload; prints the table, writes JSON and plots if asked.

    :param quick: smaller workloads (the whole run well under a minute).
    :param json_path: write the result here as JSON.
    :param plot_dir: write PNG plots into this directory (needs matplotlib).
    :param progress: draw a progress bar on stderr.
    :param strategies: a subset of :data:`~stageflow_plus.bench.strategies.STRATEGIES`.
    :param llm: also run the LLM scenarios with the real clients
        (:mod:`~stageflow_plus.bench.llm_bench`; their targets join ``targets``).
    :returns: the result: ``strategies`` (headline per strategy), ``workloads`` (every
        metric per workload and strategy), ``overhead_us_per_call``, ``targets``.
    """
    _quiet_logs()
    limits = bench_limits()
    names = list(strategies) if strategies is not None else list(STRATEGIES)
    result, records = asyncio.run(
        _bench(_workloads(quick, limits), limits, names, progress=progress)
    )
    if llm:
        from .llm_bench import run_llm_bench

        bar = Progress(1, enabled=progress)
        result["llm"] = run_llm_bench(quick=quick, progress=_label(bar))
        bar.close()
        result["targets"].update(result["llm"]["targets"])
    result["quick"] = quick
    result["core"] = str(_accel.status())
    print(format_table(result))
    from .adaptive import run_adaptive_bench  # the adaptive section: its own provider and runs

    result["adaptive"] = run_adaptive_bench(quick=quick, plot_dir=plot_dir)
    result["targets"].update(result["adaptive"].get("targets", {}))
    if json_path is not None:
        write_json(result, json_path)
    if plot_dir is not None:
        from .plots import write_plots

        for path in write_plots(records, result, limits, plot_dir):
            print(f"wrote {path}", file=sys.stderr)
    return result


def _label(bar: Progress) -> Callable[[str], None]:
    def show(name: str) -> None:
        bar.label = f"llm / {name}"
        bar.draw()

    return show


def run_demo(*, progress: bool = True) -> dict[str, Any]:
    """A short side-by-side comparison (about 55 s) that prints the table.

    One 2x-overload workload (fan-out bursts, priorities 0-3, large and small calls) and a
    10:1 two-tenant one, 3.5 s and 3 s of arrivals, through every strategy: long enough that
    every printed target is measurable; one a run cannot measure says so
    (:func:`~stageflow_plus.bench.demo.judge_targets`) instead of "MISSED".
    """
    _quiet_logs()
    limits = bench_limits()
    workloads = demo_workloads(limits)
    result, _ = asyncio.run(_bench(workloads, limits, list(STRATEGIES), progress=progress))
    judge_targets(result, workloads)
    result["demo"] = True
    result["core"] = str(_accel.status())
    print(format_table(result))
    return result
