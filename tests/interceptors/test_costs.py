"""Costs, amounts and deadlines no limit can work with are refused at every boundary.

A NaN cost neither fits a bucket nor fails it: the limiter re-armed its timer for "now"
forever (a busy loop, every later call on the bucket stuck behind it). ``inf`` from
``actual_cost`` set a bucket to ``-inf``; NaN from it refilled the bucket; a negative
``cost_of`` was accepted; a string cost raised a bare ``ValueError``. Each boundary now
refuses with a :class:`ConfigError` naming the field, the tool and the value: the
``ToolCall`` fields, ``cost_of``'s return in ``build_call``, ``Lease.adjust`` /
``actual_cost``'s return, and the limiter's own demands as a last line of defence.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow_plus import (
    ConcurrencyLimiter,
    ConfigError,
    DeadlineUnmeetable,
    ManualClock,
    Rate,
    StageflowPlusError,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from stageflow_plus.primitives import Limiter, LoopClock, TokenBucket
from stageflow_plus.stageflow.tools import build_call
from stageflow_plus.testing import SimpleAction

pytestmark = pytest.mark.anyio

BAD_COSTS: list[tuple[Any, str]] = [
    (math.nan, "finite number >= 0, got float nan"),
    (math.inf, "finite number >= 0, got float inf"),
    (-math.inf, "finite number >= 0, got float -inf"),
    (-1, "finite number >= 0, got int -1"),
    (-0.5, "finite number >= 0, got float -0.5"),
    (10**400, "finite number >= 0, got int 1000"),
    ("12", "must be a number, got str '12'"),
    (True, "must be a number, got bool True"),
    (None, "must be a number, got NoneType None"),
    ([3], "must be a number, got list [3]"),
]


@pytest.mark.parametrize(("value", "message"), BAD_COSTS)
def test_a_tool_call_refuses_a_cost_it_cannot_be_charged(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=r"ToolCall\.cost") as refused:
        ToolCall("search", cost={"tokens": value})
    text = str(refused.value)
    assert "['tokens'] of tool 'search'" in text and message in text, text


def test_a_tool_call_refuses_a_cost_that_is_no_mapping_or_has_odd_names() -> None:
    with pytest.raises(ConfigError, match=r"ToolCall\.cost of tool 's' must be a mapping"):
        ToolCall("s", cost=[("tokens", 5)])
    with pytest.raises(ConfigError, match="cost names must be strings, got int 7"):
        ToolCall("s", cost={7: 5})
    call = ToolCall("s", cost={"tokens": 0, "dollars": 1e300, "n": 12})
    assert dict(call.cost) == {"tokens": 0, "dollars": 1e300, "n": 12}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"deadline": math.nan}, "deadline of tool 't' must be a number or None"),
        ({"deadline": "soon"}, "deadline of tool 't' must be a number or None"),
        ({"priority": 2**31 + 1}, "priority of tool 't' must be an int within"),
        ({"priority": 1.0}, "priority of tool 't' must be an int, got float 1.0"),
        ({"tenant": None}, "tenant of tool 't' must be a str, got NoneType None"),
        ({"run_id": 5}, "run_id of tool 't' must be a str or None, got int 5"),
    ],
)
def test_a_tool_call_refuses_other_fields_with_a_config_error(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ToolCall("t", **fields)


def test_a_tool_call_refuses_a_tool_name_that_is_no_string() -> None:
    with pytest.raises(ConfigError, match=r"ToolCall\.tool of tool 7 must be a str, got int 7"):
        ToolCall(7)


class CountingClock(LoopClock):
    """The loop's clock, counting the timers the limiter arms."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: list[float] = []

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        self.armed.append(when)
        return super().call_at(when, callback)


@pytest.mark.parametrize("amount", [math.nan, -1.0, -math.inf])
async def test_the_limiter_refuses_an_amount_it_can_neither_grant_nor_fail(
    amount: float,
) -> None:
    """No timer re-armed for "now" forever: the call is refused before it queues."""
    clock = CountingClock()
    limiter = Limiter(clock=clock)
    bucket = TokenBucket("tokens", Rate(10, dimension="tokens"), clock.now())
    with pytest.raises(ConfigError, match="amounts must be numbers >= 0"):
        await asyncio.wait_for(limiter.acquire([(bucket, amount)]), 1.0)
    for _ in range(20):  # a busy re-armed timer would show here
        await asyncio.sleep(0)
    assert clock.armed == [] and len(limiter) == 0
    assert bucket.level(clock.now()) == 10  # nothing taken (a negative take would add)
    with pytest.raises(ConfigError, match="amounts must be numbers >= 0"):
        limiter.try_acquire([(bucket, amount)])
    assert limiter.statistics().in_flight == 0


async def test_a_nan_cost_through_a_chain_never_reaches_the_bucket() -> None:
    """Before: accepted, queued, and the bucket's timer fired for "now" on every pass."""
    clock = ManualClock()
    rate = TokenBucketRateLimiter(Rate(5, dimension="tokens"), key="global")
    chain = ToolCallChain([rate], clock=clock)

    async def tool(call: ToolCall) -> str:
        return "ran"

    with pytest.raises(ConfigError, match="nan"):
        await chain.run(ToolCall("llm", cost={"tokens": math.nan}), tool)
    assert clock.pending_timers == 0
    assert await chain.run(ToolCall("llm", cost={"tokens": 5}), tool) == "ran"


