"""The interceptor chain: fusion, order rules, rates, reconciliation, pauses, backpressure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    DeadlineUnmeetable,
    ManualClock,
    PriorityFairQueue,
    QueueFull,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
    default_retry_after,
)
from stageflow_plus.interceptors import Partition, Proceed, ToolCallInterceptor
from stageflow_plus.testing import clock_sleep, drive, settle

pytestmark = pytest.mark.anyio


async def ok(call: ToolCall) -> str:
    return f"ok:{call.tool}"


def admission_times(chain: ToolCallChain, clock: ManualClock) -> tuple[list[float], Any]:
    times: list[float] = []

    async def record(call: ToolCall) -> str:
        times.append(clock.now())
        return "ok"

    return times, record


async def test_fifty_calls_on_a_ten_per_second_bucket_respect_burst_plus_rate() -> None:
    clock = ManualClock()
    chain = ToolCallChain([TokenBucketRateLimiter(Rate(10, per=1, burst=10))], clock=clock)
    times, record = admission_times(chain, clock)
    tasks = [asyncio.ensure_future(chain.run(ToolCall(tool="api"), record)) for _ in range(50)]
    await drive(clock, tasks)
    assert len(times) == 50
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= 10 + 10 * (times[j] - start) + 1e-6
    assert times[9] == 0.0 and times[10] == pytest.approx(0.1)


async def test_requests_and_tokens_buckets_with_reconciliation() -> None:
    clock = ManualClock()
    used: dict[int, int] = {}
    rate = TokenBucketRateLimiter(
        [Rate(60, per=60, burst=5), Rate(1000, per=1, burst=1000, dimension="tokens")],
        key="global",
        actual_cost=lambda result: {"tokens": result["tokens"]},
    )
    chain = ToolCallChain([rate], clock=clock)
    admitted: list[tuple[float, float]] = []

    async def llm(call: ToolCall) -> dict[str, int]:
        admitted.append((clock.now(), call.cost["tokens"]))
        return {"tokens": used.get(call.call_id, int(call.cost["tokens"]))}

    # estimate 100 tokens, actually used 900: the next call must wait for the debt
    first = ToolCall(tool="llm", cost={"tokens": 100})
    used[first.call_id] = 900
    await chain.run(first, llm)
    second = asyncio.ensure_future(chain.run(ToolCall(tool="llm", cost={"tokens": 500}), llm))
    await settle()
    assert not second.done(), "only 100 tokens left after the reconciliation"
    clock.advance(0.399)
    await settle()
    assert not second.done()
    clock.advance(0.001)
    await settle()
    assert second.done() and admitted[-1][0] == pytest.approx(0.4)
    # requests bucket: burst 5, then 1 per second
    tasks = [asyncio.ensure_future(chain.run(ToolCall(tool="llm", cost={"tokens": 1}), llm))
             for _ in range(6)]
    await settle()
    assert not any(t.done() for t in tasks), "the tokens bucket is empty at t=0.4"
    clock.advance(0.01)  # 10 tokens refill; requests: 5 burst - 2 used + 0.41 refilled
    await settle()
    assert sum(t.done() for t in tasks) == 3
    clock.advance(10)
    await settle()
    assert all(t.done() for t in tasks)
    stats = chain.statistics()
    assert stats is not None and {b.dimension for b in stats.buckets} == {"requests", "tokens"}


async def test_provider_retry_after_pauses_the_key_for_everybody() -> None:
    clock = ManualClock()
    rate = TokenBucketRateLimiter(Rate(100, burst=100), key="tool")  # the pause is per tool
    chain = ToolCallChain([rate], clock=clock)
    starts: list[float] = []

    async def provider(call: ToolCall) -> dict[str, Any]:
        starts.append(clock.now())
        if len(starts) == 1:
            return {"status": 429, "retry_after": 2.0}
        return {"status": 200}

    assert (await chain.run(ToolCall(tool="api"), provider))["status"] == 429
    others = [asyncio.ensure_future(chain.run(ToolCall(tool="api"), provider)) for _ in range(3)]
    other_tool = asyncio.ensure_future(chain.run(ToolCall(tool="other"), provider))
    await settle()
    assert other_tool.done() and not any(t.done() for t in others)
    clock.advance(2.0)
    await settle()
    assert all(t.done() for t in others)
    assert starts[2:] == [2.0, 2.0, 2.0]


def test_default_retry_after_recognises_common_shapes() -> None:
    class RateLimited(Exception):
        retry_after = 1.5

    class Response:
        status_code = 429
        headers = {"retry-after": "3"}

    class Output:
        data = {"retry_after": 4}

    assert default_retry_after(RateLimited()) == 1.5
    assert default_retry_after(Response()) == 3.0
    assert default_retry_after(Output()) == 4.0
    assert default_retry_after({"retry_after": "nan"}) is None
    assert default_retry_after({"status": 200}) is None
    assert default_retry_after(ValueError()) is None


async def test_backpressure_queue_full_and_deadline_are_typed_and_immediate() -> None:
    clock = ManualClock()
    chain = ToolCallChain(
        [ConcurrencyLimiter(1), Backpressure(max_queue=1)], clock=clock)

    async def slow(call: ToolCall) -> str:
        await clock_sleep(clock, 1.0)
        return "done"

    running = asyncio.ensure_future(chain.run(ToolCall(tool="t"), slow))
    queued = asyncio.ensure_future(chain.run(ToolCall(tool="t"), slow))
    await settle()
    with pytest.raises(QueueFull) as full:
        await chain.run(ToolCall(tool="t"), slow)
    assert full.value.queue_depth == 1 and clock.now() == 0.0
    clock.advance(1.0)
    await settle()
    clock.advance(1.0)
    await settle()
    assert running.done() and queued.done()
    # the pool has learned ~1 s per call: a 0.5 s deadline behind a running call is unmeetable
    running = asyncio.ensure_future(chain.run(ToolCall(tool="t"), slow))
    await settle()
    with pytest.raises(DeadlineUnmeetable) as late:
        await chain.run(ToolCall(tool="t", deadline=clock.now() + 0.5), slow)
    assert late.value.retry_after is not None and clock.now() == 2.0
    clock.advance(1.0)
    await settle()
    await running


async def test_limits_are_fused_into_one_all_or_nothing_step() -> None:
    clock = ManualClock()
    conc = ConcurrencyLimiter(10, per_tool={"slow": 1}, per_run=3, per_tenant=5)
    chain = ToolCallChain(
        [Backpressure(max_queue=100), PriorityFairQueue(), conc,
         TokenBucketRateLimiter(Rate(1000))],
        clock=clock,
    )
    assert chain.gate is not None and len(chain.steps) == 1
    assert [type(p).__name__ for p in chain.gate.parts] == [
        "Backpressure", "PriorityFairQueue", "TokenBucketRateLimiter", "ConcurrencyLimiter",
        "ProviderPause"]  # added by the chain: a Retry-After pauses whatever the limiters
    call = ToolCall(tool="slow", run_id="r1", tenant="acme")
    keys = sorted(r.key for r, _ in chain.gate.demands_of(call) if hasattr(r, "capacity"))
    assert keys == ["global:*", "run:r1", "tenant:acme", "tool:slow"]
    assert await chain.run(call, ok) == "ok:slow"


async def test_order_rules_are_checked_at_build_time() -> None:
    class Breaker:
        outside_limits = True

        async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
            return await proceed(call)

    class Log:
        async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
            return await proceed(call)

    ToolCallChain([Breaker(), ConcurrencyLimiter(1), Backpressure(), Log()])
    with pytest.raises(ConfigError, match="Breaker must come before"):
        ToolCallChain([ConcurrencyLimiter(1), Breaker()])
    with pytest.raises(ConfigError, match="Log stands between"):
        ToolCallChain([ConcurrencyLimiter(1), Log(), Backpressure()])
    with pytest.raises(ConfigError, match="one ConcurrencyLimiter"):
        ToolCallChain([ConcurrencyLimiter(1), ConcurrencyLimiter(2)])
    with pytest.raises(ConfigError, match="not callable"):
        ToolCallChain([object()])  # type: ignore[list-item]
    shared = ConcurrencyLimiter(1)
    ToolCallChain([shared])
    with pytest.raises(ConfigError, match="already part of another chain"):
        ToolCallChain([shared])


async def test_interceptor_used_alone_and_chain_order_around_the_tool() -> None:
    limiter = ConcurrencyLimiter(2)
    assert await limiter(ToolCall(tool="x"), ok) == "ok:x"
    trace: list[str] = []

    def tracer(name: str) -> ToolCallInterceptor:
        async def step(call: ToolCall, proceed: Proceed) -> Any:
            trace.append(f"{name}>")
            result = await proceed(call)
            trace.append(f"<{name}")
            return result
        return step

    chain = ToolCallChain([tracer("outer"), ConcurrencyLimiter(1), tracer("inner")])
    await chain.run(ToolCall(tool="x"), ok)
    assert trace == ["outer>", "inner>", "<inner", "<outer"]


async def test_runtime_resize_and_custom_partition() -> None:
    clock = ManualClock()
    by_model = Partition("model", lambda c: str(c.payload.get("model")), limit=1)
    conc = ConcurrencyLimiter(partitions=[by_model])
    chain = ToolCallChain([conc], clock=clock)

    async def hold(call: ToolCall) -> str:
        await clock_sleep(clock, 1.0)
        return "done"

    tasks = [asyncio.ensure_future(chain.run(ToolCall(tool="llm", payload={"model": "m"}), hold))
             for _ in range(3)]
    await settle()
    stats = chain.statistics()
    assert stats is not None and stats.tasks_waiting == 2
    conc.set_limit("model", 3)
    await settle()
    assert chain.statistics().tasks_waiting == 0  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="no partition 'nope'"):
        conc.set_limit("nope", 1)
    with pytest.raises(ConfigError, match=">= 1"):
        conc.set_limit("model", 0)
    clock.advance(1.0)
    await settle()
    assert all(t.done() for t in tasks)


async def test_cancelled_and_failing_calls_give_permits_back() -> None:
    clock = ManualClock()
    conc = ConcurrencyLimiter(2)
    chain = ToolCallChain([conc], clock=clock)

    async def boom(call: ToolCall) -> str:
        raise RuntimeError("downstream failed")

    async def hang(call: ToolCall) -> str:
        await clock_sleep(clock, 100)
        return "never"

    with pytest.raises(RuntimeError):
        await chain.run(ToolCall(tool="t"), boom)
    hung = [asyncio.ensure_future(chain.run(ToolCall(tool="t"), hang)) for _ in range(3)]
    await settle()
    for task in hung:
        task.cancel()
    await asyncio.gather(*hung, return_exceptions=True)
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0
    assert all(p.in_use == 0 for p in stats.pools) and stats.cancelled == 1


async def test_an_observer_that_raises_leaks_no_permit() -> None:
    """actual_cost raising after a successful call: the result is kept, the permit is back
    (tests/interceptors/test_observer_errors.py pins the report)."""
    rate = TokenBucketRateLimiter(Rate(100, per=1), actual_cost=lambda result: result["usage"])
    chain = ToolCallChain([rate, ConcurrencyLimiter(1)], clock=ManualClock())

    async def no_usage(call: ToolCall) -> dict[str, Any]:
        return {}

    for _ in range(3):  # with a leaked permit the second call would wait forever
        assert await asyncio.wait_for(chain.run(ToolCall(tool="llm"), no_usage), 1.0) == {}
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0
    assert all(p.in_use == 0 for p in stats.pools)


async def test_a_per_run_cap_set_at_runtime_for_one_run_holds() -> None:
    limiter = ConcurrencyLimiter(per_run=5)
    limiter.set_limit("run", 1, key="r1")
    chain = ToolCallChain([limiter], clock=ManualClock())
    release = asyncio.Event()
    running = peak = 0

    async def tool(call: ToolCall) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    tasks = [asyncio.ensure_future(chain.run(ToolCall(tool="t", run_id="r1"), tool))
             for _ in range(3)]
    await settle()
    assert peak == 1
    release.set()
    await asyncio.gather(*tasks)
    uncapped = ConcurrencyLimiter()  # no per-run default, one run capped by key
    uncapped.set_limit("run", 1, key="r2")
    out: list[Any] = []
    uncapped.add_demands(ToolCall(tool="t", run_id="r2"), 0.0, out)
    assert [(r.key, a) for r, a in out] == [("run:r2", 1.0)]


async def test_a_refusal_from_further_in_is_not_a_provider_retry_after() -> None:
    """A Rejected carries retry_after too (e.g. Redis down under fail_closed); raised by a
    step inside the limits it must not pause the rate key as a provider's 429 would."""
    rate = TokenBucketRateLimiter(Rate(100, per=1))

    async def refuse_further_in(call: ToolCall, proceed: Proceed) -> Any:
        raise QueueFull("downstream limiter is full", retry_after=5.0)

    chain = ToolCallChain([rate, refuse_further_in], clock=ManualClock())
    with pytest.raises(QueueFull):
        await chain.run(ToolCall(tool="t"), _never_reached)
    stats = chain.statistics()
    assert stats is not None and stats.buckets and all(b.paused_for == 0 for b in stats.buckets)


