"""Real Stageflow tools calling the loopback provider over HTTP, and a fan-out stage.

:class:`ProviderTool` is an ordinary Stageflow ``BaseTool``: registered in a
``ToolRegistry`` (or in a :class:`~stageflow_plus.stageflow.tools.LimitedToolRegistry` that
shares its tools), it POSTs ``{"tokens", "tenant", "priority"}`` with one shared
``httpx.AsyncClient`` and answers a ``ToolOutput`` whose ``data`` carries what the
benchmark and the limiters need: the status, when the request was sent and answered,
``retry_after`` (read by :func:`~stageflow_plus.interceptors.rate.default_retry_after`, so a
429 pauses the key for every caller) and the provider's ``x-ratelimit-*`` headers.

:class:`FanOutStage` is a Stageflow stage that runs a burst of calls concurrently — the
agent step the benchmark drives through a real pipeline.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

import httpx
from stageflow import StageKind, StageOutput
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

__all__ = [
    "PROVIDER_ACTION",
    "FanOutStage",
    "ProviderTool",
    "current_burst",
    "make_client",
    "provider_registry",
]

PROVIDER_ACTION = "PROVIDER_CALL"
"""The action type :class:`ProviderTool` handles."""


def make_client(max_connections: int, *, timeout: float = 60.0) -> httpx.AsyncClient:
    """One ``AsyncClient`` for a whole run, its pool sized for the calls in flight."""
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
        ),
        timeout=httpx.Timeout(timeout, pool=timeout),
    )


class ProviderTool(BaseTool):
    """``PROVIDER_CALL``: one request to the provider's ``POST /v1/call``.

    Payload: ``tokens`` (int), ``tenant`` (str), ``priority`` (int). The output's ``data``:
    ``status``, ``tokens`` (billed), ``sent_at`` / ``answered_at`` (loop time),
    ``retry_after`` (seconds, 429 only) and ``headers`` (the ``x-ratelimit-*`` ones).
    Network errors propagate as ``httpx`` exceptions.
    """

    name = "provider_call"
    description = "calls the rate-limited provider"
    action_type = PROVIDER_ACTION

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.endpoint = url.rstrip("/") + "/v1/call"

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        payload = input.action.payload
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        response = await self.client.post(self.endpoint, json={
            "tokens": int(payload.get("tokens", 0)),
            "tenant": str(payload.get("tenant", "default")),
            "priority": int(payload.get("priority", 0)),
        })
        answered_at = loop.time()
        headers = {k: v for k, v in response.headers.items() if k.startswith("x-ratelimit-")}
        data: dict[str, Any] = {
            "status": response.status_code,
            "sent_at": sent_at,
            "answered_at": answered_at,
            "headers": headers,
        }
        if response.status_code == 200:
            data["tokens"] = int(response.json().get("tokens", 0))
            return ToolOutput(success=True, data=data)
        if response.status_code == 429:
            data["retry_after"] = float(response.headers.get("retry-after", "1"))
        return ToolOutput(success=False, data=data, error=f"HTTP {response.status_code}")


def provider_registry(client: httpx.AsyncClient, url: str) -> ToolRegistry:
    """A fresh Stageflow ``ToolRegistry`` holding one :class:`ProviderTool`."""
    registry = ToolRegistry()
    registry.register(ProviderTool(client, url))
    return registry


_burst: ContextVar[Sequence[Callable[[], Awaitable[Any]]]] = ContextVar(
    "stageflow_plus_bench_burst", default=()
)


def current_burst() -> ContextVar[Sequence[Callable[[], Awaitable[Any]]]]:
    """The context variable :class:`FanOutStage` reads its calls from (set it per run)."""
    return _burst


class FanOutStage:
    """A Stageflow WORK stage running the current burst's calls concurrently.

    The calls come from :func:`current_burst` (a ``ContextVar`` set before
    ``graph.run(...)``; Stageflow's stage task inherits it). Each call's outcome — a result or
    the exception it raised — is collected; the stage never fails because one call did.
    """

    name = "fan_out"
    kind = StageKind.WORK

    async def execute(self, ctx: Any) -> StageOutput:
        calls = _burst.get()
        outcomes = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
        failed = sum(1 for o in outcomes if isinstance(o, BaseException))
        return StageOutput.ok(data={"calls": len(outcomes), "raised": failed})
