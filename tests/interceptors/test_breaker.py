"""The per-tool circuit breaker: real failures open it, our refusals never touch it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stageflow_plus import (
    Backpressure,
    CircuitOpen,
    ConcurrencyLimiter,
    ConfigError,
    ManualClock,
    QueueFull,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from stageflow_plus.interceptors import ToolCircuitBreaker, default_is_failure
from stageflow_plus.testing import clock_sleep, settle

pytestmark = pytest.mark.anyio


async def test_open_breaker_fails_fast_without_queueing_or_spending_tokens() -> None:
    clock = ManualClock()
    breaker = ToolCircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock)
    rate = TokenBucketRateLimiter(Rate(10, per=1, burst=10))
    chain = ToolCallChain([breaker, rate, ConcurrencyLimiter(5)], clock=clock)
    calls = 0

    async def down(call: ToolCall) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"status": 503}

    for _ in range(3):
        assert (await chain.run(ToolCall(tool="api"), down))["status"] == 503
    assert breaker.state("api").state == "open"
    before = chain.statistics()
    assert before is not None
    tokens_before = [b.available for b in before.buckets]
    for _ in range(20):
        with pytest.raises(CircuitOpen) as error:
            await chain.run(ToolCall(tool="api"), down)
    assert error.value.retry_after == pytest.approx(10) and "open" in str(error.value)
    after = chain.statistics()
    assert after is not None
    assert after.admitted == before.admitted and [b.available for b in after.buckets] == (
        tokens_before)
    assert calls == 3
    # another tool is unaffected
    assert (await chain.run(ToolCall(tool="other"), down))["status"] == 503


async def test_half_open_probe_closes_or_reopens() -> None:
    clock = ManualClock()
    breaker = ToolCircuitBreaker(failure_threshold=1, reset_timeout=5, clock=clock)
    chain = ToolCallChain([breaker, ConcurrencyLimiter(5)], clock=clock)
    healthy = False
    gate = asyncio.Event()

    async def tool(call: ToolCall) -> str:
        await gate.wait()
        if not healthy:
            raise RuntimeError("500")
        return "ok"

    gate.set()
    with pytest.raises(RuntimeError):
        await chain.run(ToolCall(tool="t"), tool)
    clock.advance(5.01)
    gate.clear()
    probe = asyncio.ensure_future(chain.run(ToolCall(tool="t"), tool))
    await settle()
    with pytest.raises(CircuitOpen, match="half-open"):
        await chain.run(ToolCall(tool="t"), tool)  # one probe at a time
    gate.set()
    with pytest.raises(RuntimeError):
        await probe
    assert breaker.state("t").state == "open"  # the probe failed: open again
    clock.advance(5.01)
    healthy = True
    assert await chain.run(ToolCall(tool="t"), tool) == "ok"
    assert breaker.state("t").state == "closed" and breaker.state("t").trips == 2


async def test_fifty_backpressure_refusals_leave_the_breaker_closed() -> None:
    clock = ManualClock()
    breaker = ToolCircuitBreaker(failure_threshold=2, clock=clock)
    chain = ToolCallChain(
        [breaker, Backpressure(max_queue=0), ConcurrencyLimiter(1)], clock=clock)

    async def hold(call: ToolCall) -> str:
        await clock_sleep(clock, 100)
        return "done"

    async def fail(call: ToolCall) -> str:
        raise RuntimeError("real failure")

    held = asyncio.ensure_future(chain.run(ToolCall(tool="t"), hold))
    await settle()
    for _ in range(50):
        with pytest.raises(QueueFull):
            await chain.run(ToolCall(tool="t"), fail)
    assert breaker.state("t").state == "closed" and breaker.state("t").failures == 0
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
    # a real failure counts, and a refusal in between does not reset the count
    with pytest.raises(RuntimeError):
        await chain.run(ToolCall(tool="t"), fail)
    assert breaker.state("t").failures == 1
    held = asyncio.ensure_future(chain.run(ToolCall(tool="t"), hold))
    await settle()
    with pytest.raises(QueueFull):
        await chain.run(ToolCall(tool="t"), fail)
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
    assert breaker.state("t").failures == 1
    with pytest.raises(RuntimeError):
        await chain.run(ToolCall(tool="t"), fail)
    assert breaker.state("t").state == "open"


def test_failure_classifier_and_config_errors() -> None:
    class Response:
        status_code = 429

    class Output:
        data = {"status": 502}

    assert default_is_failure(Response()) and default_is_failure(Output())
    assert default_is_failure({"status": 500}) and not default_is_failure({"status": 404})
    assert not default_is_failure("ok") and not default_is_failure({"status": True})
    with pytest.raises(ConfigError, match="failure_threshold must be an int >= 1"):
        ToolCircuitBreaker(failure_threshold=0)
    with pytest.raises(ConfigError, match="reset_timeout must be a number > 0"):
        ToolCircuitBreaker(reset_timeout=-1)
    with pytest.raises(ConfigError, match="key must be 'tool' or a function"):
        ToolCircuitBreaker(key="tenant")
