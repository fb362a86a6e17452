"""The real ``openai`` / ``anthropic`` / ``httpx`` / ``aiohttp`` clients against the loopback
simulator: every 429 shape pauses the tool for all callers on a concurrency-only chain, and
limits learned or configured hold with no call lost."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import pytest
from stageflow.pipeline.retry import RateLimitError
from stageflow.tools import ToolRegistry
from stageflow.tools.base import ToolOutput

import stageflow_plus
from stageflow_plus import ConcurrencyLimiter, ManualClock, ToolCall, ToolCallChain
from stageflow_plus.bench.llm_tools import (
    ANTHROPIC_ACTION,
    OPENAI_ACTION,
    AnthropicMessagesTool,
    OpenAIChatTool,
)
from stageflow_plus.bench.provider import ProviderLimits, ProviderSimulator
from stageflow_plus.testing import SimpleAction, settle

pytestmark = pytest.mark.anyio

KEY = "sk-loopback-test"  # the simulator checks no key; never a real one
MESSAGES: Any = [{"role": "user", "content": "Say hello." * 10}]
OPENAI_429 = {"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                        "code": "rate_limit_exceeded"}}
ANTHROPIC_429 = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
ROOMY = ProviderLimits(rpm=60_000, tpm=10_000_000, max_concurrent=100, latency_ms=1)


def _openai(sim: ProviderSimulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key=KEY, max_retries=0)


def _anthropic(sim: ProviderSimulator) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY, max_retries=0)


async def _openai_call(sim: ProviderSimulator) -> Any:
    async with _openai(sim) as client:
        return await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)


async def _anthropic_call(sim: ProviderSimulator) -> Any:
    async with _anthropic(sim) as client:
        return await client.messages.create(model="m", messages=MESSAGES, max_tokens=5)


async def _httpx_call(sim: ProviderSimulator) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.post(sim.url + "/v1/chat/completions",
                                     json={"model": "m", "messages": MESSAGES})
        response.raise_for_status()  # an httpx.HTTPStatusError on the 429
        return response.json()


async def _aiohttp_call(sim: ProviderSimulator) -> Any:
    async with aiohttp.ClientSession(raise_for_status=True) as session, session.post(
        sim.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}
    ) as response:  # an aiohttp.ClientResponseError on the 429
        return await response.json()


async def _stageflow_call(sim: ProviderSimulator) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.post(sim.url + "/v1/chat/completions",
                                     json={"model": "m", "messages": MESSAGES})
        if response.status_code == 429:  # a tool reporting it the Stageflow way
            raise RateLimitError("rate limited", retry_after=1.5)
        return response.json()


SHAPES: dict[str, tuple[Callable[[ProviderSimulator], Awaitable[Any]], dict[str, str], Any,
                        float, type[BaseException]]] = {
    "openai.RateLimitError retry-after-ms": (
        _openai_call, {"retry-after-ms": "1500", "retry-after": "2"}, OPENAI_429, 1.5,
        openai.RateLimitError),
    "anthropic.RateLimitError retry-after": (
        _anthropic_call, {"retry-after": "2"}, ANTHROPIC_429, 2.0, anthropic.RateLimitError),
    "httpx.HTTPStatusError HTTP-date": (
        _httpx_call, {"retry-after": "DATE"}, OPENAI_429, 30.0, httpx.HTTPStatusError),
    "aiohttp.ClientResponseError": (
        _aiohttp_call, {"Retry-After": "3"}, OPENAI_429, 3.0, aiohttp.ClientResponseError),
    "stageflow RateLimitError": (
        _stageflow_call, {}, OPENAI_429, 1.5, RateLimitError),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_every_429_shape_pauses_the_tool_for_all_callers(shape: str) -> None:
    call, headers, body, wait, error_type = SHAPES[shape]
    clock = ManualClock()
    chain = ToolCallChain([ConcurrencyLimiter(4)], clock=clock)  # no rate limiter
    async with ProviderSimulator(ROOMY) as sim:
        if headers.get("retry-after") == "DATE":
            headers = {"retry-after": email.utils.formatdate(time.time() + 30, usegmt=True)}
        sim.script(429, headers, body)

        async def tool(c: ToolCall) -> Any:
            return await call(sim)

        with pytest.raises(error_type):
            await chain.run(ToolCall("llm"), tool)
        assert chain.pause is not None
        paused = chain.pause.paused()["llm"]
        assert wait - 1.1 < paused <= wait + 1e-6  # (an HTTP-date has whole seconds)
        sent = sim.counters["requests"]
        callers = [asyncio.ensure_future(chain.run(ToolCall("llm"), tool)) for _ in range(3)]
        await settle()
        stats = chain.statistics()
        assert stats is not None and stats.tasks_waiting == 3  # free permits, yet all wait
        clock.advance(paused - 0.01)
        await settle()
        assert sim.counters["requests"] == sent and not any(c.done() for c in callers)
        clock.advance(0.02)
        await asyncio.wait_for(asyncio.gather(*callers), 30)
        assert sim.counters["requests"] == sent + 3 and sim.counters["ok"] == 3


def _registry(sim: ProviderSimulator) -> tuple[ToolRegistry, list[Any]]:
    registry = ToolRegistry()
    clients = [_openai(sim), _anthropic(sim)]
    registry.register(OpenAIChatTool(clients[0]))
    registry.register(AnthropicMessagesTool(clients[1]))
    return registry, clients


async def _burst(limited: Any, action: str, n: int, max_tokens: int,
                 extra: dict[str, Any] | None = None) -> list[Any]:
    payload = {"model": "m", "messages": MESSAGES, "max_tokens": max_tokens, **(extra or {})}
    return await asyncio.gather(*(limited.execute(SimpleAction(action, payload), {})
                                  for _ in range(n)), return_exceptions=True)


async def test_exact_limits_lose_no_call_and_429s_stay_at_most_one_per_burst() -> None:
    """The issue's set-up, scaled: the provider enforces exactly the configured limits."""
    limits = ProviderLimits(rpm=6000, tpm=1_200_000, max_concurrent=1000, latency_ms=20)
    async with ProviderSimulator(limits) as sim:
        registry, clients = _registry(sim)
        plus = stageflow_plus.build({"llm": {"provider": "openai", "tools": [OPENAI_ACTION],
                                             "rpm": 6000, "tpm": 1_200_000}}, env={})
        limited = plus.registry(registry)
        outs: list[Any] = []
        for _ in range(3):
            outs += await _burst(limited, OPENAI_ACTION, 60, 275)  # ~300 tokens a call
        for client in clients:
            await client.close()
    assert all(isinstance(o, ToolOutput) and o.success for o in outs), outs[:3]
    assert sim.counters["ok"] == 180
    assert sim.counters["http_429"] <= 3