@pytest.mark.parametrize("cost", [math.nan, math.inf, -1.0])
async def test_the_limiter_refuses_a_fair_share_cost_that_breaks_the_order(cost: float) -> None:
    clock = ManualClock()
    limiter = Limiter(clock=clock)
    bucket = TokenBucket("b", Rate(1, start_full=False), 0.0)
    with pytest.raises(ConfigError, match="fair-share cost must be a finite number >= 0"):
        await limiter.acquire([(bucket, 1.0)], cost=cost)
    assert clock.pending_timers == 0 and len(limiter) == 0


@pytest.mark.parametrize(
    ("actual", "message"),
    [
        ({"tokens": math.inf}, "actual cost 'tokens' of tool 'llm' must be a finite number"),
        ({"tokens": math.nan}, "actual cost 'tokens' of tool 'llm' must be a finite number"),
        ({"tokens": -3}, "actual cost 'tokens' of tool 'llm' must be a finite number"),
        ({"tokens": "40"}, "actual cost 'tokens' of tool 'llm' must be a finite number"),
        ({"tokens": False}, "actual cost 'tokens' of tool 'llm' must be a finite number"),
        ([("tokens", 4)], "actual cost of tool 'llm' must be a mapping"),
    ],
)
async def test_lease_adjust_refuses_an_actual_cost_and_charges_nothing(
    actual: Any, message: str
) -> None:
    clock = ManualClock()
    limiter = Limiter(clock=clock)
    bucket = TokenBucket("tokens", Rate(100, dimension="tokens"), 0.0)
    other = TokenBucket("dollars", Rate(100, dimension="dollars"), 0.0)
    lease = await limiter.acquire(
        [(bucket, 10.0), (other, 10.0)], info=ToolCall("llm", cost={"tokens": 10})
    )
    with pytest.raises(ConfigError, match=message):
        lease.adjust({"dollars": 50, **actual} if isinstance(actual, dict) else actual)
    assert bucket.level(0.0) == 90 and other.level(0.0) == 90  # all or nothing
    lease.release()


@pytest.mark.parametrize(
    ("estimate", "message"),
    [
        ({"tokens": -5}, "cost_of()['tokens'] for tool 'search' must be a finite number >= 0"),
        ({"tokens": math.nan}, "cost_of()['tokens'] for tool 'search' must be a finite"),
        ({"tokens": "5"}, "cost_of()['tokens'] for tool 'search' must be a number, got str"),
        (5, "cost_of() for tool 'search' must be a mapping of cost names to numbers, got int 5"),
    ],
)
def test_build_call_refuses_what_cost_of_returns_when_it_is_no_cost(
    estimate: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        build_call(SimpleAction("search", {"q": "x"}), {}, cost_of=lambda tool, payload: estimate)
    assert message in str(refused.value)
    assert isinstance(refused.value, StageflowPlusError)


def test_build_call_takes_a_cost_of_that_gives_no_estimate() -> None:
    call = build_call(SimpleAction("search"), {}, cost_of=lambda tool, payload: None)
    assert dict(call.cost) == {}
    call = build_call(SimpleAction("search"), {}, cost_of=lambda tool, payload: {"tokens": 7})
    assert dict(call.cost) == {"tokens": 7}


async def test_a_call_whose_deadline_has_passed_is_refused_even_with_capacity_free() -> None:
    clock = ManualClock(10.0)
    chain = ToolCallChain([ConcurrencyLimiter(5)], clock=clock)
    ran: list[str] = []

    async def tool(call: ToolCall) -> str:
        ran.append(call.tool)
        return "ran"

    for deadline in (9.5, -math.inf):
        with pytest.raises(DeadlineUnmeetable):
            await chain.run(ToolCall("late", deadline=deadline), tool)
    assert chain.gate is not None
    with pytest.raises(DeadlineUnmeetable):
        await chain.gate.acquire(ToolCall("late", deadline=9.0))
    assert await chain.run(ToolCall("now", deadline=10.0), tool) == "ran"  # starts in time
    assert await chain.run(ToolCall("never", deadline=math.inf), tool) == "ran"
    assert ran == ["now", "never"]
    limiter = Limiter(clock=clock)
    bucket = TokenBucket("b", Rate(5), 10.0)
    with pytest.raises(DeadlineUnmeetable):
        await limiter.acquire([(bucket, 1.0)], deadline=9.0)
    with pytest.raises(DeadlineUnmeetable):
        await limiter.acquire([(bucket, 1.0)], timeout=-1.0)
    with pytest.raises(ConfigError, match="deadline is NaN"):
        await limiter.acquire([(bucket, 1.0)], deadline=math.nan)
    with pytest.raises(ConfigError, match="timeout is NaN"):
        await limiter.acquire([(bucket, 1.0)], timeout=math.nan)
    assert bucket.level(10.0) == 5 and limiter.statistics().in_flight == 0



_cost_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                         st.booleans(), st.none(), st.text(max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.dictionaries(st.one_of(st.text(max_size=5), st.integers(0, 3)),
                                 _cost_values, max_size=4),
                 st.lists(st.floats(), max_size=2), st.none()))
def test_the_fast_cost_check_agrees_with_check_cost(estimate: Any) -> None:
    # make_call skips building check_cost's message for a plain dict of floats; it must
    # accept and refuse exactly what check_cost does
    from stageflow_plus.interceptors.call import _plain_cost, check_cost
    from stageflow_plus.stageflow.calls import make_call
    from stageflow_plus.testing import SimpleAction

    try:
        check_cost(estimate, "cost_of()", " for tool 'search'")
        expected: str | None = None
    except ConfigError as error:
        expected = str(error)
    if _plain_cost(estimate):
        assert expected is None
    action = SimpleAction("search", {})
    try:
        call = make_call(action, {}, lambda tool, payload: estimate, None)
    except ConfigError as error:
        assert estimate is not None and str(error) == expected
    else:
        assert estimate is None or (expected is None and call.cost == estimate)
