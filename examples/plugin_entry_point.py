"""Interceptors by name through the ``stageflow.interceptors`` entry-point group.

A third-party package declares its own in its pyproject.toml::

    [project.entry-points."stageflow.interceptors"]
    acme_audit = "acme_audit:AuditInterceptor"

and lists it in the config: ``plugins = ["acme_audit"]``. This example loads the ones
stageflow-plus itself registers. Run: python examples/plugin_entry_point.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from stageflow import Pipeline, StageKind, StageOutput
from stageflow.pipeline.interceptors import get_default_interceptors
from stageflow.stages.context import PipelineContext

import stageflow_plus
from stageflow_plus.stageflow import StageLimitInterceptor


async def main() -> None:
    names = sorted(stageflow_plus.available_interceptors())
    print("registered interceptors:", ", ".join(names))
    limiter = stageflow_plus.load_interceptor(
        "stageflow_plus.stage_limit", {"limits": {"answer": 1}})
    assert isinstance(limiter, StageLimitInterceptor)
    breaker = stageflow_plus.load_interceptor("stageflow_plus.circuit_breaker")
    scope = stageflow_plus.load_interceptor("stageflow_plus.call_scope")
    stack = [i for i in get_default_interceptors() if i.name != "circuit_breaker"]
    stack += [breaker, scope, limiter]
    stageflow_plus.stageflow.check_order(stack)
    running = 0
    most = 0

    class Answer:
        name = "answer"
        kind = StageKind.WORK

        async def execute(self, ctx: Any) -> StageOutput:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1
            return StageOutput.ok()

    graph = Pipeline().with_stage("answer", Answer, StageKind.WORK).build(interceptors=stack)
    await asyncio.gather(*(graph.run(PipelineContext(data={})) for _ in range(3)))
    print(f"3 runs, at most {most} 'answer' stage at once (stage limit 1)")
    assert most == 1
    try:
        stageflow_plus.load_interceptor("acme_missing")
    except stageflow_plus.UnknownInterceptor as error:
        print(f"unknown name: {error}")


if __name__ == "__main__":
    asyncio.run(main())
