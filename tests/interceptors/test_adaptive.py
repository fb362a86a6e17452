"""AdaptiveConcurrency in a chain: measured on virtual time against a capacity-modelled
provider, drops from results and errors, waiters never stranded, events, logs, config."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import httpx
import pytest

from stageflow_plus import (
    AdaptiveConcurrency,
    AdaptiveSettings,
    AdaptiveStatistics,
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    ManualClock,
    QueueFull,
    ToolCall,
    ToolCallChain,
)
from stageflow_plus.bench.capacity import CapacityModel, CapacityPhase, CapacityProfile
from stageflow_plus.testing import run_virtual, settle

FAST = AdaptiveSettings(window=0.5, window_rtts=2.0, min_samples=10, max_limit=200,
                        probe_interval=0.0)


class Changes:
    """A listener that records limit changes (and ignores the other events)."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, int, int, str]] = []

    def on_queued(self, info: Any, depth: int) -> None: ...
    def on_admitted(self, info: Any, wait: float) -> None: ...
    def on_rejected(self, info: Any, error: Exception) -> None: ...
    def on_released(self, info: Any, held: float) -> None: ...

    def on_limit_changed(self, key: str, old: int, new: int, reason: str) -> None:
        self.changes.append((key, old, new, reason))


def drive_model(phases: list[tuple[float, int]], seconds: float, *, workers: int = 80,
                start: int = 4, settings: AdaptiveSettings = FAST,
                latency_ms: float = 100.0) -> tuple[list[tuple[float, int]], Changes]:
    """``workers`` callers in a closed loop through the chain against the model, on virtual
    time; returns the limit every 50 ms and the recorded changes."""

    async def main() -> tuple[list[tuple[float, int]], Changes]:
        loop = asyncio.get_running_loop()
        model = CapacityModel(CapacityProfile(
            tuple(CapacityPhase(at, cap, latency_ms) for at, cap in phases), jitter=0.1))
        adaptive = AdaptiveConcurrency("tool", settings=settings)
        changes = Changes()
        # the controller's rules alone: without the chain's ProviderPause, whose pause on
        # the model's 503/429 Retry-After would stop every call (and every sample) meanwhile
        chain = ToolCallChain([ConcurrencyLimiter(per_tool=start), adaptive], listener=changes,
                              provider_pause=False)
        model.start()
        end = loop.time() + seconds

        async def target(call: ToolCall) -> dict[str, Any]:
            status, _headers, _ = await model.serve()
            return {"status": status, **({"retry_after": 0.5} if status != 200 else {})}

        async def worker() -> None:
            while loop.time() < end:
                await chain.run(ToolCall(tool="llm"), target)

        timeline: list[tuple[float, int]] = []

        async def watch() -> None:
            while loop.time() < end:
                timeline.append((loop.time(), adaptive.limit_of("llm") or start))
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), *(worker() for _ in range(workers)))
        model.stop()
        return timeline, changes

    return run_virtual(main())


def limits_between(timeline: list[tuple[float, int]], start: float, end: float) -> list[int]:
    return [limit for t, limit in timeline if start <= t < end]


def test_it_finds_the_capacity_of_a_virtual_provider_and_holds_it() -> None:
    timeline, changes = drive_model([(0.0, 24)], 20.0)
    steady = limits_between(timeline, 10.0, 20.0)
    assert all(abs(x - 24) / 24 <= 0.15 for x in steady), sorted(set(steady))
    assert changes.changes[0][:2] == ("tool:llm", 4)
    assert {reason for *_, reason in changes.changes} <= {"grow", "rtt", "drop"}


def test_capacity_halved_then_doubled_is_followed_within_three_windows() -> None:
    window = 0.5  # (FAST: max(0.5 s, 2 x 100 ms))
    timeline, _ = drive_model([(0.0, 32), (12.0, 16), (20.0, 32)], 28.0)
    for change, capacity, until in ((12.0, 16, 20.0), (20.0, 32, 28.0)):
        settled = limits_between(timeline, change + 3 * window, until)
        assert abs(settled[0] - capacity) / capacity <= 0.10, (capacity, settled[:5])
        assert all(abs(x - capacity) / capacity <= 0.15 for x in settled), sorted(set(settled))


def test_a_slower_provider_is_relearned_by_the_probe_not_starved() -> None:
    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        slow = CapacityModel(CapacityProfile((CapacityPhase(0.0, 20, 100.0),
                                              CapacityPhase(10.0, 20, 250.0)), jitter=0.1))
        adaptive = AdaptiveConcurrency("tool", settings=FAST)
        chain = ToolCallChain([ConcurrencyLimiter(per_tool=4), adaptive], listener=Changes())
        slow.start()
        end = loop.time() + 30.0

        async def target(call: ToolCall) -> int:
            status, _, _ = await slow.serve()
            return status

        async def worker() -> None:
            while loop.time() < end:
                await chain.run(ToolCall(tool="llm"), target)

        await asyncio.gather(*(worker() for _ in range(60)))
        stats = adaptive.statistics()[0]
        return stats.limit, stats.rtt_noload

    limit, rtt_noload = run_virtual(main())
    assert rtt_noload == pytest.approx(0.25, rel=0.1), "the probe re-learned the no-load rtt"
    assert abs(limit - 20) / 20 <= 0.15


