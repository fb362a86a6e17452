"""Per-run overrides through ctx.data: a run tightens its limits, never loosens them.

A run's tenant is its org (``ctx.org_id``, trusted context); ``ctx.data["_tenant"]`` may only
name a tenant the operator granted that org in ``ceilings.tenants_by_org``.

Run: python examples/per_run_overrides.py
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from stageflow import Pipeline, StageKind, StageOutput
from stageflow.stages.context import PipelineContext
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

import stageflow_plus
from stageflow_plus import current_scope
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction


class Work(BaseTool):
    name = "work"
    description = "reports the scope it ran under"
    action_type = "WORK"

    def __init__(self, probe: ConcurrencyProbe) -> None:
        self.probe = probe

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        async def work() -> ToolOutput:
            await asyncio.sleep(0.005)
            scope = current_scope()
            assert scope is not None
            return ToolOutput(success=True, data={"priority": scope.priority,
                                                  "tenant": scope.tenant})

        result: ToolOutput = await self.probe.run("work", work)
        return result


ACME = uuid.UUID(int=0xAC3)  # an org id, as Stageflow gives it


async def run(data: dict[str, Any], org: uuid.UUID | None = ACME) -> tuple[int, dict[str, Any]]:
    plus = stageflow_plus.build({
        "concurrency": {"limit": 10, "per_run": 6},
        "priority": {},  # a fair queue: run priorities count (up to the ceiling)
        "ceilings": {"max_priority": 3, "max_concurrency": 6,
                     "tenants_by_org": {str(ACME): ["acme-batch"]}},
    }, env={})
    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(Work(probe))
    registry = plus.registry(tools)

    class FanOut:
        name = "fan_out"
        kind = StageKind.WORK

        async def execute(self, ctx: Any) -> StageOutput:
            outs = await asyncio.gather(*(registry.execute(SimpleAction("WORK"), {})
                                          for _ in range(12)))
            return StageOutput.ok(data=outs[0].data if outs[0] is not None else None)

    graph = Pipeline().with_stage("fan_out", FanOut, StageKind.WORK).build(
        interceptors=plus.interceptors)
    result = await graph.run(PipelineContext(data=data, org_id=org))
    return probe.max_in_flight, dict(result["fan_out"].data)


async def main() -> None:
    asked = {"_concurrency": 2, "_priority": 1, "_tenant": "acme-batch"}  # granted to acme
    in_flight, seen = await run(asked)
    print(f"asked {asked}: max in flight {in_flight}, scope {seen}")
    assert in_flight == 2 and seen == {"priority": 1, "tenant": "acme-batch"}
    greedy = {"_concurrency": 100, "_priority": 50}
    in_flight, seen = await run(greedy)
    print(f"asked {greedy}: max in flight {in_flight} (ceiling 6), priority {seen['priority']} "
          "(ceiling 3)")
    assert in_flight == 6 and seen["priority"] == 3
    for bad in ({"_concurrency": "lots"}, {"_tenant": "acme-batch"}):  # the 2nd: no org
        try:
            await run(bad, org=None)
        except Exception as error:  # Stageflow wraps the InvalidRunOverride
            print(f"refused: {error}")
        else:
            raise AssertionError("an invalid override must be refused")


if __name__ == "__main__":
    asyncio.run(main())