async def _never_reached(call: ToolCall) -> None:
    raise AssertionError("the step before the tool refused")


async def test_per_run_limits_no_step_enforces_are_refused_not_ignored() -> None:
    async def tool(call: ToolCall) -> str:
        return "ok"

    async def passthrough(call: ToolCall, proceed: Proceed) -> Any:
        return await proceed(call)

    rates = ToolCall("t", limits={"rates": {"requests": 5.0}}, run_id="r1")
    concurrency = ToolCall("t", limits={"concurrency": 2}, run_id="r1")
    queue_bound = ToolCall("t", limits={"max_queue": 3}, run_id="r1")

    capped = ToolCallChain([ConcurrencyLimiter(4)])
    assert await capped.run(concurrency, tool) == "ok"  # enforced by the ConcurrencyLimiter
    assert await capped.run(queue_bound, tool) == "ok"  # enforced by the gate itself
    with pytest.raises(ConfigError, match="'rates' needs a TokenBucketRateLimiter"):
        await capped.run(rates, tool)
    assert capped.gate is not None
    with pytest.raises(ConfigError, match="'rates'"):
        await capped.gate.acquire(rates)
    stats = capped.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.admitted == 2

    rated = ToolCallChain([TokenBucketRateLimiter(Rate(100))])
    assert await rated.run(rates, tool) == "ok"
    with pytest.raises(ConfigError, match="'concurrency' needs a ConcurrencyLimiter"):
        await rated.run(concurrency, tool)

    no_limiter = ToolCallChain([passthrough])
    assert await no_limiter.run(ToolCall("t"), tool) == "ok"
    with pytest.raises(ConfigError, match="does not enforce"):
        await no_limiter.run(concurrency, tool)
