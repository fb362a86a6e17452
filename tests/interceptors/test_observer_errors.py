"""An interceptor hook that fails after the tool ran never costs the caller the outcome.

Before: a failing ``actual_cost`` (or any ``after_result`` / ``after_error`` hook) replaced
the tool's result with the hook's exception — the tool had run and its result was gone.
Now the result (or the tool's own error) wins, the estimate stays charged, the lease is
released, and the failure is reported: a WARNING on the ``stageflow_plus`` logger (without
payloads or results) and the listener's optional ``on_observer_error(info, hook, error)``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from stageflow_plus import (
    ConcurrencyLimiter,
    ManualClock,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from stageflow_plus.interceptors.gate import LimitPart
from stageflow_plus.interceptors.observe import MultiListener
from stageflow_plus.llm import default_retry_after
from stageflow_plus.primitives import Lease, Rejected

pytestmark = pytest.mark.anyio

SECRET = "sk-live-payload-never-logged"


class Events:
    """A listener keeping the observer errors (the other events are ignored)."""

    immediate_events = False

    def __init__(self) -> None:
        self.errors: list[tuple[Any, str, Exception]] = []

    def on_queued(self, info: Any, depth: int) -> None: ...
    def on_admitted(self, info: Any, wait: float) -> None: ...
    def on_rejected(self, info: Any, error: Rejected) -> None: ...
    def on_released(self, info: Any, held: float) -> None: ...

    def on_observer_error(self, info: Any, hook: str, error: Exception) -> None:
        self.errors.append((info, hook, error))


def broken_usage(result: Any) -> dict[str, float]:
    return {"tokens": result["usage"]["total"]}  # KeyError: the provider sent no usage


@pytest.mark.parametrize(
    ("actual_cost", "error_type"),
    [
        (broken_usage, KeyError),
        (lambda result: {"tokens": math.inf}, Exception),
        (lambda result: {"tokens": math.nan}, Exception),
        (lambda result: {"tokens": -4}, Exception),
        (lambda result: "lots", Exception),
    ],
)
async def test_a_failing_actual_cost_keeps_the_result_and_the_estimate(
    actual_cost: Any, error_type: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    rate = TokenBucketRateLimiter(
        Rate(100, dimension="tokens"), key="global", actual_cost=actual_cost
    )
    events = Events()
    chain = ToolCallChain([rate, ConcurrencyLimiter(1)], clock=clock, listener=events)

    async def llm(call: ToolCall) -> dict[str, Any]:
        return {"text": SECRET}

    call = ToolCall("llm", cost={"tokens": 30}, payload={"prompt": SECRET})
    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        assert await chain.run(call, llm) == {"text": SECRET}  # the tool's result
    (bucket,) = rate.buckets_for("*", clock.now())
    assert bucket.level(clock.now()) == 70  # the estimate stays charged, nothing else
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0
    assert all(p.in_use == 0 for p in stats.pools)  # the lease was released
    [(info, hook, error)] = events.errors
    assert info is call and hook == "TokenBucketRateLimiter.after_result"
    assert isinstance(error, error_type)
    [record] = [r for r in caplog.records if r.name == "stageflow_plus"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "TokenBucketRateLimiter.after_result" in message and "'llm'" in message
    assert SECRET not in message and record.exc_info is None


class Failing(LimitPart):
    """An interceptor whose after-call hooks raise."""

    observes_results = True

    def after_result(self, call: ToolCall, lease: Lease, result: Any) -> None:
        raise RuntimeError(f"observer broke on {result!r}")

    def after_error(self, call: ToolCall, lease: Lease, error: Exception) -> None:
        raise RuntimeError(f"observer broke on {error!r}")


class ToolBroke(Exception):
    """The tool's own failure."""


async def test_an_observer_that_raises_never_replaces_the_tool_s_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = Events()
    chain = ToolCallChain(
        [Failing(), ConcurrencyLimiter(1)], clock=ManualClock(), listener=events
    )

    async def fine(call: ToolCall) -> str:
        return SECRET

    async def broken(call: ToolCall) -> str:
        raise ToolBroke("the tool failed")

    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        assert await chain.run(ToolCall("t"), fine) == SECRET
        with pytest.raises(ToolBroke):
            await chain.run(ToolCall("t"), broken)
    assert [hook for _, hook, _ in events.errors] == ["Failing.after_result", "Failing.after_error"]
    messages = [r.getMessage() for r in caplog.records if r.name == "stageflow_plus"]
    assert len(messages) == 2 and all("RuntimeError" in m for m in messages)
    assert not any(SECRET in m for m in messages)  # a foreign error: its type, not its text
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0


