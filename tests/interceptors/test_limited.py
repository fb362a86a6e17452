"""``@limited(chain, ...)``: a limited async function keeps its signature and its result type."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, assert_type

import pytest

from stageflow_plus import (
    ConcurrencyLimiter,
    ConfigError,
    ManualClock,
    PriorityFairQueue,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
    limited,
)
from stageflow_plus.interceptors import Proceed
from stageflow_plus.testing import ConcurrencyProbe, settle

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class User:
    org: str
    vip: bool = False


class Seen:
    """A step recording each call the chain saw."""

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []

    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        self.calls.append(call)
        return await proceed(call)


async def test_every_call_goes_through_the_chain() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(2)])
    probe = ConcurrencyProbe()
    release = asyncio.Event()

    @limited(chain, tool="search", cost={"tokens": 5})
    async def search(query: str) -> list[str]:
        """Search the web."""
        async def work() -> list[str]:
            await release.wait()
            return [query]

        result: list[str] = await probe.run("search", work)
        return result

    assert search.__name__ == "search" and search.__doc__ == "Search the web."
    tasks = [asyncio.ensure_future(search(f"q{i}")) for i in range(6)]
    await settle()
    assert probe.in_flight == 2
    release.set()
    results = await asyncio.gather(*tasks)
    assert results == [[f"q{i}"] for i in range(6)] and probe.max_in_flight == 2
    one = await search("typed")
    assert_type(one, list[str])  # the decorated function keeps its result type (mypy)


async def test_per_call_derives_fields_from_the_arguments() -> None:
    seen = Seen()
    chain = ToolCallChain([PriorityFairQueue(), ConcurrencyLimiter(1), seen])

    @limited(chain, tool="llm", priority=1,
             per_call=lambda prompt, *, user: {"tenant": user.org,
                                               "priority": 3 if user.vip else 1,
                                               "cost": {"tokens": len(prompt)}})
    async def answer(prompt: str, *, user: User) -> str:
        return prompt.upper()

    assert await answer("hello", user=User("acme", vip=True)) == "HELLO"
    assert await answer("hi", user=User("globex")) == "HI"
    assert [(c.tool, c.tenant, c.priority, dict(c.cost)) for c in seen.calls] == [
        ("llm", "acme", 3, {"tokens": 5.0}), ("llm", "globex", 1, {"tokens": 2.0})]


async def test_the_default_tool_name_is_the_functions() -> None:
    seen = Seen()
    chain = ToolCallChain([ConcurrencyLimiter(1), seen])

    @limited(chain)
    async def fetch() -> None:
        return None

    await fetch()
    assert seen.calls[0].tool.endswith("fetch")


async def test_the_result_is_what_the_steps_observe() -> None:
    clock = ManualClock()
    rate = TokenBucketRateLimiter(Rate(10, per=1, burst=10), key="global")
    chain = ToolCallChain([rate, ConcurrencyLimiter(2)], clock=clock)

    @limited(chain, tool="api")
    async def call_api() -> dict[str, float]:
        return {"retry_after": 4.0}  # the provider said: wait 4 s

    await call_api()
    assert chain.pause is not None  # the chain's ProviderPause paused "api" for everybody
    assert chain.pause.paused() == {"api": pytest.approx(4.0)}


async def test_bad_per_call_fields_are_refused_by_name() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)])

    @limited(chain, tool="t", per_call=lambda n: {"tenant": "a", "prio": n})
    async def typo(n: int) -> int:
        return n

    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['prio'\]"):
        await typo(1)

    @limited(chain, tool="t", per_call=lambda n: {"priority": "high"})
    async def wrong(n: int) -> int:
        return n

    with pytest.raises(ConfigError, match=r"@limited\('t'\): priority must be an int"):
        await wrong(1)

    @limited(chain, tool="t",
             per_call=lambda n: [("tenant", "a")])  # type: ignore[arg-type, return-value]
    async def not_a_mapping(n: int) -> int:
        return n

    with pytest.raises(ConfigError, match="must return a mapping"):
        await not_a_mapping(1)


def test_decorating_the_wrong_things_is_refused() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)])
    with pytest.raises(ConfigError, match="must be an async def"):
        limited(chain)(lambda: 1)  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigError, match="must be a ToolCallChain"):
        limited("chain")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="per_call must be a callable"):
        limited(chain, per_call={"tenant": "a"})  # type: ignore[arg-type]
