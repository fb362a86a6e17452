"""Published limits → settings (Little's law), header learning, Retry-After pauses everybody."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stageflow.tools.base import ToolOutput

from stageflow_plus import (
    ConfigError,
    ManualClock,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from stageflow_plus.interceptors.provider_feedback import (
    RateLimitHeaderLearner,
    default_headers_of,
    limits_from_provider,
    parse_duration,
)
from stageflow_plus.testing import drive, settle

pytestmark = pytest.mark.anyio


def test_littles_law_with_margin_capped_by_the_provider() -> None:
    s = limits_from_provider(rpm=600, tpm=60_000, max_concurrent=50, latency_s=2.0, safety=0.9)
    assert s.calls_per_second == pytest.approx(9.0)  # 0.9 * 600/60
    assert s.concurrency == 27  # ceil(9 calls/s * 2 s * 1.5)
    requests, tokens = s.rates
    assert (requests.dimension, requests.limit, requests.per) == ("requests", 540, 60.0)
    assert requests.capacity == pytest.approx(9.0)  # one second's worth
    assert (tokens.dimension, tokens.limit) == ("tokens", 54_000)
    assert tokens.capacity == pytest.approx(900.0)
    capped = limits_from_provider(rpm=600, max_concurrent=10, latency_s=2.0, safety=0.9)
    assert capped.concurrency == 10 and len(capped.rates) == 1
    # tokens bind when calls are large: 60 000 / 60 / 200 = 5 calls/s
    by_tokens = limits_from_provider(rpm=600, tpm=60_000, latency_s=2.0, safety=1.0,
                                     mean_tokens=200, margin=1.0)
    assert by_tokens.calls_per_second == pytest.approx(5.0) and by_tokens.concurrency == 10
    tiny = limits_from_provider(rpm=6, latency_s=0.01)
    assert tiny.concurrency == 1


@pytest.mark.parametrize("kwargs", [
    {"rpm": 0}, {"rpm": 60, "safety": 0.0}, {"rpm": 60, "safety": 1.5},
    {"rpm": 60, "max_concurrent": 0}, {"rpm": 60, "latency_s": -1.0},
    {"rpm": 60, "margin": 0.5}, {"rpm": float("inf")},
])
def test_bad_published_limits_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        limits_from_provider(**kwargs)


def test_parse_duration() -> None:
    assert parse_duration("1s") == 1.0
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration("1m30.5s") == pytest.approx(90.5)
    assert parse_duration("2") == 2.0
    assert parse_duration("soon") is None
    assert parse_duration("") is None


def _limiter(clock: ManualClock) -> tuple[TokenBucketRateLimiter, ToolCallChain]:
    limiter = TokenBucketRateLimiter(
        [Rate(600, per=60, burst=10), Rate(60_000, per=60, burst=1000, dimension="tokens")],
        key="global")
    return limiter, ToolCallChain([limiter], clock=clock)


def _rates(limiter: TokenBucketRateLimiter) -> dict[str, float]:
    return {b.dimension: b.rate for b in limiter.bucket_statistics(0.0)}


async def test_learner_sets_rates_from_headers_once_per_change() -> None:
    clock = ManualClock()
    limiter, chain = _limiter(clock)
    await chain.run(ToolCall("t"), _ok({}))  # creates the "*" buckets
    learner = RateLimitHeaderLearner(limiter, safety=1.0)
    headers = {"X-RateLimit-Limit-Requests": "1200", "x-ratelimit-limit-tokens": "120000",
               "x-ratelimit-remaining-requests": "5"}
    learner.observe(headers)
    learner.observe(headers)
    assert learner.updates == 1
    assert _rates(limiter) == {"requests": pytest.approx(20.0), "tokens": pytest.approx(2000.0)}
    learner.observe({"x-ratelimit-limit-requests": "garbage"})
    assert learner.updates == 1


async def test_learner_pauses_an_exhausted_key_until_one_request_refills() -> None:
    clock = ManualClock()
    limiter, chain = _limiter(clock)
    learner = RateLimitHeaderLearner(limiter, safety=1.0)
    await chain.run(ToolCall("t"), _ok({}))
    learner.observe({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                     "x-ratelimit-reset-requests": "30s"}, key="*")
    paused = {b.dimension: b.paused_for for b in limiter.bucket_statistics(clock.now())}
    assert paused["requests"] == pytest.approx(1.0)  # 60/min: one request per second


def _ok(data: dict[str, Any]) -> Any:
    async def target(call: ToolCall) -> ToolOutput:
        return ToolOutput(success=True, data=data)

    return target


async def test_retry_after_pauses_the_key_for_every_caller() -> None:
    clock = ManualClock()
    _, chain = _limiter(clock)
    ran: list[tuple[str, float]] = []

    async def provider(call: ToolCall) -> ToolOutput:
        ran.append((call.tenant, clock.now()))
        if call.tenant == "first":
            return ToolOutput(success=False, data={"retry_after": 2.0, "status": 429})
        return ToolOutput(success=True, data={})

    refused = await chain.run(ToolCall("t", tenant="first"), provider)
    assert refused.data is not None and refused.data["retry_after"] == 2.0
    others = [asyncio.ensure_future(chain.run(ToolCall("t", tenant=f"t{i}"), provider))
              for i in range(3)]
    await settle()
    stats = chain.statistics()
    assert stats is not None and stats.tasks_waiting == 3  # plenty of tokens, yet all wait
    clock.advance(1.9)
    await settle()
    assert len(ran) == 1
    await drive(clock, others)
    assert [t for t, _ in ran[1:]] == ["t0", "t1", "t2"]
    assert all(at == pytest.approx(2.0) for _, at in ran[1:])


async def test_learner_as_an_interceptor_reads_tool_output_headers() -> None:
    clock = ManualClock()
    limiter = TokenBucketRateLimiter(Rate(600, per=60, burst=10), key="global")
    learner = RateLimitHeaderLearner(limiter, safety=0.5)
    chain = ToolCallChain([limiter, learner], clock=clock)
    out = await chain.run(ToolCall("t"), _ok({"headers": {"x-ratelimit-limit-requests": "240"}}))
    assert out.success and learner.updates == 1
    assert _rates(limiter) == {"requests": pytest.approx(2.0)}  # 0.5 * 240 / 60
    assert default_headers_of(object()) is None
    assert "RateLimitHeaderLearner" in repr(learner)


async def test_learner_reads_anthropic_headers_and_measures_the_bucket() -> None:
    clock = ManualClock()
    limiter = TokenBucketRateLimiter(
        [Rate(1e9, per=60), Rate(1e9, per=60, dimension="output_tokens")], key="global")
    learner = RateLimitHeaderLearner(limiter, safety=1.0, wall_clock=lambda: 1000.0)
    chain = ToolCallChain([limiter, learner], clock=clock)
    await chain.run(ToolCall("t"), _ok({}))
    learner.observe({
        "anthropic-ratelimit-requests-limit": "60",
        "anthropic-ratelimit-requests-remaining": "10",
        "anthropic-ratelimit-requests-reset": "1970-01-01T00:16:50Z",  # 10 s after 1000
        "anthropic-ratelimit-output-tokens-limit": "6000",
    }, key="*")
    assert learner.learned("*") == {"requests": 60.0, "output_tokens": 6000.0}
    buckets = {b.dimension: b for b in limiter.bucket_statistics(clock.now())}
    assert buckets["requests"].rate == pytest.approx(1.0)
    assert buckets["requests"].burst == pytest.approx(20.0)  # 10 left + 10 s of refill
    assert buckets["requests"].available == pytest.approx(10.0)  # what the provider has
    assert buckets["output_tokens"].burst == pytest.approx(100.0)  # no reset: burst_s of rate


async def test_probe_keeps_one_call_in_flight_until_the_first_headers() -> None:
    clock = ManualClock()
    limiter = TokenBucketRateLimiter([Rate(1e9, per=60)], key="global")
    learner = RateLimitHeaderLearner(limiter, safety=1.0, probe=True, tools=["llm"])
    chain = ToolCallChain([limiter, learner], clock=clock)
    in_flight: list[int] = [0, 0]
    gate, later = asyncio.Event(), asyncio.Event()

    async def provider(call: ToolCall) -> ToolOutput:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        await (later if gate.is_set() else gate).wait()
        in_flight[0] -= 1
        return ToolOutput(success=True, data={"headers": {
            "x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-reset-requests": "10ms"}})

    calls = [asyncio.ensure_future(chain.run(ToolCall("llm"), provider)) for _ in range(5)]
    other = asyncio.ensure_future(chain.run(ToolCall("search"), _ok({})))
    await settle()
    assert in_flight == [1, 1] and other.done()  # one probe; other tools are not held
    gate.set()  # the probe answers with headers: the others go together
    await settle()
    assert in_flight == [4, 4] and learner.learned("*") == {"requests": 6000.0}
    later.set()
    await asyncio.gather(*calls)


def _asked(chain: ToolCallChain, call: ToolCall) -> list[tuple[Any, float]]:
    """The demands every part appends itself (the path without templates)."""
    assert chain.gate is not None
    out: list[Any] = []
    for part in chain.gate._demanders:
        part.add_demands(call, chain.now(), out)
    return out


@pytest.mark.parametrize("probe", [False, True])
async def test_learner_template_is_what_it_would_append(probe: bool) -> None:
    clock = ManualClock()
    limiter = TokenBucketRateLimiter(
        [Rate(600, per=60, burst=10), Rate(6000, per=60, dimension="tokens")], key="global")
    learner = RateLimitHeaderLearner(limiter, safety=1.0, probe=probe)
    chain = ToolCallChain([limiter, learner], clock=clock)
    assert learner.demand_template() is None  # no counters before the first call
    call = ToolCall("t", cost={"tokens": 7.0})
    await chain.run(call, _ok({}))
    assert chain.gate is not None and chain.gate.demands_of(call) == _asked(chain, call)
    probe_pools = [r for r, _ in chain.gate.demands_of(call) if r.key.startswith("probe:")]
    assert (learner.demand_template() is None) is probe and len(probe_pools) == int(probe)
    used = chain.gate._templates[chain.gate._demanders.index(learner)]
    assert (used is None) is probe  # the gate uses it from the first call on
    await chain.run(call, _ok({"headers": {"x-ratelimit-limit-requests": "240"}}))
    template = learner.demand_template()  # learned: no probe pool, the counters only
    assert template is not None and [d for _, d in template] == [None, "tokens"]
    assert chain.gate._templates[chain.gate._demanders.index(learner)] == template
    assert chain.gate.demands_of(call) == _asked(chain, call)
    assert [a for r, a in chain.gate.demands_of(call) if r.key.startswith("in_flight")] == [
        1.0, 7.0]
    per_tool = TokenBucketRateLimiter(Rate(60, per=60), key="tool")
    keyed = RateLimitHeaderLearner(per_tool)
    await ToolCallChain([per_tool, keyed], clock=clock).run(call, _ok({}))
    assert keyed.demand_template() is None  # a per-tool key: asked per call
