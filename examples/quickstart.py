"""Quickstart: 40 concurrent tool calls through the four limiters on a real ToolRegistry.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    LimitedToolRegistry,
    PriorityFairQueue,
    Rate,
    TokenBucketRateLimiter,
    ToolCallChain,
    call_scope,
)
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction


class Search(BaseTool):
    name = "search"
    description = "a slow downstream API"
    action_type = "SEARCH"

    def __init__(self, probe: ConcurrencyProbe) -> None:
        self.probe = probe

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        async def work() -> ToolOutput:
            await asyncio.sleep(0.02)
            return ToolOutput(success=True, data={"q": input.action.payload["q"]})

        result: ToolOutput = await self.probe.run("search", work)
        return result


async def main() -> None:
    chain = ToolCallChain([
        Backpressure(max_queue=1_000, max_wait=5.0),
        PriorityFairQueue(aging_interval=1.0),
        TokenBucketRateLimiter(Rate(200, per=1, burst=20)),  # 200 calls/s, bursts of 20
        ConcurrencyLimiter(8, per_tool={"SEARCH": 5}),  # 8 in flight, 5 of them searches
    ])
    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(Search(probe))
    registry = LimitedToolRegistry(chain, tools)
    with call_scope(run_id="run-1", tenant="acme", priority=1):
        outputs = await asyncio.gather(*(
            registry.execute(SimpleAction("SEARCH", {"q": n}), {}) for n in range(40)
        ))
    assert all(o.success for o in outputs)
    stats = chain.statistics()
    assert stats is not None and probe.max_in_flight <= 5
    print(f"40 calls done; at most {probe.max_in_flight} in flight (limit 5); "
          f"admitted={stats.admitted}, p99 wait={stats.waits.p99 * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
