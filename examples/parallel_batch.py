"""A parallel batch of tool calls under a concurrency limit, three ways.

Four 100 ms calls run as one batch take 0.1 s instead of 0.4 s one by one; "first_success"
keeps the fastest answer and cancels the rest; "majority" stops once 3 of 5 agree. Time is
virtual (``run_virtual``), so the script finishes at once and prints exact durations.

Run: python examples/parallel_batch.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

from stageflow_plus import ConcurrencyLimiter, LimitedToolRegistry, ToolCallChain
from stageflow_plus.stageflow.batch import run_batch
from stageflow_plus.testing import SimpleAction, run_virtual


class Lookup(BaseTool):
    name = "lookup"
    description = "a downstream API taking payload['ms'] milliseconds"
    action_type = "LOOKUP"

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        payload = input.action.payload
        await asyncio.sleep(payload["ms"] / 1000)
        if payload.get("fail"):
            raise RuntimeError(f"replica {payload['replica']} is down")
        return ToolOutput(success=True, data={"replica": payload["replica"]})


def calls(*ms: int, failing: tuple[int, ...] = ()) -> list[SimpleAction]:
    return [SimpleAction("LOOKUP", {"replica": i, "ms": m, "fail": i in failing})
            for i, m in enumerate(ms)]


async def main() -> None:
    loop = asyncio.get_running_loop()
    tools = ToolRegistry()
    tools.register(Lookup())
    chain = ToolCallChain([ConcurrencyLimiter(4)])
    registry = LimitedToolRegistry(chain, tools)

    start = loop.time()
    batch = await run_batch(calls(100, 100, 100, 100), registry, ctx={"user": "ada"})
    batch.raise_for_status()
    parallel = loop.time() - start
    start = loop.time()
    for action in calls(100, 100, 100, 100):
        await registry.execute(action, {"user": "ada"})
    sequential = loop.time() - start

    first = await run_batch(calls(300, 120, 80, 200), registry, strategy="first_success")
    quorum = await run_batch(calls(50, 400, 60, 70, 500, failing=(2,)), registry,
                             strategy="majority")
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0
    assert parallel < sequential / 2 and first.winner == 2 and quorum.ok
    print(f"4 x 100 ms: batch {parallel:.1f} s vs one by one {sequential:.1f} s (virtual time)")
    print(f"first_success: replica {first.winner} won, {first.cancelled} cancelled")
    print(f"majority: ok={quorum.ok} with {quorum.succeeded}/5 succeeded, "
          f"{quorum.failed} failed, {quorum.cancelled} cancelled")


if __name__ == "__main__":
    run_virtual(main())
