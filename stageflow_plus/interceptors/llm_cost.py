"""TokenEstimate: the token cost of an LLM tool call, estimated from its request payload.

A step *before* the limiter interceptors (``outside_limits = True``, so the chain checks it
stands there): for calls of its ``tools`` it reads the payload as an LLM request (see
:func:`~stageflow_plus.llm.usage.estimate_tokens`: prompt characters / 4 or a tokenizer,
plus ``max_tokens``) and passes the call on with that cost, so admission charges the token
buckets what the provider will charge. A cost the call already carries (``cost_of``, a
run's ``_cost``) wins, dimension by dimension.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from ..llm.usage import TokenCounter, chars_per_token, estimate_tokens
from ..primitives.errors import ConfigError
from .call import Proceed, ToolCall

__all__ = ["TokenEstimate"]


class TokenEstimate:
    """Sets a call's token estimate from its LLM request payload (an interceptor).

    :param tools: the tools whose payloads are LLM requests (``None``: every tool).
    :param counter: counts the prompt's tokens (default: characters / 4; see
        :func:`~stageflow_plus.llm.usage.tiktoken_counter`).
    :param default_max_tokens: the output budget of a request that names none.
    """

    __slots__ = ("_counter", "_default_max_tokens", "_tools")

    outside_limits = True  # admission must see the estimate: before the limits

    def __init__(
        self,
        *,
        tools: Collection[str] | None = None,
        counter: TokenCounter = chars_per_token,
        default_max_tokens: int = 0,
    ) -> None:
        if tools is not None and (isinstance(tools, str) or not all(
            isinstance(t, str) for t in tools
        )):
            raise ConfigError(f"TokenEstimate tools must be a list of tool names, got {tools!r}")
        if not callable(counter):
            raise ConfigError(f"TokenEstimate counter must be callable, got {counter!r}")
        if isinstance(default_max_tokens, bool) or not isinstance(default_max_tokens, int) or (
            default_max_tokens < 0
        ):
            raise ConfigError(f"TokenEstimate default_max_tokens must be an int >= 0, got "
                              f"{default_max_tokens!r}")
        self._tools = frozenset(tools) if tools is not None else None
        self._counter = counter
        self._default_max_tokens = default_max_tokens

    def estimate(self, call: ToolCall) -> dict[str, float]:
        """The estimate for ``call``'s payload (raises ``ConfigError`` for a bad budget)."""
        return estimate_tokens(call.payload, counter=self._counter,
                               default_max_tokens=self._default_max_tokens,
                               where=f"tool call {call.tool!r}")

    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        if self._tools is None or call.tool in self._tools:
            call = dataclasses.replace(call, cost={**self.estimate(call), **call.cost})
        return await proceed(call)

    def __repr__(self) -> str:
        tools = sorted(self._tools) if self._tools is not None else "all"
        return f"TokenEstimate(tools={tools})"
