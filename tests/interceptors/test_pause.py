"""ProviderPause: a Retry-After stops a key for every caller, in the admission gate."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    DeadlineUnmeetable,
    ManualClock,
    ProviderPause,
    QueueFull,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from stageflow_plus.interceptors.call import Proceed
from stageflow_plus.testing import drive, settle

pytestmark = pytest.mark.anyio


def _provider(clock: ManualClock, starts: list[tuple[str, float]],
              answers: dict[int, Any]) -> Any:
    async def tool(call: ToolCall) -> Any:
        starts.append((call.tool, clock.now()))
        return answers.get(len(starts), {"status": 200})
    return tool


async def test_concurrency_only_chain_pauses_every_caller_queued_ones_included() -> None:
    clock = ManualClock()
    chain = ToolCallChain([ConcurrencyLimiter(2)], clock=clock)  # no rate limiter at all
    assert chain.pause is not None
    starts: list[tuple[str, float]] = []
    release = asyncio.Event()

    async def tool(call: ToolCall) -> Any:
        starts.append((call.tool, clock.now()))
        if call.payload.get("slow"):
            await release.wait()
            return {"status": 429, "retry_after": 3.0}
        return {"status": 200}

    slow = [asyncio.ensure_future(chain.run(ToolCall("api", payload={"slow": True}), tool))
            for _ in range(2)]
    queued = [asyncio.ensure_future(chain.run(ToolCall("api"), tool)) for _ in range(3)]
    other = asyncio.ensure_future(chain.run(ToolCall("other"), tool))
    await settle()
    assert len(starts) == 2  # two slow calls hold both permits; three wait (and "other")
    release.set()  # both answer 429 + Retry-After 3 s: the queued three must wait for it
    await settle()
    assert chain.pause.paused() == {"api": pytest.approx(3.0)}
    assert other.done()  # another key is not paused
    assert [t for t, _ in starts].count("api") == 2
    clock.advance(2.9)
    await settle()
    assert not any(t.done() for t in queued)
    await drive(clock, queued)
    assert [at for tool, at in starts if tool == "api"][2:] == [pytest.approx(3.0)] * 3
    assert all(t.done() for t in slow)
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0


async def test_provider_pause_is_capped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    chain = ToolCallChain([ConcurrencyLimiter(5), ProviderPause(max_pause=60)], clock=clock)
    starts: list[tuple[str, float]] = []
    huge = {"status": 429, "headers": {"retry-after": "1e12"}}
    tool = _provider(clock, starts, {1: huge, 2: huge})
    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        await chain.run(ToolCall("api"), tool)
        assert chain.pause is not None and chain.pause.paused()["api"] == pytest.approx(60.0)
        clock.advance(30)
        second = asyncio.ensure_future(chain.run(ToolCall("api"), tool))
        await drive(clock, [second])
        assert starts[1][1] == pytest.approx(60.0)  # the max_pause, not 10^12 s
        # the second answer is capped too: a new pause, logged again (once per pause)
    capped = [r for r in caplog.records if "capped at max_pause" in r.getMessage()]
    assert len(capped) == 2
    assert chain.pause.paused()["api"] == pytest.approx(60.0)


async def test_unusable_provider_values_are_ignored_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    chain = ToolCallChain([ConcurrencyLimiter(5)], clock=clock)
    for junk in ("nan", "inf", "-5", "soon"):
        with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
            await chain.run(ToolCall("api"), _provider(clock, [], {1: {
                "status": 429, "headers": {"retry-after": junk}}}))
        assert chain.pause is not None and chain.pause.paused() == {}
        assert any(junk in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1.0, True, "2", None])
async def test_a_programmer_pause_with_a_bad_value_is_refused(bad: Any) -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)], clock=ManualClock())
    assert chain.pause is not None
    with pytest.raises(ConfigError, match="seconds"):
        chain.pause.pause("api", bad)
    rate = TokenBucketRateLimiter(Rate(1))
    ToolCallChain([rate], clock=ManualClock())
    with pytest.raises(ConfigError):
        rate.pause("api", bad)


async def test_rate_limiter_pause_is_capped() -> None:
    clock = ManualClock()
    rate = TokenBucketRateLimiter(Rate(10), max_pause=5)
    chain = ToolCallChain([rate], clock=clock)
    rate.pause("api", 1e12)
    stats = chain.statistics()
    assert stats is not None and {b.paused_for for b in stats.buckets} == {5.0}
    with pytest.raises(ConfigError):
        TokenBucketRateLimiter(Rate(1), max_pause=math.inf)


async def test_pause_key_is_yours_and_independent_of_the_rate_key() -> None:
    clock = ManualClock()
    rate = TokenBucketRateLimiter(Rate(100), key="global")
    chain = ToolCallChain([rate, ProviderPause(key="tenant")], clock=clock)
    starts: list[tuple[str, float]] = []
    tool = _provider(clock, starts, {1: {"status": 429, "retry_after": 1.0}})
    await chain.run(ToolCall("api", tenant="acme"), tool)
    same_tenant = asyncio.ensure_future(chain.run(ToolCall("other", tenant="acme"), tool))
    other_tenant = asyncio.ensure_future(chain.run(ToolCall("api", tenant="zeta"), tool))
    await settle()
    assert other_tenant.done() and not same_tenant.done()
    await drive(clock, [same_tenant])
    with pytest.raises(ConfigError):
        ProviderPause(key="model")
    with pytest.raises(ConfigError):
        ToolCallChain([ConcurrencyLimiter(1)], provider_pause="yes")  # type: ignore[arg-type]
    off = ToolCallChain([ConcurrencyLimiter(1)], provider_pause=False)
    assert off.pause is None and off.gate is not None and len(off.gate.parts) == 1


async def test_deadline_aware_refusal_sees_the_pause_and_rejections_never_pause() -> None:
    clock = ManualClock()
    chain = ToolCallChain([Backpressure(max_queue=10), ConcurrencyLimiter(3)], clock=clock)
    await chain.run(ToolCall("api"), _provider(clock, [], {1: {"status": 503,
                                                                "retry_after": 5.0}}))
    with pytest.raises(DeadlineUnmeetable):
        await chain.run(ToolCall("api", deadline=clock.now() + 1.0), _provider(clock, [], {}))

    async def refuse(call: ToolCall, proceed: Proceed) -> Any:
        raise QueueFull("further in", retry_after=9.0)

    inner = ToolCallChain([ConcurrencyLimiter(1), refuse], clock=clock)
    with pytest.raises(QueueFull):
        await inner.run(ToolCall("api"), _provider(clock, [], {}))
    assert inner.pause is not None and inner.pause.paused() == {}


async def test_ended_pauses_are_forgotten() -> None:
    clock = ManualClock()
    chain = ToolCallChain([ConcurrencyLimiter(10)], clock=clock)
    pause = chain.pause
    assert pause is not None
    for i in range(200):
        pause.pause(f"key{i}", 1.0)
    clock.advance(2.0)
    await chain.run(ToolCall("api"), _provider(clock, [], {}))
    assert not pause._paused  # swept on the next admission


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["call", "cancel", "pause", "advance"]),
                          st.integers(0, 2), st.floats(0.0, 2.0)), min_size=1, max_size=40))
def test_random_schedules_never_start_a_paused_key_nor_leak(
    steps: list[tuple[str, int, float]],
) -> None:
    async def scenario() -> None:
        clock = ManualClock()
        chain = ToolCallChain([ConcurrencyLimiter(2, per_tool=1)], clock=clock)
        pause = chain.pause
        assert pause is not None
        until: dict[str, float] = {}
        tasks: list[asyncio.Task[Any]] = []
        violations: list[str] = []

        async def tool(call: ToolCall) -> Any:
            if clock.now() < until.get(call.tool, -1.0) - 1e-9:
                violations.append(f"{call.tool} started at {clock.now()} < {until[call.tool]}")
            await asyncio.sleep(0)
            return {"status": 200}

        for action, index, amount in steps:
            key = f"t{index}"
            if action == "call":
                tasks.append(asyncio.ensure_future(chain.run(ToolCall(key), tool)))
            elif action == "cancel" and tasks:
                tasks[index % len(tasks)].cancel()
            elif action == "pause":
                pause.pause(key, amount)
                until[key] = max(until.get(key, -1.0), clock.now() + amount)
            else:
                clock.advance(amount)
            await settle()
        await drive(clock, tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not violations
        stats = chain.statistics()
        assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0
        assert all(p.in_use == 0 and p.waiting == 0 for p in stats.pools)

    asyncio.run(scenario())


@pytest.mark.parametrize("module", ["stageflow.tools.base", "stageflow.tools.definitions"])
async def test_stageflow_outputs_pause_only_when_their_data_says_so(module: str) -> None:
    import importlib

    import stageflow_plus.stageflow.tools  # noqa: F401  (registers the output types)

    output_type = importlib.import_module(module).ToolOutput
    clock = ManualClock()
    chain = ToolCallChain([ConcurrencyLimiter(10)], clock=clock)
    pause = chain.pause
    assert pause is not None

    async def empty(call: ToolCall) -> Any:
        return output_type(success=True)

    async def limited(call: ToolCall) -> Any:
        return output_type(success=False, data={"status": 429, "retry_after": 2.0})

    await chain.run(ToolCall("api"), empty)
    assert not pause._paused  # a success without data: nothing read, nothing paused
    await chain.run(ToolCall("api"), limited)
    assert pause._paused  # a 429 with Retry-After in data still pauses the key


class CountingPause(ProviderPause):
    """A pause that counts the results shown to it."""

    __slots__ = ("seen",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[Any] = []

    def after_result(self, call: ToolCall, lease: Any, result: Any) -> None:
        self.seen.append(result)
        super().after_result(call, lease, result)


@pytest.mark.parametrize(("result", "quiet"), [
    (None, True), ("text", True), (3, True), ([1], True), ((1,), True),
    ({"status": 200}, True), ({"status": 399, "body": "x"}, True),
    ({"status": 429}, False), ({"status": 200, "retry_after": 1.0}, False),
    ({"status": 200, "retry_after_ms": 10}, False), ({"status": 200, "headers": {}}, False),
    ({"status": 200, "response": object()}, False), ({"ok": True}, False),
    ({"status": "200"}, False), ({"status": True}, False), (object(), False),
])
def test_quiet_results_are_exactly_those_that_carry_no_provider_answer(
    result: Any, quiet: bool
) -> None:
    from stageflow_plus.interceptors.gate import quiet_result

    assert quiet_result(result) is quiet


async def test_a_quiet_result_skips_answer_only_observers_and_an_answer_reaches_them() -> None:
    from stageflow.tools.base import ToolOutput

    import stageflow_plus.stageflow.tools  # noqa: F401  (registers the output types)

    reads_all = CountingPause(key="tool", retry_after=lambda outcome: None)
    answers_only = CountingPause(key="tool")
    assert reads_all.reads_quiet_results() and not answers_only.reads_quiet_results()
    quiet = ToolOutput(success=True, data={"status": 200})
    loud = ToolOutput(success=False, data={"status": 429, "retry_after": 2.0})

    def answering(answer: Any) -> Proceed:
        async def tool(call: ToolCall) -> Any:
            return answer

        return tool

    for pause in (reads_all, answers_only):
        chain = ToolCallChain([ConcurrencyLimiter(10), pause], clock=ManualClock())
        await chain.run(ToolCall("api"), answering(quiet))
        await chain.run(ToolCall("api"), answering(None))
        await chain.run(ToolCall("other"), answering(loud))
        expected = [quiet, None, loud] if pause is reads_all else [loud]
        assert pause.seen == expected
        assert (pause is answers_only) == bool(pause._paused)  # (the callback answers None)


def test_the_learner_reads_quiet_results_only_when_it_reads_headers_itself_or_probes() -> None:
    from stageflow_plus import RateLimitHeaderLearner

    def rate() -> TokenBucketRateLimiter:
        return TokenBucketRateLimiter(Rate(10))

    assert not RateLimitHeaderLearner(rate()).reads_quiet_results()
    assert RateLimitHeaderLearner(rate(), probe=True).reads_quiet_results()
    assert RateLimitHeaderLearner(rate(), headers_of=lambda outcome: None).reads_quiet_results()
