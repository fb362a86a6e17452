"""Stageflow tools calling an LLM through the official ``openai`` / ``anthropic`` clients.

The shape a limited LLM tool should have (the README's "With the OpenAI and Anthropic
clients"): the client made with ``max_retries=0`` (retries belong outside the limits, see
:class:`~stageflow_plus.interceptors.retry.ToolCallRetry`), the request sent through
``with_raw_response`` so the answer's rate-limit headers reach the limiter, and the output's
``data`` holding the parsed ``response`` (its ``usage`` is read) and the ``headers``. A 429
or another error propagates as the client's exception (its ``.response`` carries the
headers).

The payload is the request's keyword arguments (``model``, ``messages``, ``max_tokens``,
...); ``extra_headers`` may be passed through it too.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import inspect
from typing import Any

from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

__all__ = ["ANTHROPIC_ACTION", "OPENAI_ACTION", "AnthropicMessagesTool", "OpenAIChatTool"]

OPENAI_ACTION = "OPENAI_CHAT"
"""The action type :class:`OpenAIChatTool` handles."""
ANTHROPIC_ACTION = "ANTHROPIC_MESSAGES"
"""The action type :class:`AnthropicMessagesTool` handles."""


async def _output(raw: Any) -> ToolOutput:
    parsed = raw.parse()  # a coroutine in the clients' newer async responses
    if inspect.isawaitable(parsed):
        parsed = await parsed
    return ToolOutput(success=True, data={"status": raw.status_code, "headers": raw.headers,
                                          "response": parsed})


class OpenAIChatTool(BaseTool):
    """``OPENAI_CHAT``: ``client.chat.completions.create(**payload)`` (an ``AsyncOpenAI``)."""

    name = "openai_chat"
    description = "OpenAI chat completion"
    action_type = OPENAI_ACTION

    def __init__(self, client: Any, action_type: str = OPENAI_ACTION) -> None:
        self.client = client
        self.action_type = action_type

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        raw = await self.client.chat.completions.with_raw_response.create(
            **dict(input.action.payload))
        return await _output(raw)


class AnthropicMessagesTool(BaseTool):
    """``ANTHROPIC_MESSAGES``: ``client.messages.create(**payload)`` (an ``AsyncAnthropic``)."""

    name = "anthropic_messages"
    description = "Anthropic message"
    action_type = ANTHROPIC_ACTION

    def __init__(self, client: Any, action_type: str = ANTHROPIC_ACTION) -> None:
        self.client = client
        self.action_type = action_type

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        raw = await self.client.messages.with_raw_response.create(**dict(input.action.payload))
        return await _output(raw)
