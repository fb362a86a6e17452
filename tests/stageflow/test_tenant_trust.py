"""A run cannot claim another tenant or raise a ceiling from ctx.data (issue 11, item 6).

Each test is an attack a run could make with its own ctx.data (often filled from a request),
against a real Stageflow pipeline built from a config."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from stageflow import Pipeline, StageKind, StageOutput
from stageflow.stages.context import PipelineContext

import stageflow_plus.stageflow as sfp
from stageflow_plus import StageflowPlusError
from stageflow_plus.stageflow import (
    OVERRIDE_KEYS,
    REFUSED_KEY,
    CallScopeInterceptor,
    InvalidRunOverride,
    LimitAwareCircuitBreaker,
    OverrideError,
    current_scope,
)
from stageflow_plus.testing import run_virtual

ACME, GLOBEX = uuid.UUID(int=1), uuid.UUID(int=2)
CONFIG: dict[str, Any] = {
    "priority": {"weights": {"premium": 100}},
    "ceilings": {"max_priority": 2, "tenant_max_priority": {"premium": 9},
                 "tenants_by_org": {str(ACME): ["acme-batch"]}},
}


class Report:
    """A stage reporting the tenant and priority its tool calls would run with."""

    name = "report"
    kind = StageKind.WORK

    async def execute(self, ctx: Any) -> StageOutput:
        scope = current_scope()
        assert scope is not None
        return StageOutput.ok(data={"tenant": scope.tenant, "priority": scope.priority})


def run(data: dict[str, Any], org: uuid.UUID | None) -> dict[str, Any]:
    plus = sfp.build(CONFIG, env={})
    graph = Pipeline().with_stage("report", Report, StageKind.WORK).build(
        interceptors=plus.interceptors)
    result = run_virtual(graph.run(PipelineContext(data=data, org_id=org)))
    return dict(result["report"].data)


def _causes(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_a_run_takes_its_tenant_from_its_org() -> None:
    assert run({"_priority": 5}, ACME) == {"tenant": str(ACME), "priority": 2}
    assert run({}, None) == {"tenant": "default", "priority": 0}


@pytest.mark.parametrize("org", [ACME, GLOBEX, None])
def test_claiming_a_tenant_with_a_higher_ceiling_and_weight_is_refused(
        org: uuid.UUID | None) -> None:
    with pytest.raises(Exception) as raised:
        run({"_tenant": "premium", "_priority": 9}, org)
    refusal = next(e for e in _causes(raised.value) if isinstance(e, InvalidRunOverride))
    assert isinstance(refusal, OverrideError) and isinstance(refusal, StageflowPlusError)
    assert "ctx.data['_tenant'] = 'premium'" in str(refusal)
    assert "may not claim that tenant" in str(refusal)


def test_an_org_may_claim_only_what_the_operator_grants_it() -> None:
    assert run({"_tenant": "acme-batch", "_priority": 1}, ACME) == {
        "tenant": "acme-batch", "priority": 1}
    assert run({"_tenant": str(ACME)}, ACME)["tenant"] == str(ACME)  # itself: always
    with pytest.raises(Exception) as raised:
        run({"_tenant": "acme-batch"}, GLOBEX)  # granted to acme, not to globex
    assert any("may not claim" in str(e) for e in _causes(raised.value))


def test_ceiling_and_weight_keys_in_ctx_data_are_not_read() -> None:
    """Nothing in ctx.data names a ceiling: the keys a run might try are never read, and the
    scope reads only the documented override keys and Stageflow's stage timeout."""
    attempts = {"_max_priority": 99, "_tenant_max_priority": {"x": 99}, "_weight": 1000,
                "_weights": {"x": 1000}, "_ceilings": {"max_priority": 99},
                "_max_concurrency": 10**6, "_max_rates": {"requests": 10**6}}
    assert run({"_priority": 9, **attempts}, ACME) == {"tenant": str(ACME), "priority": 2}

    class Recording(dict[str, Any]):
        read: set[str]

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.read = set()

        def __getitem__(self, key: str) -> Any:
            self.read.add(key)
            return super().__getitem__(key)

        def get(self, key: str, default: Any = None) -> Any:
            self.read.add(key)
            return super().get(key, default)

        def __contains__(self, key: object) -> bool:
            self.read.add(str(key))
            return super().__contains__(key)

    class Ctx:
        org_id = ACME
        pipeline_run_id = uuid.UUID(int=7)

        def __init__(self) -> None:
            self.data = Recording({"_priority": 1, **attempts})

    ctx = Ctx()
    scope = CallScopeInterceptor(ceilings=sfp.Ceilings(max_priority=2))

    async def before() -> None:
        await scope.before("s", ctx)

    asyncio.run(before())
    timeout = {"_timeout.s", "_timeout_ms"}
    assert ctx.data.read <= set(OVERRIDE_KEYS) | timeout, ctx.data.read - set(OVERRIDE_KEYS)


def test_a_look_alike_refusal_record_does_not_hide_failures_from_the_breaker() -> None:
    plus = sfp.build({"circuit_breaker": {"failure_threshold": 2}}, env={})
    breaker = next(i for i in plus.interceptors if isinstance(i, LimitAwareCircuitBreaker))

    class Failing:
        name = "call"
        kind = StageKind.WORK

        async def execute(self, ctx: Any) -> StageOutput:
            raise RuntimeError("downstream 500")

    graph = Pipeline().with_stage("call", Failing, StageKind.WORK).build(
        interceptors=plus.interceptors)
    spoof = {REFUSED_KEY.format(stage="call"): {"reason": "queue_full"}}

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(Exception, match="downstream 500"):
                await graph.run(PipelineContext(data=dict(spoof)))

    run_virtual(main())
    assert breaker.state("call") == "open"  # the run's look-alike record changed nothing
