"""The real OpenAI and Anthropic clients under stageflow-plus, against a loopback provider.

Run: python examples/llm_clients.py   (needs the `llm` and `bench` extras)

1. No limits configured, the provider named: the limits are learned from the first answer's
   headers (one call in flight until then), then 30 calls go through with no 429.
2. A 429 in the provider's own shape (`openai.RateLimitError`, `retry-after-ms`) pauses the
   tool for every caller, and the retry step completes the call after the pause.
3. Anthropic reconciles unused `max_tokens`: so does the limiter, from the answer's `usage`.

The clients are made with `max_retries=0`: retries happen in stageflow-plus's ToolCallRetry,
outside the limits, never sleeping on a permit.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import anthropic
import openai
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

import stageflow_plus
from stageflow_plus.bench.provider import ProviderLimits, ProviderSimulator
from stageflow_plus.testing import SimpleAction

KEY = "sk-example"  # the loopback provider checks no key


class ChatTool(BaseTool):
    """An LLM tool as it should be written: raw response (headers reach the limiter),
    parsed answer (its usage is read), the client's exceptions left to propagate."""

    name = "chat"
    description = "OpenAI chat completion"
    action_type = "CHAT"

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        raw = await self.client.chat.completions.with_raw_response.create(
            **input.action.payload)
        return ToolOutput(success=True, data={"headers": raw.headers,
                                              "response": await parsed(raw)})


class AskTool(BaseTool):
    """The same for Anthropic's messages API."""

    name = "ask"
    description = "Anthropic message"
    action_type = "ASK"

    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self.client = client

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        raw = await self.client.messages.with_raw_response.create(**input.action.payload)
        return ToolOutput(success=True, data={"headers": raw.headers,
                                              "response": await parsed(raw)})


async def parsed(raw: Any) -> Any:
    """``raw.parse()``: plain in some client versions, a coroutine in others."""
    answer = raw.parse()
    return await answer if inspect.isawaitable(answer) else answer


def request(max_tokens: int) -> dict[str, Any]:
    return {"model": "sim", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Summarise this page. " * 20}]}


async def main() -> None:
    limits = ProviderLimits(rpm=1200, tpm=60_000, max_concurrent=1000, latency_ms=20,
                            input_tpm=600_000)
    async with ProviderSimulator(limits, output_fraction=0.2) as sim:
        chat_client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key=KEY, max_retries=0)
        ask_client = anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY, max_retries=0)
        tools = ToolRegistry()
        tools.register(ChatTool(chat_client))
        tools.register(AskTool(ask_client))

        # 1. learned limits
        plus = stageflow_plus.build({"llm": {"provider": "openai", "tools": ["CHAT"]}}, env={})
        chat = plus.registry(tools)
        started = time.monotonic()
        outs = await asyncio.gather(*(chat.execute(SimpleAction("CHAT", request(150)), {})
                                      for _ in range(30)))
        print(f"1. 30 calls, {sum(o is not None and o.success for o in outs)} ok, "
              f"{sim.counters['http_429']} x 429, {time.monotonic() - started:.1f} s")
        stats = plus.chain.statistics()
        assert stats is not None
        for bucket in stats.buckets:
            if bucket.key.startswith("rate:llm:"):
                print(f"   learned {bucket.dimension}: {bucket.rate * 60:.0f}/min "
                      f"(97 % of the published limit), burst {bucket.burst:.0f}")

        # 2. a 429 in OpenAI's shape pauses the tool for everybody; the retry completes it
        sim.script(429, {"retry-after-ms": "800"},
                   {"error": {"message": "Rate limit reached", "type": "requests",
                              "param": None, "code": "rate_limit_exceeded"}})
        started = time.monotonic()
        outs = await asyncio.gather(*(chat.execute(SimpleAction("CHAT", request(20)), {})
                                      for _ in range(3)))
        ok = sum(o is not None and o.success for o in outs)
        print(f"2. a scripted 429 (retry-after-ms: 800): {ok}/3 ok "
              f"after {time.monotonic() - started:.2f} s, none lost")

        # 3. Anthropic: max_tokens reserved, the unused 80 % given back after each answer
        ask = stageflow_plus.build({"llm": {"provider": "anthropic", "tools": ["ASK"],
                                            "output_tpm": 60_000}}, env={}).registry(tools)
        out = await ask.execute(SimpleAction("ASK", request(500)), {})
        assert out is not None and out.data is not None
        usage = out.data["response"].usage
        print(f"3. reserved 500 output tokens, used {usage.output_tokens}: the rest refunded "
              f"(the provider refunded {sim.counters['refunded_tokens']} too)")
        await chat_client.close()
        await ask_client.close()


if __name__ == "__main__":
    asyncio.run(main())
