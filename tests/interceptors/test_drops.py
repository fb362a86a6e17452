"""The default drop classifier on real exceptions and answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from stageflow.pipeline.retry import RateLimitError
from stageflow.tools.base import ToolOutput

from stageflow_plus import QueueFull, WaitTimeout, default_is_drop

REQUEST = httpx.Request("POST", "http://127.0.0.1/v1/call")


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=REQUEST)


DROPS: list[Any] = [
    TimeoutError(),  # (asyncio.TimeoutError is the same class since 3.11)
    httpx.ReadTimeout("read timed out", request=REQUEST),
    httpx.PoolTimeout("no connection", request=REQUEST),
    httpx.HTTPStatusError("429", request=REQUEST, response=response(429)),
    httpx.HTTPStatusError("503", request=REQUEST, response=response(503)),
    httpx.HTTPStatusError("overloaded", request=REQUEST, response=response(529)),
    RateLimitError("slow down", retry_after=2.0),
    response(429, **{"retry-after": "1"}),
    response(503),
    ToolOutput(success=False, data={"status": 429, "retry_after": 0.5}),
    ToolOutput(success=False, data={"status_code": 503}),
    {"status": 429},
    {"retry_after": 3},
]

NOT_DROPS: list[Any] = [
    None,
    "text",
    42,
    [429],
    {"status": 500},
    {"status": "429"},  # (a string is not a status code)
    ValueError("a bug"),
    httpx.HTTPStatusError("500", request=REQUEST, response=response(500)),
    httpx.ConnectError("refused", request=REQUEST),
    response(200),
    response(400),
    ToolOutput(success=True, data={"status": 200}),
    ToolOutput(success=True, data={"retry_after": 1.0}),  # success wins
    ToolOutput(success=False, data={"status": 400}, error="bad request"),
    QueueFull("full", key="tool:x", limiter="ours", retry_after=1.0),
    WaitTimeout("waited too long", key="tool:x", limiter="ours"),
]


@pytest.mark.parametrize("outcome", DROPS, ids=lambda o: type(o).__name__)
def test_drops_are_recognised(outcome: Any) -> None:
    assert default_is_drop(outcome) is True


@pytest.mark.parametrize("outcome", NOT_DROPS, ids=lambda o: type(o).__name__)
def test_other_outcomes_and_our_own_refusals_are_not_drops(outcome: Any) -> None:
    assert default_is_drop(outcome) is False
