"""ToolCallRetry: retries outside the limits, honours waits, backs off with jitter, budgeted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stageflow_plus import (
    ConcurrencyLimiter,
    ConfigError,
    CostTooLarge,
    ManualClock,
    MultiListener,
    QueueFull,
    RetryBudget,
    ToolCall,
    ToolCallChain,
    ToolCallRetry,
)
from stageflow_plus.testing import drive, settle

pytestmark = pytest.mark.anyio


class _Flaky:
    """Answers ``answers`` in order (exceptions are raised), then 200s; records start times."""

    def __init__(self, clock: ManualClock, answers: list[Any]) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.starts: list[float] = []

    async def __call__(self, call: ToolCall) -> Any:
        self.starts.append(self.clock.now())
        answer = self.answers.pop(0) if self.answers else {"status": 200}
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _chain(clock: ManualClock, retry: ToolCallRetry, limit: int = 1) -> ToolCallChain:
    # no log listener: its digest's window timer would count as a pending timer here
    return ToolCallChain([retry, ConcurrencyLimiter(limit)], clock=clock,
                         listener=MultiListener([]))


async def test_honours_retry_after_and_holds_no_permit_while_waiting() -> None:
    clock = ManualClock()
    retry = ToolCallRetry(clock=clock, rng=lambda: 0.5)
    chain = _chain(clock, retry)
    tool = _Flaky(clock, [{"status": 429, "retry_after": 2.0}])
    first = asyncio.ensure_future(chain.run(ToolCall("api"), tool))
    await settle()
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0  # sleeping outside the limits
    other = _Flaky(clock, [])
    await chain.run(ToolCall("other"), other)  # the only permit is free meanwhile
    await drive(clock, [first])
    assert first.result() == {"status": 200}
    assert tool.starts == [0.0, pytest.approx(2.0)]
    assert retry.statistics().recovered == 1


async def test_backoff_is_full_jitter_and_exceptions_are_followed() -> None:
    clock = ManualClock()
    draws = iter([0.25, 0.5, 0.75])
    retry = ToolCallRetry(clock=clock, base=1.0, cap=3.0, max_attempts=4, rng=lambda: next(draws))
    assert [retry.backoff(a) for a in range(3)] == [0.25, 1.0, 2.25]  # U·min(cap, base·2^a)

    class Overloaded(Exception):
        status_code = 529
        headers: dict[str, str] = {}

    class Wrapped(Exception):
        pass

    cause = Overloaded()
    wrapped = Wrapped("tool failed")
    wrapped.__cause__ = cause
    tool = _Flaky(clock, [TimeoutError(), wrapped])
    retry = ToolCallRetry(clock=clock, base=1.0, cap=3.0, max_attempts=4,
                          rng=lambda: 1.0 - 1e-9)
    task = asyncio.ensure_future(_chain(clock, retry).run(ToolCall("api"), tool))
    await drive(clock, [task])
    assert task.result() == {"status": 200}
    assert tool.starts == [0.0, pytest.approx(1.0), pytest.approx(3.0)]


async def test_gives_up_unchanged_after_max_attempts_or_deadline() -> None:
    clock = ManualClock()
    tool = _Flaky(clock, [{"status": 503}] * 5)
    retry = ToolCallRetry(clock=clock, max_attempts=2, rng=lambda: 0.0)
    result = await _chain(clock, retry).run(ToolCall("api"), tool)
    assert result == {"status": 503} and len(tool.starts) == 2
    assert retry.statistics().gave_up == 1

    late = _Flaky(clock, [{"status": 429, "retry_after": 5.0}])
    retry = ToolCallRetry(clock=clock)
    answer = await _chain(clock, retry).run(ToolCall("api", deadline=clock.now() + 1.0), late)
    assert answer["status"] == 429 and len(late.starts) == 1  # would miss the deadline

    never = _Flaky(clock, [{"status": 400}, ValueError("bug")])
    assert (await _chain(clock, ToolCallRetry(clock=clock)).run(ToolCall("a"), never)) == {
        "status": 400}
    with pytest.raises(ValueError):
        await _chain(clock, ToolCallRetry(clock=clock)).run(ToolCall("a"), never)
    told = _Flaky(clock, [{"status": 500, "headers": {"x-should-retry": "false"}}])
    out = await _chain(clock, ToolCallRetry(clock=clock)).run(ToolCall("a"), told)
    assert out["status"] == 500 and len(told.starts) == 1


async def test_refusals_with_retry_after_are_retried_others_are_not() -> None:
    clock = ManualClock()
    tool = _Flaky(clock, [QueueFull("full", retry_after=0.5), CostTooLarge("never fits")])
    retry = ToolCallRetry(clock=clock)
    task = asyncio.ensure_future(_chain(clock, retry).run(ToolCall("api"), tool))
    await drive(clock, [task])
    with pytest.raises(CostTooLarge):
        task.result()
    assert tool.starts == [0.0, pytest.approx(0.5)]


async def test_budget_caps_retries_at_a_tenth_of_calls() -> None:
    clock = ManualClock()
    budget = RetryBudget(0.1, window=10.0, min_retries=0, clock=clock.now)
    retry = ToolCallRetry(clock=clock, budget=budget, rng=lambda: 0.0)
    chain = _chain(clock, retry, limit=100)
    tool = _Flaky(clock, [{"status": 429}] * 1000)
    results = await asyncio.gather(*(chain.run(ToolCall("api"), tool) for _ in range(100)))
    assert sum(1 for r in results if r["status"] == 429) >= 90
    stats = retry.statistics()
    assert stats.retries <= 10 and stats.budget_refused > 0
    assert len(tool.starts) <= 110  # at most ~10 % extra calls
    clock.advance(11.0)  # a new window: the budget is back
    assert budget.statistics().retries == 0 and not budget.try_spend()  # no calls, no floor
    for _ in range(10):
        budget.record_call()
    assert budget.try_spend() and not budget.try_spend()  # 10 calls: one retry


async def test_cancelled_while_sleeping_stops_and_holds_nothing() -> None:
    clock = ManualClock()
    retry = ToolCallRetry(clock=clock, rng=lambda: 0.5)
    chain = _chain(clock, retry)
    tool = _Flaky(clock, [{"status": 429, "retry_after": 10.0}])
    task = asyncio.ensure_future(chain.run(ToolCall("api"), tool))
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and clock.pending_timers == 0
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0


def test_validation_and_chain_position() -> None:
    for bad in ({"max_attempts": 0}, {"max_attempts": True}, {"base": -1.0},
                {"cap": float("inf")}, {"max_pause": float("nan")}, {"budget": "lots"}):
        with pytest.raises(ConfigError):
            ToolCallRetry(**bad)
    with pytest.raises(ConfigError):
        RetryBudget(ratio=-0.1)
    with pytest.raises(ConfigError):
        RetryBudget(window=0)
    with pytest.raises(ConfigError, match="before the limiter"):
        ToolCallChain([ConcurrencyLimiter(1), ToolCallRetry()])
    assert ToolCallRetry(budget=None).budget is None
    assert "ToolCallRetry" in repr(ToolCallRetry())
