"""Quickstart: priorities, RPM + TPM and a concurrency cap on a real ToolRegistry.

A batch job fans out 30 searches at priority 0; an interactive user asks for 10 more at
priority 2 while the batch is queued: the user's calls go first, every limit holds.
Then the same chain limits a plain asyncio block (an LLM call) and charges its real cost.

Run: python examples/quickstart.py   (prints 3 lines; the library logs nothing unless the
host's logging configuration asks, e.g. logging.basicConfig(level=logging.DEBUG))
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

    def __init__(self, probe: ConcurrencyProbe, started: dict[int, float]) -> None:
        self.probe = probe
        self.started = started

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        self.started[input.action.payload["n"]] = asyncio.get_running_loop().time()

        async def work() -> ToolOutput:
            await asyncio.sleep(0.02)
            return ToolOutput(success=True, data={"n": input.action.payload["n"]})

        result: ToolOutput = await self.probe.run("search", work)
        return result


async def main() -> None:
    chain = ToolCallChain([
        Backpressure(max_queue=1_000, max_wait=5.0),       # bounded queue, bounded wait
        PriorityFairQueue(aging_interval=1.0),              # priorities, aging, fair share
        TokenBucketRateLimiter([
            Rate(3_000, per=60, burst=10),                  # 3 000 requests per minute
            Rate(3_000_000, per=60, burst=30_000, dimension="tokens"),  # 3 M tokens/minute
        ], key="global"),
        ConcurrencyLimiter(8, per_tool={"SEARCH": 5}),      # 8 in flight, 5 of them searches
    ])
    probe, started = ConcurrencyProbe(), dict[int, float]()
    tools = ToolRegistry()
    tools.register(Search(probe, started))
    registry = LimitedToolRegistry(chain, tools, cost_of=lambda tool, payload: {"tokens": 900})
    loop = asyncio.get_running_loop()
    made: dict[int, float] = {}

    async def search(n: int) -> ToolOutput | None:
        made[n] = loop.time()
        return await registry.execute(SimpleAction("SEARCH", {"n": n}), {})

    with call_scope(run_id="nightly", tenant="batch", priority=0):
        batch = [asyncio.ensure_future(search(n)) for n in range(30)]
    await asyncio.sleep(0.05)  # the batch is queued by now
    with call_scope(run_id="chat-42", tenant="acme", priority=2):
        user = [asyncio.ensure_future(search(n)) for n in range(30, 40)]
    outputs = await asyncio.gather(*batch, *user)
    assert all(o is not None and o.success for o in outputs)
    waits = {n: (started[n] - made[n]) * 1000 for n in made}
    user_max = max(waits[n] for n in range(30, 40))
    queued_batch = [waits[n] for n in range(30) if made[n] < made[30] and waits[n] > user_max]
    assert probe.max_in_flight <= 5 and queued_batch  # the user overtook queued batch calls
    starts = sorted(started.values())  # 3 000 RPM = 50/s: at most burst + 50·t in any t
    assert all(j - i + 1 <= 10 + 50 * (starts[j] - starts[i]) + 1
               for i in range(len(starts)) for j in range(i, len(starts)))
    print(f"40 searches: at most {probe.max_in_flight} in flight (limit 5), never above "
          "3 000 RPM (burst 10) or 3 M TPM")
    print(f"interactive (priority 2) waited at most {user_max:.0f} ms; "
          f"{len(queued_batch)} batch calls (priority 0) queued before it waited longer")

    # plain asyncio: any block of code under the same limits, with its real cost charged
    async with chain.limit(tool="LLM", tenant="acme", priority=2,
                           cost={"tokens": 2_000}) as call:
        await asyncio.sleep(0.01)       # e.g. await client.chat.completions.create(...)
        call.adjust({"tokens": 412})    # e.g. response.usage.total_tokens
    print(f"LLM call admitted after {call.waited * 1000:.0f} ms, charged 412 tokens "
          "(estimated 2 000)")


if __name__ == "__main__":
    asyncio.run(main())
