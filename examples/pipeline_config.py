"""A real Stageflow pipeline configured from examples/limits.toml.

Two runs fan out 10 tool calls each; the TOML caps them at 4 in flight together.
Run: python examples/pipeline_config.py
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from stageflow import Pipeline, StageKind, StageOutput
from stageflow.stages.context import PipelineContext
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

import stageflow_plus
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction

CONFIG = Path(__file__).with_name("limits.toml")
ACME = uuid.UUID("00000000-0000-0000-0000-000000000ac3")  # an org id, as Stageflow gives it


class Lookup(BaseTool):
    name = "lookup"
    description = "looks something up"
    action_type = "LOOKUP"

    def __init__(self, probe: ConcurrencyProbe) -> None:
        self.probe = probe

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        async def work() -> ToolOutput:
            await asyncio.sleep(0.01)
            return ToolOutput(success=True, data={"n": input.action.payload["n"], "tokens": 50})

        result: ToolOutput = await self.probe.run("lookup", work)
        return result


async def main() -> None:
    plus = stageflow_plus.build(CONFIG, env={})
    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(Lookup(probe))
    registry = plus.registry(tools, cost_of=lambda tool, payload: {"tokens": 50})

    class Answer:
        name = "answer"
        kind = StageKind.WORK

        async def execute(self, ctx: Any) -> StageOutput:
            outputs = await asyncio.gather(*(
                registry.execute(SimpleAction("LOOKUP", {"n": n}), {}) for n in range(10)))
            return StageOutput.ok(data={"found": len(outputs)})

    graph = Pipeline().with_stage("answer", Answer, StageKind.WORK).build(
        interceptors=plus.interceptors)
    results = await asyncio.gather(
        graph.run(PipelineContext(data={"_priority": 1})),
        # acme is granted tenant "premium", whose ceiling is 5: priority 9 is clamped to 5
        graph.run(PipelineContext(data={"_priority": 9, "_tenant": "premium"}, org_id=ACME)),
    )
    assert all(r["answer"].data["found"] == 10 for r in results)
    try:  # any other org claiming "premium" is refused, not silently promoted
        await graph.run(PipelineContext(data={"_tenant": "premium"}))
    except Exception as error:
        print(f"an org that was not granted 'premium' is refused: {type(error).__name__}")
    else:
        raise AssertionError("a tenant claim must be refused")
    assert probe.max_in_flight <= 4
    print(f"2 runs x 10 calls; max in flight {probe.max_in_flight} (config: 4); interceptors: "
          + ", ".join(type(i).__name__ for i in plus.interceptors))


if __name__ == "__main__":
    asyncio.run(main())