async def test_learned_limits_from_nothing_with_both_clients() -> None:
    limits = ProviderLimits(rpm=1200, tpm=120_000, max_concurrent=1000, latency_ms=20,
                            input_tpm=600_000)
    async with ProviderSimulator(limits, output_fraction=0.2) as sim:
        registry, clients = _registry(sim)
        for provider, action in (("openai", OPENAI_ACTION), ("anthropic", ANTHROPIC_ACTION)):
            sim.reset()
            plus = stageflow_plus.build({"llm": {"provider": provider, "tools": [action]}},
                                        env={})
            limited = plus.registry(registry)
            outs = await _burst(limited, action, 30, 200)
            assert all(isinstance(o, ToolOutput) and o.success for o in outs), outs[:3]
            assert sim.counters["http_429"] <= 1  # the target; a loaded machine may see one
            learner = next(p for p in plus.chain.gate.parts  # type: ignore[union-attr]
                           if isinstance(p, stageflow_plus.RateLimitHeaderLearner))
            learned = learner.learned(f"llm:{provider}")
            assert learned["requests"] == 1200
            assert learned["tokens" if provider == "openai" else "output_tokens"] == 120_000
        for client in clients:
            await client.close()


async def test_anthropic_usage_refunds_unused_max_tokens() -> None:
    limits = ProviderLimits(rpm=60_000, tpm=6000, max_concurrent=100, latency_ms=1)
    async with ProviderSimulator(limits, output_fraction=0.2) as sim:
        registry, clients = _registry(sim)
        plus = stageflow_plus.build({"llm": {"provider": "anthropic",
                                             "tools": [ANTHROPIC_ACTION], "output_tpm": 6000,
                                             "safety": 1.0, "retry": False}}, env={})
        limited = plus.registry(registry)
        outs = await _burst(limited, ANTHROPIC_ACTION, 1, 50)
        stats = plus.chain.statistics()
        for client in clients:
            await client.close()
    assert isinstance(outs[0], ToolOutput) and outs[0].data is not None
    assert outs[0].data["response"].usage.output_tokens == 10
    assert stats is not None
    output = next(b for b in stats.buckets if b.dimension == "output_tokens")
    assert output.available == pytest.approx(100 - 10, abs=1.0)  # 50 reserved, 40 refunded
