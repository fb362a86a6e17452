"""The lost-update race of concurrent tool calls, and ToolResultBag fixing it.

Twenty tool calls run at once through a LimitedToolRegistry; each reads a shared counter,
does its I/O, then stores counter + 1. With a plain dict 19 of the 20 increments are lost;
with ToolResultBag.update() or compare_and_set() + retry none is.

Run: python examples/output_bag_race.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

from stageflow_plus import ConcurrencyLimiter, LimitedToolRegistry, ToolCallChain
from stageflow_plus.stageflow.output_bag import ToolResultBag, VersionConflict
from stageflow_plus.testing import SimpleAction

CALLS = 20


class Counter(BaseTool):
    name = "counter"
    description = "increments a shared counter after some I/O"
    action_type = "INCR"

    def __init__(self, mode: str, state: dict[str, int], bag: ToolResultBag) -> None:
        self.mode = mode
        self.state = state
        self.bag = bag
        self.conflicts = 0

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        writer = f"call-{input.action.payload['i']}"
        if self.mode == "dict":
            seen = self.state["counter"]
            await asyncio.sleep(0)  # the tool's I/O
            self.state["counter"] = seen + 1
        elif self.mode == "update":
            await asyncio.sleep(0)  # I/O first, then the atomic merge
            await self.bag.update("counter", lambda v: v + 1, writer=writer, default=0)
        else:
            while True:
                current = self.bag.get("counter")
                value, version = (current.value, current.version) if current else (0, 0)
                await asyncio.sleep(0)
                try:
                    await self.bag.compare_and_set("counter", version, value + 1, writer=writer)
                    break
                except VersionConflict:
                    self.conflicts += 1
        return ToolOutput(success=True)


async def race(mode: str) -> tuple[int, int]:
    state, bag = {"counter": 0}, ToolResultBag()
    tool = Counter(mode, state, bag)
    tools = ToolRegistry()
    tools.register(tool)
    registry = LimitedToolRegistry(ToolCallChain([ConcurrencyLimiter(CALLS)]), tools)
    await asyncio.gather(*(registry.execute(SimpleAction("INCR", {"i": i}), {})
                           for i in range(CALLS)))
    final = state["counter"] if mode == "dict" else bag.read("counter").value
    return final, tool.conflicts


async def main() -> None:
    lost, _ = await race("dict")
    updated, _ = await race("update")
    cas, conflicts = await race("cas")
    assert (lost, updated, cas) == (1, CALLS, CALLS) and conflicts > 0
    print(f"{CALLS} concurrent increments -> plain dict: {lost}, update(): {updated}, "
          f"compare_and_set + retry: {cas} ({conflicts} conflicts retried)")


if __name__ == "__main__":
    # keep the output to the result: only warnings from the limiter's event log
    asyncio.run(main())
