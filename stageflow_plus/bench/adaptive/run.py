"""Run the adaptive workloads against the capacity-modelled provider (``bench --adaptive``).

One provider process (:class:`~stageflow_plus.bench.adaptive.host.ProviderProcess`: a
:class:`~stageflow_plus.bench.provider.ProviderSimulator` answering through a
:class:`~stageflow_plus.bench.capacity.CapacityModel`, real HTTP on 127.0.0.1) serves every
run, with a fresh model per run; the client calls it with a real Stageflow tool
(:class:`CapacityTool`, aiohttp) in a :class:`~stageflow_plus.stageflow.tools.
LimitedToolRegistry`, one task per arrival, every run bounded in calls and time.

Strategies, each the full chain (``Backpressure`` — a queue of 64, 1 s at most, the lowest
priority evicted first —, ``PriorityFairQueue``, a rate limiter whose only job is to pause
the key on a ``Retry-After``, ``ConcurrencyLimiter``): ``adaptive``
(:class:`~stageflow_plus.interceptors.adaptive.AdaptiveConcurrency`), ``fixed_low`` (limit
``L/2``), ``fixed_high`` (``2L``), ``aimd`` and ``vegas`` (the same interceptor with the
rules of :mod:`~stageflow_plus.bench.adaptive.baselines`). Metrics and targets:
:mod:`~stageflow_plus.bench.adaptive.report`.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

from ...interceptors import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    TokenBucketRateLimiter,
    ToolCallChain,
)
from ...interceptors.adaptive import AdaptiveConcurrency, PolicyFactory
from ...primitives import Rate, Rejected
from ...primitives.adaptive import AdaptiveLimit, AdaptiveStatistics
from ...stageflow.scope import call_scope
from ...stageflow.tools import LimitedToolRegistry
from ...testing import SimpleAction
from ..listeners import SilentListener
from .baselines import AimdLimit, VegasLimit
from .host import ProviderProcess
from .workloads import AdaptiveBenchConfig, AdaptiveWorkload, workloads

__all__ = ["OUTCOMES", "PER_WORKLOAD", "STRATEGIES", "CapacityTool", "Run", "build_chain",
           "run_all", "run_workload"]

ACTION = "CAPACITY_CALL"
STRATEGIES = ("adaptive", "fixed_low", "fixed_high", "aimd", "vegas")
OUTCOMES = ("ok", "http_429", "http_503", "timeout", "shed", "error")
_BATCH = 0.002


class CapacityTool(BaseTool):
    """``CAPACITY_CALL``: one ``POST /v1/call`` through a shared aiohttp session.

    The output's ``data``: ``status``, ``sent_at`` / ``answered_at`` (loop time) and, for a
    429/503, ``retry_after`` (so the rate limiter pauses the key and the drop classifier
    sees it). A client timeout propagates as ``asyncio.TimeoutError`` (a drop).
    """

    name = "capacity_call"
    description = "calls the capacity-modelled provider"
    action_type = ACTION

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.endpoint = url.rstrip("/") + "/v1/call"

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        async with self.session.post(self.endpoint, json={"tokens": 1}) as response:
            await response.read()
            status = response.status
            retry_after = response.headers.get("retry-after")
        data: dict[str, Any] = {"status": status, "sent_at": sent_at,
                                "answered_at": loop.time()}
        if status != 200:
            data["retry_after"] = float(retry_after) if retry_after else 1.0
            return ToolOutput(success=False, data=data, error=f"HTTP {status}")
        return ToolOutput(success=True, data=data)




_POLICIES: dict[str, PolicyFactory] = {
    "adaptive": AdaptiveLimit, "aimd": AimdLimit, "vegas": VegasLimit,
}


def build_chain(strategy: str, cfg: AdaptiveBenchConfig) -> tuple[ToolCallChain,
                                                                   AdaptiveConcurrency | None]:
    """The chain of ``strategy`` (see the module docstring) and its adaptive step, if any."""
    start = {"fixed_low": cfg.capacity // 2, "fixed_high": 2 * cfg.capacity}.get(
        strategy, cfg.initial_limit)
    steps: list[Any] = [
        Backpressure(max_queue=cfg.max_queue, max_wait=cfg.max_wait,
                     shedding="evict_lowest_priority", deadline_aware=False),
        PriorityFairQueue(aging_interval=10.0),
        TokenBucketRateLimiter([Rate(1e9, per=1.0)], key="tool"),  # only pauses on 429/503
        ConcurrencyLimiter(per_tool=start),
    ]
    adaptive = None
    if strategy not in ("fixed_low", "fixed_high"):
        adaptive = AdaptiveConcurrency("tool", settings=cfg.settings(), policy=_POLICIES[strategy])
        steps.append(adaptive)
    return ToolCallChain(steps, listener=SilentListener()), adaptive


@dataclass(slots=True)
class Run:
    """What one (workload, strategy) run recorded; times in seconds from the start.

    :ivar calls: per call ``[class, arrived, sent, answered, done, outcome]`` (``nan``
        when a stage never happened; outcome in :data:`OUTCOMES`).
    :ivar timeline: every 50 ms ``(t, limit, provider capacity)``.
    :ivar provider: the model's counters.
    :ivar adaptive: the adaptive step's last statistics (empty for fixed limits).
    """

    calls: list[list[Any]]
    timeline: list[tuple[float, int, int]]
    provider: dict[str, Any]
    adaptive: list[dict[str, Any]]


def _outcome(result: Any) -> str:
    if isinstance(result, ToolOutput):
        status = (result.data or {}).get("status")
        return "ok" if result.success else f"http_{status}" if status in (429, 503) else "error"
    return "error"


async def run_workload(workload: AdaptiveWorkload, strategy: str,
                       cfg: AdaptiveBenchConfig, host: ProviderProcess) -> Run:
    """Run ``workload`` through ``strategy`` against ``host`` (a fresh model); the records."""
    nan = float("nan")
    loop = asyncio.get_running_loop()
    chain, adaptive = build_chain(strategy, cfg)
    fixed = {"fixed_low": cfg.capacity // 2, "fixed_high": 2 * cfg.capacity}.get(strategy, 0)
    arrivals = workload.arrivals(cfg.seed)
    calls: list[list[Any]] = [[c, t, nan, nan, nan, "error"] for t, c in arrivals]
    timeline: list[tuple[float, int, int]] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=cfg.call_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tools = ToolRegistry()
        tools.register(CapacityTool(session, host.url))
        registry = LimitedToolRegistry(chain, tools)
        t0 = loop.time() + 0.05
        await host.load(workload.profile, seed=cfg.seed, at=t0)

        async def one(record: list[Any]) -> None:
            name, priority, _ = workload.classes[record[0]]
            action = SimpleAction(ACTION, {"class": name})
            try:
                with call_scope(priority=priority, tenant=name):
                    result = await registry.execute(action, {})
                record[5] = _outcome(result)
                if isinstance(result, ToolOutput) and result.data:
                    record[2] = result.data.get("sent_at", t0) - t0
                    record[3] = result.data.get("answered_at", t0) - t0
            except Rejected as error:
                record[5] = "shed"
                record.append(error.reason)
            except TimeoutError:
                record[5] = "timeout"
            except Exception:
                record[5] = "error"
            record[4] = loop.time() - t0

        async def sample() -> None:
            while True:
                t = loop.time() - t0
                limit = fixed or (adaptive.limit_of(ACTION) if adaptive else None)
                timeline.append((t, limit or cfg.initial_limit,
                                 workload.profile.phase_at(max(t, 0.0)).capacity))
                await asyncio.sleep(0.05)

        gc.collect()
        gc.freeze()  # a run's own objects only: no full collection pauses on older ones
        sampler = asyncio.ensure_future(sample())
        tasks = []
        for record in calls:
            delay = t0 + record[1] - loop.time()
            if delay > _BATCH:  # arrivals closer than 2 ms start together: one timer, not many
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(record)))
        bound = cfg.max_wait + cfg.call_timeout + 1.0
        _, pending = await asyncio.wait(tasks, timeout=bound) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        gc.unfreeze()
        provider = await host.stats()
    return Run(calls, timeline, provider,
               [_stats(s) for s in adaptive.statistics()] if adaptive else [])


def _stats(stats: AdaptiveStatistics) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(stats).items()}


PER_WORKLOAD: dict[str, tuple[str, ...]] = {
    "noload": ("fixed_high",),  # (a limit never reached)
    "step": STRATEGIES,
    "overload": ("adaptive", "fixed_high", "aimd", "vegas"),  # (fixed_low: half, as in step)
    "spike": ("adaptive", "fixed_high", "aimd"),
}
"""The strategies each workload runs by default (the whole section stays near 2 minutes)."""


async def run_all(cfg: AdaptiveBenchConfig, names: Sequence[str] | None = None, *,
                  quick: bool = False) -> dict[str, dict[str, Run]]:
    """Every workload through its strategies (:data:`PER_WORKLOAD`, or ``names`` for all)."""
    out: dict[str, dict[str, Run]] = {}
    async with ProviderProcess() as host:
        for workload in workloads(cfg, quick=quick):
            chosen = list(PER_WORKLOAD[workload.name])
            if names is not None and workload.name != "noload":
                chosen = list(names)
            out[workload.name] = {}
            for strategy in chosen:
                out[workload.name][strategy] = await run_workload(workload, strategy, cfg, host)
    return out
