"""Token estimates, usage readers, the estimate step and the usage reconciler."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from stageflow_plus import (
    ConcurrencyLimiter,
    ConfigError,
    ManualClock,
    Rate,
    TokenBucketRateLimiter,
    TokenEstimate,
    ToolCall,
    ToolCallChain,
    UsageReconciler,
    anthropic_usage,
    estimate_tokens,
    openai_usage,
)
from stageflow_plus.llm import chars_per_token, find_usage, tiktoken_counter

pytestmark = pytest.mark.anyio


def test_estimate_reads_both_request_shapes() -> None:
    openai_req = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 200,
                  "n": 2}
    assert estimate_tokens(openai_req) == {"tokens": 500.0, "input_tokens": 100.0,
                                           "output_tokens": 400.0}
    anthropic_req = {"system": [{"type": "text", "text": "y" * 40}], "max_tokens": 50,
                     "messages": [{"role": "user", "content": [{"type": "text",
                                                                "text": "z" * 80}]}]}
    assert estimate_tokens(anthropic_req) == {"tokens": 80.0, "input_tokens": 30.0,
                                              "output_tokens": 50.0}
    assert estimate_tokens({"prompt": "abcd"}, default_max_tokens=16)["tokens"] == 17.0
    assert estimate_tokens({"messages": [], "max_completion_tokens": 9},
                           counter=lambda t: 1)["output_tokens"] == 9.0
    for bad in ({"max_tokens": -1}, {"max_tokens": 1.5}, {"max_tokens": True}, {"n": "2"}):
        with pytest.raises(ConfigError):
            estimate_tokens(bad)
    with pytest.raises(ConfigError):
        estimate_tokens([])  # type: ignore[arg-type]
    assert chars_per_token("abcde") == 2


class _Usage:
    prompt_tokens = 120
    completion_tokens = 30
    input_tokens = 100
    output_tokens = 20
    cache_creation_input_tokens = 10
    cache_read_input_tokens = 500


class _Response:
    usage = _Usage()


class _Output:
    data: dict[str, Any] = {"response": _Response()}


def test_usage_readers_find_usage_anywhere() -> None:
    assert openai_usage(_Response()) == {"tokens": 150.0, "input_tokens": 120.0,
                                         "output_tokens": 30.0}
    assert openai_usage(_Output())["tokens"] == 150.0  # type: ignore[index]
    assert openai_usage({"usage": {"prompt_tokens": 1, "completion_tokens": 2}}) == {
        "tokens": 3.0, "input_tokens": 1.0, "output_tokens": 2.0}
    # cache reads do not count towards Anthropic's input-token limit; cache writes do
    assert anthropic_usage(_Output()) == {"tokens": 130.0, "input_tokens": 110.0,
                                          "output_tokens": 20.0}
    assert openai_usage({"usage": {"prompt_tokens": "many"}}) is None
    assert anthropic_usage({"usage": {"input_tokens": float("nan")}}) is None
    assert openai_usage(None) is None and find_usage("text") is None


def test_tiktoken_is_optional() -> None:
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install"):
            tiktoken_counter()


async def test_estimate_step_sets_the_cost_admission_charges() -> None:
    clock = ManualClock()
    rate = TokenBucketRateLimiter([Rate(100, burst=100),
                                   Rate(1000, burst=1000, dimension="tokens")], key="global")
    chain = ToolCallChain([TokenEstimate(tools=["llm"]), rate], clock=clock)
    seen: list[ToolCall] = []

    async def tool(call: ToolCall) -> Any:
        seen.append(call)
        return {}

    await chain.run(ToolCall("llm", payload={"prompt": "x" * 40, "max_tokens": 90}), tool)
    await chain.run(ToolCall("llm", payload={"prompt": "x"}, cost={"tokens": 7.0}), tool)
    await chain.run(ToolCall("search", payload={"q": "x"}), tool)
    assert seen[0].cost["tokens"] == 100.0 and seen[1].cost["tokens"] == 7.0
    assert "tokens" not in seen[2].cost
    stats = chain.statistics()
    assert stats is not None
    tokens = next(b for b in stats.buckets if b.dimension == "tokens")
    assert tokens.available == pytest.approx(1000 - 107)
    with pytest.raises(ConfigError):
        TokenEstimate(tools="llm")
    with pytest.raises(ConfigError):
        TokenEstimate(default_max_tokens=-1)


async def _charged_after(reconciler: UsageReconciler, result: Any) -> float:
    clock = ManualClock()
    rate = TokenBucketRateLimiter(Rate(1000, burst=1000, dimension="tokens"), key="global")
    chain = ToolCallChain([rate, reconciler, ConcurrencyLimiter(5)], clock=clock)

    async def tool(call: ToolCall) -> Any:
        return result

    await chain.run(ToolCall("llm", cost={"tokens": 300.0}), tool)
    stats = chain.statistics()
    assert stats is not None
    return 1000 - stats.buckets[0].available


async def test_reconciler_refunds_or_only_charges(caplog: pytest.LogCaptureFixture) -> None:
    used = {"usage": {"prompt_tokens": 50, "completion_tokens": 50}}
    more = {"usage": {"prompt_tokens": 300, "completion_tokens": 100}}
    assert await _charged_after(UsageReconciler(openai_usage), used) == pytest.approx(100)
    assert await _charged_after(UsageReconciler(openai_usage, refund=False),
                                used) == pytest.approx(300)
    assert await _charged_after(UsageReconciler(openai_usage, refund=False),
                                more) == pytest.approx(400)

    def broken(result: Any) -> Any:
        raise RuntimeError("bad reader")

    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        assert await _charged_after(UsageReconciler(broken), used) == pytest.approx(300)
        assert await _charged_after(UsageReconciler(lambda r: {"tokens": float("inf")}),
                                    used) == pytest.approx(300)
        junk: Any = lambda r: [1]  # noqa: E731 - a reader breaking its contract
        assert await _charged_after(UsageReconciler(junk), used) == pytest.approx(300)
    assert len([r for r in caplog.records if "usage" in r.getMessage()]) == 3
    with pytest.raises(ConfigError):
        UsageReconciler("reader")  # type: ignore[arg-type]


async def test_a_reader_failing_on_every_call_logs_one_line_then_a_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()

    def broken(result: Any) -> Any:
        raise RuntimeError("bad reader")

    rate = TokenBucketRateLimiter(Rate(1e6, per=1, dimension="tokens"), key="global")
    chain = ToolCallChain([rate, UsageReconciler(broken), ConcurrencyLimiter(5)], clock=clock)

    async def tool(call: ToolCall) -> Any:
        return {"answer": 42}

    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        results = [await chain.run(ToolCall("llm", cost={"tokens": 10.0}), tool)
                   for _ in range(50)]
        assert results == [{"answer": 42}] * 50  # every result kept
        lines = [r.getMessage() for r in caplog.records if "usage" in r.getMessage()]
        assert len(lines) == 1 and "bad reader" in lines[0]
        clock.advance(10.0)  # the window ends: one summary with the count
        lines = [r.getMessage() for r in caplog.records if "usage" in r.getMessage()]
    assert len(lines) == 2 and "49 more unusable usages" in lines[1], lines