def test_an_idle_tool_keeps_its_limit() -> None:
    timeline, changes = drive_model([(0.0, 50)], 10.0, workers=3, start=10)
    assert set(limits_between(timeline, 0.0, 10.0)) == {10} and changes.changes == []


class Refused(Exception):
    """A provider's 429, as an HTTP client error carries it (status on ``.response``)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = httpx.Response(status, request=httpx.Request("POST", "http://x"))


@pytest.mark.anyio
async def test_a_drop_raised_by_the_tool_lowers_the_limit_at_once() -> None:
    clock = ManualClock()
    changes = Changes()
    adaptive = AdaptiveConcurrency("tool", settings=FAST)
    limiter = ConcurrencyLimiter(per_tool=10)
    chain = ToolCallChain([limiter, adaptive], clock=clock, listener=changes)

    async def refused(call: ToolCall) -> None:
        raise Refused(429)

    async def broken(call: ToolCall) -> None:
        raise ValueError("a bug, not a lack of capacity")

    async def inner_refusal(call: ToolCall) -> None:
        raise QueueFull("an inner chain's own refusal", key="tool:x", limiter="inner")

    for tool in (broken, inner_refusal):
        with pytest.raises((ValueError, QueueFull)):
            await chain.run(ToolCall(tool="llm"), tool)
    assert adaptive.statistics() == (), "neither a bug nor our own refusal is measured"
    assert limiter.pool_statistics()[0].capacity == 10
    clock.advance(0.01)
    with pytest.raises(Refused):
        await chain.run(ToolCall(tool="llm"), refused)
    assert adaptive.limit_of("llm") == 9
    assert changes.changes == [("tool:llm", 10, 9, "drop")]
    stats = adaptive.statistics()
    assert isinstance(stats[0], AdaptiveStatistics) and stats[0].drops == 1


@pytest.mark.anyio
async def test_a_drop_result_lowers_the_limit_and_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    adaptive = AdaptiveConcurrency("tool", settings=FAST)
    chain = ToolCallChain([ConcurrencyLimiter(per_tool=10), adaptive], clock=clock,
                          listener=Changes())

    async def ok(call: ToolCall) -> dict[str, int]:
        return {"status": 200}

    async def overloaded(call: ToolCall) -> dict[str, Any]:
        return {"status": 503, "retry_after": 1.0}

    with caplog.at_level(logging.DEBUG, logger="stageflow_plus.adaptive"):
        for _ in range(50):
            await chain.run(ToolCall(tool="llm"), ok)
        clock.advance(0.01)
        await chain.run(ToolCall(tool="llm"), overloaded)
    records = [r for r in caplog.records if r.name == "stageflow_plus.adaptive"]
    assert len(records) == 1 and records[0].levelno == logging.INFO  # nothing per call
    assert "tool:llm: 10 -> 9 (drop" in records[0].getMessage()


class Scripted:
    """A :class:`LimitPolicy` whose limit the test sets (to test the interceptor alone)."""

    reason = "scripted"

    def __init__(self, settings: AdaptiveSettings, limit: int, now: float) -> None:
        self.next = limit

    @property
    def limit(self) -> int:
        return self.next

    def sample(self, now: float, started: float, inflight: int, dropped: bool) -> int:
        return self.next

    def statistics(self, key: str) -> AdaptiveStatistics:
        return AdaptiveStatistics(key, self.next, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0,
                                  self.reason, False)


@pytest.mark.anyio
async def test_lowering_lets_holders_finish_and_raising_wakes_waiters_at_once() -> None:
    policies: list[Scripted] = []

    def make(settings: AdaptiveSettings, limit: int, now: float) -> Scripted:
        policies.append(Scripted(settings, limit, now))
        return policies[-1]

    adaptive = AdaptiveConcurrency("tool", settings=FAST, policy=make)
    limiter = ConcurrencyLimiter(per_tool=4)
    chain = ToolCallChain([limiter, adaptive], clock=ManualClock(), listener=Changes())
    gates = [asyncio.Event() for _ in range(12)]
    running: set[int] = set()

    async def hold(call: ToolCall) -> str:
        index = int(call.payload["i"])
        running.add(index)
        try:
            await gates[index].wait()
        finally:
            running.discard(index)
        return "ok"

    await chain.run(ToolCall(tool="llm", payload={"i": 11}), _done(gates[11]))  # creates state
    tasks = [asyncio.ensure_future(chain.run(ToolCall(tool="llm", payload={"i": i}), hold))
             for i in range(8)]
    await settle()
    assert running == {0, 1, 2, 3}
    policies[0].next = 2  # the next completion lowers the limit to 2
    gates[0].set()
    await settle()
    assert running == {1, 2, 3}, "holders keep running, nobody new comes in above the limit"
    assert limiter.pool_statistics()[0].capacity == 2
    gates[1].set()
    await settle()
    assert running == {2, 3}
    gates[2].set()
    await settle()
    assert running == {3, 4}, "in flight below the limit again: one waiter admitted"
    policies[0].next = 6  # raising admits waiters at once
    gates[3].set()
    await settle()
    assert running == {4, 5, 6, 7}
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    assert limiter.pool_statistics()[0].in_use == 0


def _done(gate: asyncio.Event) -> Any:
    async def run(call: ToolCall) -> str:
        gate.set()
        return "ok"

    return run


@pytest.mark.anyio
async def test_bounds_clamp_the_starting_limit_and_only_listed_keys_adapt() -> None:
    adaptive = AdaptiveConcurrency("tool", settings=AdaptiveSettings(max_limit=5), keys=["a"])
    limiter = ConcurrencyLimiter(per_tool=8)
    chain = ToolCallChain([limiter, adaptive], clock=ManualClock(), listener=Changes())

    async def ok(call: ToolCall) -> str:
        return "ok"

    await chain.run(ToolCall(tool="a"), ok)
    await chain.run(ToolCall(tool="b"), ok)
    assert adaptive.limit_of("a") == 5 and adaptive.limit_of("b") is None
    # (the pools themselves may be gone again: idle per-key state is released; the caps
    # live in the partition, where a new pool for the key takes its cap from)
    (tool,) = [p for p in limiter.partitions if p.name == "tool"]
    assert (tool.limit_for("a"), tool.limit_for("b")) == (5, 8)
    assert [s.key for s in adaptive.statistics()] == ["tool:a"]
    assert adaptive.statistics()[0].last_reason == "bounds"
    assert "a=5" in repr(adaptive)


@pytest.mark.anyio
async def test_the_global_partition_adapts_one_limit_for_every_tool() -> None:
    adaptive = AdaptiveConcurrency("global", settings=FAST)
    chain = ToolCallChain([ConcurrencyLimiter(3), adaptive], clock=ManualClock(),
                          listener=Changes())

    async def drop(call: ToolCall) -> dict[str, int]:
        return {"status": 429}

    await chain.run(ToolCall(tool="a"), drop)
    assert adaptive.limit_of("*") == 2  # (3 x 0.9, rounded)


def test_misconfigurations_name_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="needs a ConcurrencyLimiter"):
        ToolCallChain([Backpressure(max_queue=1), AdaptiveConcurrency()])
    with pytest.raises(ConfigError, match="no partition 'tenant'"):
        ToolCallChain([ConcurrencyLimiter(per_tool=2), AdaptiveConcurrency("tenant")])
    with pytest.raises(ConfigError, match="needs a starting limit"):
        ToolCallChain([ConcurrencyLimiter(4, per_tool={"x": 2}), AdaptiveConcurrency("tool")])
    with pytest.raises(ConfigError, match="needs a starting limit for b"):
        ToolCallChain([ConcurrencyLimiter(per_tool={"a": 2}),
                       AdaptiveConcurrency("tool", keys=["a", "b"])])
    with pytest.raises(ConfigError, match="'run' partition"):
        AdaptiveConcurrency("run")
    with pytest.raises(ConfigError, match="settings must be AdaptiveSettings"):
        AdaptiveConcurrency(settings={"min_limit": 2})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is_drop must be callable"):
        AdaptiveConcurrency(is_drop=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="keys must be a collection"):
        AdaptiveConcurrency(keys="llm")


def test_the_policy_state_stays_fixed_whatever_the_number_of_calls() -> None:
    async def main() -> tuple[int, float]:
        adaptive = AdaptiveConcurrency("tool", settings=FAST)
        chain = ToolCallChain([ConcurrencyLimiter(per_tool=4), adaptive], listener=Changes())
        loop = asyncio.get_running_loop()

        async def quick(call: ToolCall) -> str:
            await asyncio.sleep(0.01)
            return "ok"

        for _ in range(3_000):
            await chain.run(ToolCall(tool="llm"), quick)
        stats = adaptive.statistics()
        return len(stats), loop.time()

    groups, elapsed = run_virtual(main())
    assert groups == 1 and math.isclose(elapsed, 30.0, rel_tol=0.01)
