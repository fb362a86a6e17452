"""Plain asyncio: ``async with chain.limit(...)``, cancellation-safe, on both of its paths.

Every behaviour is checked on a chain whose only step is the admission step (the block runs
in the caller's task) and on a chain with another step around it (the steps run in a
helper task that waits for the block).
"""

from __future__ import annotations

import asyncio
from typing import Any, assert_type

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow_plus import (
    Backpressure,
    CallHandle,
    CircuitOpen,
    ConcurrencyLimiter,
    ConfigError,
    ManualClock,
    PriorityFairQueue,
    QueueFull,
    Rate,
    RateLimitHeaderLearner,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
    ToolCircuitBreaker,
    WaitTimeout,
)
from stageflow_plus.interceptors import Proceed
from stageflow_plus.testing import clock_sleep, drive, settle

pytestmark = pytest.mark.anyio


class Passthrough:
    """A step that only passes the call on (and counts what it saw)."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.errors: list[BaseException] = []

    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        try:
            result = await proceed(call)
        except BaseException as error:
            self.errors.append(error)
            raise
        self.results.append(result)
        return result


def make_chain(kind: str, *limits: Any, clock: Any = None) -> ToolCallChain:
    steps: list[Any] = list(limits)
    if kind == "with_steps":
        steps.append(Passthrough())
    return ToolCallChain(steps, clock=clock)


KINDS = ["gate_only", "with_steps"]


def stats(chain: ToolCallChain) -> Any:
    snapshot = chain.statistics()
    assert snapshot is not None
    return snapshot


@pytest.mark.parametrize("kind", KINDS)
async def test_admits_runs_the_block_and_releases(kind: str) -> None:
    chain = make_chain(kind, ConcurrencyLimiter(2))
    async with chain.limit(tool="llm", tenant="acme", priority=2,
                           cost={"tokens": 10}) as handle:
        assert_type(handle, CallHandle)
        assert stats(chain).in_flight == 1
        assert handle.call.tool == "llm" and handle.call.tenant == "acme"
        assert handle.call.priority == 2 and handle.call.cost == {"tokens": 10.0}
        assert handle.lease is not None and handle.waited == 0.0
    assert stats(chain).in_flight == 0 and stats(chain).admitted == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_while_waiting_leaves_the_queue(kind: str) -> None:
    chain = make_chain(kind, ConcurrencyLimiter(1))
    release = asyncio.Event()
    entered: list[str] = []

    async def user(name: str) -> None:
        async with chain.limit(tool="t"):
            entered.append(name)
            await release.wait()

    first = asyncio.ensure_future(user("first"))
    second = asyncio.ensure_future(user("second"))
    await settle()
    assert entered == ["first"] and stats(chain).tasks_waiting == 1
    second.cancel()
    await settle()
    assert second.cancelled()
    assert stats(chain).tasks_waiting == 0 and stats(chain).cancelled == 1
    release.set()
    await first
    assert entered == ["first"] and stats(chain).in_flight == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_while_holding_gives_the_permit_to_the_next(kind: str) -> None:
    chain = make_chain(kind, ConcurrencyLimiter(1))
    entered: list[str] = []
    forever = asyncio.Event()

    async def user(name: str) -> None:
        async with chain.limit(tool="t"):
            entered.append(name)
            await forever.wait()

    first = asyncio.ensure_future(user("first"))
    second = asyncio.ensure_future(user("second"))
    await settle()
    assert entered == ["first"]
    first.cancel()
    await settle()
    assert first.cancelled() and entered == ["first", "second"]
    assert stats(chain).in_flight == 1
    second.cancel()
    await settle()
    assert stats(chain).in_flight == 0 and stats(chain).tasks_waiting == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refusal_raises_before_the_block(kind: str) -> None:
    chain = make_chain(kind, Backpressure(max_queue=0), ConcurrencyLimiter(1))
    ran = []
    async with chain.limit(tool="t"):
        with pytest.raises(QueueFull):
            async with chain.limit(tool="t"):
                ran.append("never")
    assert ran == [] and stats(chain).in_flight == 0
    assert dict(stats(chain).rejected) == {"queue_full": 1}


@pytest.mark.parametrize("kind", KINDS)
async def test_timeout_bounds_the_wait(kind: str) -> None:
    clock = ManualClock()
    chain = make_chain(kind, ConcurrencyLimiter(1), clock=clock)
    outcome: list[BaseException] = []

    async def waiter() -> None:
        try:
            async with chain.limit(tool="t", timeout=2.0):
                pass
        except WaitTimeout as error:
            outcome.append(error)

    async with chain.limit(tool="t"):
        task = asyncio.ensure_future(waiter())
        await drive(clock, [task])
    assert len(outcome) == 1 and clock.now() == 2.0
    assert stats(chain).in_flight == 0 and stats(chain).tasks_waiting == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_the_blocks_exception_propagates_unchanged(kind: str) -> None:
    chain = make_chain(kind, ConcurrencyLimiter(1))
    boom = ValueError("boom")
    with pytest.raises(ValueError) as raised:
        async with chain.limit(tool="t"):
            raise boom
    assert raised.value is boom and stats(chain).in_flight == 0
    if kind == "with_steps":
        step = chain.steps[-1]
        assert isinstance(step, Passthrough) and step.errors == [boom]


class RateLimited(Exception):
    """What an SDK raises on a 429: carries ``retry_after``."""

    retry_after = 3.0


@pytest.mark.parametrize("kind", KINDS)
async def test_reported_answers_and_errors_feed_the_steps(kind: str) -> None:
    clock = ManualClock()
    rate = TokenBucketRateLimiter([Rate(100, per=1, burst=100),
                                   Rate(1000, per=1, burst=1000, dimension="tokens")],
                                  key="global")
    chain = make_chain(kind, rate, clock=clock)
    async with chain.limit(tool="llm", cost={"tokens": 500}) as handle:
        handle.adjust({"tokens": 100})
        handle.report({"retry_after": 2.0})
    buckets = {b.dimension: b for b in stats(chain).buckets}
    assert buckets["tokens"].available == pytest.approx(900)  # charged 100, not 500
    assert chain.pause is not None  # the chain's ProviderPause: paused for everybody
    assert chain.pause.paused() == {"llm": pytest.approx(2.0)}
    clock.advance(2.0)
    with pytest.raises(RateLimited):
        async with chain.limit(tool="llm"):
            raise RateLimited
    assert chain.pause.paused() == {"llm": pytest.approx(3.0)}
    if kind == "with_steps":
        step = chain.steps[-1]
        assert isinstance(step, Passthrough) and step.results == [{"retry_after": 2.0}]


async def test_a_header_learner_and_a_breaker_see_the_block() -> None:
    rate = TokenBucketRateLimiter(Rate(10, per=1, burst=10), key="global")
    learner = RateLimitHeaderLearner(rate)
    breaker = ToolCircuitBreaker(failure_threshold=2, reset_timeout=60)
    chain = ToolCallChain([breaker, rate, ConcurrencyLimiter(4), learner])

    class Response:
        status_code = 200
        headers = {"x-ratelimit-limit-requests": "1200"}

    async with chain.limit(tool="llm") as handle:
        handle.report(Response())
    assert learner.updates == 1  # the rates were re-set from the reported headers
    for _ in range(2):
        with pytest.raises(OSError):
            async with chain.limit(tool="llm"):
                raise OSError("connection reset")
    with pytest.raises(CircuitOpen):
        async with chain.limit(tool="llm"):
            pytest.fail("an open breaker must refuse before the block")
    assert stats(chain).in_flight == 0


async def test_a_retrying_step_is_refused_with_a_clear_error() -> None:
    async def retry(call: ToolCall, proceed: Proceed) -> Any:
        try:
            return await proceed(call)
        except ValueError:
            return await proceed(call)

    chain = ToolCallChain([ConcurrencyLimiter(1), retry])
    with pytest.raises(ConfigError, match="block runs once"):
        async with chain.limit(tool="t"):
            raise ValueError("first attempt")
    assert stats(chain).in_flight == 0


async def test_a_step_that_never_proceeds_is_refused() -> None:
    async def cached(call: ToolCall, proceed: Proceed) -> Any:
        return "from cache"

    chain = ToolCallChain([ConcurrencyLimiter(1), cached])
    with pytest.raises(ConfigError, match="without calling proceed"):
        async with chain.limit(tool="t"):
            pytest.fail("unreachable")
    assert stats(chain).in_flight == 0


async def test_a_chain_without_limiters_still_runs_its_steps() -> None:
    step = Passthrough()
    chain = ToolCallChain([step])
    async with chain.limit(tool="t") as handle:
        handle.report("answer")
        assert handle.lease is None
    assert step.results == ["answer"]


async def test_a_block_is_entered_once() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)])
    block = chain.limit(tool="t")
    async with block:
        pass
    with pytest.raises(RuntimeError, match="once"):
        async with block:
            pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tool": ""}, "tool must be a non-empty str"),
        ({"tool": "t", "tenant": 3}, "tenant must be a str"),
        ({"tool": "t", "priority": "high"}, "priority must be an int"),
        ({"tool": "t", "priority": True}, "priority must be an int"),
        ({"tool": "t", "cost": {"tokens": -1}}, r"cost\['tokens'\] must be a finite number"),
        ({"tool": "t", "cost": [("tokens", 1)]}, "cost must be a mapping"),
        ({"tool": "t", "timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"tool": "t", "deadline": "soon"}, "deadline must be a time on the chain's clock"),
        ({"tool": "t", "run_id": 7}, "run_id must be a str"),
    ],
)
def test_invalid_arguments_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)], clock=ManualClock())
    with pytest.raises(ConfigError, match=message):
        chain.limit(**kwargs)


async def test_run_is_typed_by_its_target() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)])

    async def answer(call: ToolCall) -> int:
        return 42

    result = await chain.run(ToolCall("t"), answer)
    assert_type(result, int)  # checked by mypy --strict over the tests
    assert result == 42


# -- random schedules --------------------------------------------------------------------
Action = tuple[str, int, float]  # (when to cancel: "none"/"waiting"/"holding", priority, hold)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    cap=st.integers(1, 4),
    max_queue=st.integers(0, 12),
    actions=st.lists(
        st.tuples(st.sampled_from(["none", "waiting", "holding", "raise"]),
                  st.integers(0, 3), st.floats(0.0, 2.0)),
        min_size=1, max_size=25),
)
def test_random_schedules_never_exceed_the_cap_and_leak_nothing(
    kind: str, cap: int, max_queue: int, actions: list[Action],
) -> None:
    asyncio.run(_schedule(kind, cap, max_queue, actions))


async def _schedule(kind: str, cap: int, max_queue: int, actions: list[Action]) -> None:
    clock = ManualClock()
    chain = make_chain(kind, Backpressure(max_queue=max_queue), PriorityFairQueue(),
                       ConcurrencyLimiter(cap), clock=clock)
    in_block = 0
    peak = 0
    holding: set[int] = set()
    outcomes: dict[int, str] = {}

    async def user(index: int, hold: float, fail: bool) -> None:
        nonlocal in_block, peak
        try:
            async with chain.limit(tool="t", priority=actions[index][1]):
                in_block += 1
                peak = max(peak, in_block)
                holding.add(index)
                try:
                    await clock_sleep(clock, hold)
                    if fail:
                        raise KeyError(index)
                finally:
                    in_block -= 1
            outcomes[index] = "admitted"
        except QueueFull:
            outcomes[index] = "refused"
        except KeyError:
            outcomes[index] = "failed"
        except asyncio.CancelledError:
            outcomes[index] = "cancelled"
            raise

    tasks = [asyncio.ensure_future(user(i, hold, when == "raise"))
             for i, (when, _, hold) in enumerate(actions)]
    await settle()
    for i, (when, _, _) in enumerate(actions):  # cancel the chosen ones where they now are
        waiting = i not in outcomes and i not in holding
        if (when == "waiting" and waiting) or (when == "holding" and not waiting):
            tasks[i].cancel()
        await settle()
        assert in_block <= cap
    await drive(clock, tasks)
    assert peak <= cap
    snapshot = stats(chain)
    assert snapshot.in_flight == 0 and snapshot.tasks_waiting == 0
    for i, task in enumerate(tasks):  # every call ended one way or another, none lost
        assert task.done()
        assert outcomes.get(i) in {"admitted", "refused", "failed", "cancelled"}