async def test_a_listener_that_raises_on_the_report_still_keeps_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Loud(Events):
        def on_observer_error(self, info: Any, hook: str, error: Exception) -> None:
            raise ValueError("listener broke")

    chain = ToolCallChain(
        [Failing(), ConcurrencyLimiter(1)],
        clock=ManualClock(),
        listener=MultiListener([Events(), Loud()]),
    )

    async def fine(call: ToolCall) -> str:
        return "ok"

    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        assert await chain.run(ToolCall("t"), fine) == "ok"
    assert any("listener_failed" in r.getMessage() for r in caplog.records)


async def test_a_failing_actual_cost_still_lets_a_retry_after_pause_the_key() -> None:
    """A 429 answer carries no usage: actual_cost fails on it, the pause must still come."""
    clock = ManualClock()
    rate = TokenBucketRateLimiter(Rate(100), key="global", actual_cost=broken_usage,
                                  retry_after=default_retry_after)  # (off by default)
    chain = ToolCallChain([rate], clock=clock, listener=Events())

    async def throttled(call: ToolCall) -> dict[str, Any]:
        return {"retry_after": 7}

    assert await chain.run(ToolCall("llm"), throttled) == {"retry_after": 7}
    (bucket,) = rate.buckets_for("*", clock.now())
    assert bucket.paused_until == 7.0


async def test_a_limited_registry_emits_tool_observer_error_on_stageflow_s_sink() -> None:
    from stageflow.events import set_event_sink
    from stageflow.tools import ToolRegistry
    from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

    from stageflow_plus import LimitedToolRegistry
    from stageflow_plus.testing import SimpleAction

    class Sink:
        def __init__(self) -> None:
            self.events: list[tuple[str, dict[str, Any]]] = []

        async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
            self.events.append((type, dict(data or {})))

        def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
            self.events.append((type, dict(data or {})))

    class Echo(BaseTool):
        name = "echo"
        description = "returns its payload"
        action_type = "echo"

        async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
            return ToolOutput(success=True, data={"echo": SECRET})

    sink = Sink()
    set_event_sink(sink)
    registry = ToolRegistry()
    registry.register(Echo())
    rate = TokenBucketRateLimiter(Rate(100), actual_cost=broken_usage)
    limited = LimitedToolRegistry(ToolCallChain([rate], clock=ManualClock()), registry)
    output = await limited.execute(SimpleAction("echo"), {})
    assert output is not None and output.success and output.data == {"echo": SECRET}
    [data] = [d for t, d in sink.events if t == "tool.observer_error"]
    assert data["hook"] == "TokenBucketRateLimiter.after_result"
    assert data["error_type"] == "TypeError" and data["tool"] == "echo"


async def test_an_observer_failing_on_every_call_logs_one_line_then_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 15.2: nothing per call above DEBUG, a broken hook included."""
    clock = ManualClock()
    events = Events()
    chain = ToolCallChain([Failing(), ConcurrencyLimiter(1)], clock=clock, listener=events)

    async def fine(call: ToolCall) -> str:
        return "ok"

    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        for _ in range(50):
            assert await chain.run(ToolCall("t"), fine) == "ok"
        lines = [r.getMessage() for r in caplog.records if r.name == "stageflow_plus"]
        assert len(lines) == 1 and "observer_failed" in lines[0]
        clock.advance(10.0)
        lines = [r.getMessage() for r in caplog.records if r.name == "stageflow_plus"]
    assert len(lines) == 2 and "49 more failures of Failing.after_result" in lines[1], lines
    assert len(events.errors) == 50  # the listener still hears every one


@pytest.mark.parametrize("steps", [False, True], ids=["gate_only", "with_steps"])
async def test_an_observer_that_raises_never_replaces_a_limit_block_s_outcome(
    steps: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    from stageflow_plus.interceptors.retry import ToolCallRetry

    events = Events()
    parts: list[Any] = [Failing(), ConcurrencyLimiter(1)]
    if steps:  # (a retry with one attempt: a step beside the gate that only passes through)
        parts.insert(0, ToolCallRetry(max_attempts=1))
    chain = ToolCallChain(parts, clock=ManualClock(), listener=events)
    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        async with chain.limit(tool="t") as handle:
            handle.report({"status": 200, "data": SECRET})
        with pytest.raises(ToolBroke):
            async with chain.limit(tool="t"):
                raise ToolBroke("the block failed")
    assert [hook for _, hook, _ in events.errors] == ["Failing.after_result", "Failing.after_error"]
    assert not any(SECRET in r.getMessage() for r in caplog.records)
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0
