"""A real Stageflow pipeline with stageflow-plus: config, overrides, timeouts, breakers.

These tests run on :class:`~stageflow_plus.testing.VirtualTimeLoop`: Stageflow's own
``asyncio.wait_for`` stage timeout and our limiters share one virtual clock, so a 200 ms
timeout is exact and takes no wall time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from stageflow import Pipeline, StageKind, StageOutput
from stageflow.stages.context import PipelineContext
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

import stageflow_plus.stageflow as sfp
from stageflow_plus import ConfigError
from stageflow_plus.stageflow import (
    PARTIAL_KEY,
    REFUSED_KEY,
    CallScopeInterceptor,
    InvalidRunOverride,
    LimitAwareCircuitBreaker,
    PartialResults,
    StageLimitInterceptor,
    current_scope,
)
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction, run_virtual


class SleepTool(BaseTool):
    """Sleeps ``payload["seconds"]`` (virtual) and reports the scope it ran in."""

    name = "sleep"
    description = "sleeps"
    action_type = "SLEEP"

    def __init__(self, probe: ConcurrencyProbe) -> None:
        self.probe = probe

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        async def work() -> ToolOutput:
            await asyncio.sleep(input.action.payload.get("seconds", 0.1))
            scope = current_scope()
            return ToolOutput(success=True, data={
                "n": input.action.payload.get("n"),
                "priority": scope.priority if scope else None,
            })

        result: ToolOutput = await self.probe.run("SLEEP", work)
        return result


class SlowStage:
    """A stage that runs for 10 s (virtual): cancelled when a sibling fails."""

    name = "slow"
    kind = StageKind.WORK

    async def execute(self, ctx: Any) -> StageOutput:
        await asyncio.sleep(10)
        return StageOutput.ok()


class BoomStage:
    """A stage that fails after 100 ms (virtual), cancelling its siblings."""

    name = "boom"
    kind = StageKind.WORK

    async def execute(self, ctx: Any) -> StageOutput:
        await asyncio.sleep(0.1)
        raise RuntimeError("sibling failed")


def fan_out_stage(registry: Any, calls: int, seconds: float = 0.1) -> type:
    class FanOut:
        name = "fan_out"
        kind = StageKind.WORK

        async def execute(self, ctx: Any) -> StageOutput:
            outputs = await asyncio.gather(*(
                registry.execute(SimpleAction("SLEEP", {"n": n, "seconds": seconds}), {})
                for n in range(calls)
            ))
            return StageOutput.ok(data={"outputs": [o.data for o in outputs]})

    return FanOut


CONFIG = """
[stageflow_plus]
stageflow_defaults = true

[stageflow_plus.concurrency]
limit = 3
per_run = 2

[stageflow_plus.backpressure]
max_queue = 1000

[stageflow_plus.priority]
aging_interval = 1.0

[stageflow_plus.ceilings]
max_priority = 3
"""


def test_toml_config_limits_the_tool_calls_of_a_real_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(CONFIG)
    plus = sfp.build(path, env={})
    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(SleepTool(probe))
    registry = plus.registry(tools)
    graph = Pipeline().with_stage("fan_out", fan_out_stage(registry, 12), StageKind.WORK).build(
        interceptors=plus.interceptors)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        runs = [graph.run(PipelineContext(data={"_priority": 7})) for _ in range(2)]
        results = await asyncio.gather(*runs)
        for result in results:
            data = result["fan_out"].data
            assert [o["n"] for o in data["outputs"]] == list(range(12))
            assert {o["priority"] for o in data["outputs"]} == {3}  # clamped to the ceiling
        return loop.time() - start

    elapsed = run_virtual(main())
    assert probe.max_in_flight == 3  # global limit 3, although two runs may use 2 each
    assert probe.calls == 24
    # never faster than the global limit allows; per_run=2 costs one round at the tail
    assert 24 * 0.1 / 3 - 1e-9 <= elapsed <= 24 * 0.1 / 3 + 0.1 + 1e-9
    stats = plus.chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.admitted == 24
    names = [type(i).__name__ for i in plus.interceptors]
    assert names.index("TimeoutInterceptor") < names.index("CallScopeInterceptor")
    assert "LimitAwareCircuitBreaker" in names and "CircuitBreakerInterceptor" not in names


def test_run_override_tightens_but_never_exceeds_the_ceiling() -> None:
    plus = sfp.build({"concurrency": {"limit": 10, "per_run": 4},
                      "ceilings": {"max_priority": 2, "max_concurrency": 4}}, env={})
    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(SleepTool(probe))
    graph = Pipeline().with_stage(
        "fan_out", fan_out_stage(plus.registry(tools), 8), StageKind.WORK
    ).build(interceptors=plus.interceptors)

    async def run(data: dict[str, Any]) -> Any:
        return await graph.run(PipelineContext(data=data))

    greedy = run_virtual(run({"_concurrency": 50, "_priority": 9}))
    assert probe.max_in_flight == 4  # asked 50: got the ceiling, never more
    assert {o["priority"] for o in greedy["fan_out"].data["outputs"]} == {2}
    probe.max_in_flight = 0
    run_virtual(run({"_concurrency": 2}))
    assert probe.max_in_flight == 2  # tightening works
    strict = sfp.build({"ceilings": {"max_priority": 2, "on_excess": "error"}}, env={})
    graph = Pipeline().with_stage(
        "fan_out", fan_out_stage(strict.registry(tools), 1), StageKind.WORK
    ).build(interceptors=strict.interceptors)
    with pytest.raises(Exception) as raised:
        run_virtual(run({"_priority": 9}))
    assert _chain_has(raised.value, InvalidRunOverride)
    assert "exceeds the operator's ceiling" in _all_messages(raised.value)
    with pytest.raises(Exception) as wrong_type:
        run_virtual(run({"_concurrency": "many"}))
    assert "ctx.data['_concurrency'] must be an int" in _all_messages(wrong_type.value)


def _chain_has(error: BaseException | None, kind: type) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def _all_messages(error: BaseException | None) -> str:
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__ or error.__context__
    return " | ".join(parts)


def test_stage_timeout_cancels_queued_calls_and_keeps_partial_results() -> None:
    plus = sfp.build({"concurrency": {"limit": 1}}, env={})
    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(SleepTool(probe))
    graph = Pipeline().with_stage(
        "fan_out", fan_out_stage(plus.registry(tools), 8, seconds=0.15), StageKind.WORK
    ).build(interceptors=plus.interceptors)
    ctx = PipelineContext(data={"_timeout_ms": 200})

    async def main() -> tuple[float, BaseException | None]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await graph.run(ctx)
        except Exception as error:
            return loop.time() - start, error
        return loop.time() - start, None

    elapsed, error = run_virtual(main())
    # 8 calls x 150 ms behind a limit of 1 would take 1.2 s; the stage ends at 200 ms
    assert elapsed == pytest.approx(0.2, abs=1e-6)
    assert error is not None and "timed out" in _all_messages(error)
    partial = ctx.data[PARTIAL_KEY.format(stage="fan_out")]
    assert isinstance(partial, PartialResults) and partial.status == "timeout"
    assert [r.data["n"] for _, r in partial.results] == [0]
    stats = plus.chain.statistics()
    assert stats is not None
    assert stats.in_flight == 0 and stats.tasks_waiting == 0
    assert all(p.in_use == 0 for p in stats.pools)
    # call 1 completed, call 2 was running (cancelled with the stage, its permit returned),
    # the other 6 were still queued at the 200 ms deadline: refused, none lost
    assert stats.admitted == 2 and stats.cancelled + stats.rejected_total == 6


def test_stage_limit_waits_within_the_deadline_and_never_leaks_on_cancellation() -> None:
    limiter = StageLimitInterceptor({"slow": 1})

    stack = sfp.build({}, env={}, extra=[limiter]).interceptors
    graph = (Pipeline().with_stage("slow", SlowStage, StageKind.WORK)
             .with_stage("boom", BoomStage, StageKind.WORK).build(interceptors=stack))

    async def main() -> None:
        with pytest.raises(Exception, match="sibling failed"):
            await graph.run(PipelineContext(data={}))
        await asyncio.sleep(0)
        assert limiter.in_use("slow") == 0  # released by the done callback, no after()
        # a run that cannot start before its 200 ms deadline is refused, not left waiting
        class Hold:
            name = "slow"
            kind = StageKind.WORK

            async def execute(self, ctx: Any) -> StageOutput:
                await asyncio.sleep(1.0)
                return StageOutput.ok()

        holder_graph = Pipeline().with_stage("slow", Hold, StageKind.WORK).build(
            interceptors=stack)
        holder = asyncio.ensure_future(holder_graph.run(PipelineContext(data={})))
        await asyncio.sleep(0.05)
        assert limiter.in_use("slow") == 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        ctx = PipelineContext(data={"_timeout_ms": 200})
        single = Pipeline().with_stage("slow", SlowStage, StageKind.WORK).build(interceptors=stack)
        await single.run(ctx)  # short-circuited: Stageflow reports the stage as completed
        assert loop.time() - start == pytest.approx(0.2, abs=1e-6)
        refused = ctx.data[REFUSED_KEY.format(stage="slow")]
        assert refused["reason"] in {"wait_timeout", "deadline"}
        assert limiter.in_use("slow") == 1
        await holder
        assert limiter.in_use("slow") == 0
        assert len(limiter.limiter) == 0

    run_virtual(main())


def test_open_breaker_consumes_nothing_and_refusals_never_trip_it() -> None:
    plus = sfp.build({"concurrency": {"limit": 1}, "backpressure": {"max_queue": 0},
                      "circuit_breaker": {"failure_threshold": 3}}, env={})
    breaker = next(i for i in plus.interceptors if isinstance(i, LimitAwareCircuitBreaker))
    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(SleepTool(probe))
    registry = plus.registry(tools)

    class Refused:
        """Its tool call is refused by backpressure: a limiter refusal, not a failure."""

        name = "call"
        kind = StageKind.WORK

        async def execute(self, ctx: Any) -> StageOutput:
            await registry.execute(SimpleAction("SLEEP", {"seconds": 0}), {})
            return StageOutput.ok()

    class Failing:
        name = "call"
        kind = StageKind.WORK

        async def execute(self, ctx: Any) -> StageOutput:
            raise RuntimeError("downstream 500")

    refused = Pipeline().with_stage("call", Refused, StageKind.WORK).build(
        interceptors=plus.interceptors)
    failing = Pipeline().with_stage("call", Failing, StageKind.WORK).build(
        interceptors=plus.interceptors)

    async def main() -> None:
        hold = asyncio.ensure_future(registry.execute(SimpleAction("SLEEP", {"seconds": 100}), {}))
        await asyncio.sleep(0)
        for _ in range(50):
            with pytest.raises(Exception) as error:
                await refused.run(PipelineContext(data={}))
            assert "queue is full" in str(error.value)  # Stageflow keeps only the text
        assert breaker.state("call") == "closed" and breaker._failure_counts.get("call", 0) == 0
        hold.cancel()
        for attempt in range(3):
            with pytest.raises(Exception, match="downstream 500"):
                await failing.run(PipelineContext(data={}))
            assert breaker.state("call") == ("open" if attempt == 2 else "closed")
        assert breaker.state("call") == "open"
        before = plus.chain.statistics()
        assert before is not None
        for _ in range(5):
            await refused.run(PipelineContext(data={}))  # short-circuited by the open breaker
        after = plus.chain.statistics()
        assert after is not None
        assert after.admitted == before.admitted and after.rejected == before.rejected
        assert probe.calls == 1  # only the held call ever reached the tool

    run_virtual(main())


def test_entry_point_loader_builds_our_interceptors_by_name() -> None:
    names = sfp.available_interceptors()
    assert {"stageflow_plus.call_scope", "stageflow_plus.stage_limit",
            "stageflow_plus.circuit_breaker"} <= set(names)
    limiter = sfp.load_interceptor("stageflow_plus.stage_limit", {"limits": {"fan_out": 1}})
    assert isinstance(limiter, StageLimitInterceptor)
    scope = sfp.load_interceptor("stageflow_plus.call_scope")
    assert isinstance(scope, CallScopeInterceptor)
    with pytest.raises(sfp.UnknownInterceptor, match=r"available: .*stageflow_plus\.call_scope"):
        sfp.load_interceptor("nope")
    with pytest.raises(ConfigError, match="rejects its options"):
        sfp.load_interceptor("stageflow_plus.call_scope", {"bogus": 1})
    with pytest.raises(ConfigError, match=r"limits\['fan_out'\] must be an int >= 1"):
        sfp.load_interceptor("stageflow_plus.stage_limit", {"limits": {"fan_out": 0}})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"concurency": {}}, r"stageflow_plus.concurency: unknown section"),
        ({"concurrency": {"limt": 3}}, r"stageflow_plus.concurrency.limt: unknown key"),
        ({"concurrency": {"limit": 0}}, r"stageflow_plus.concurrency.limit must be >= 1, got 0"),
        ({"rate": {"rates": [{"limit": 10, "pre": 1}]}}, r"rates\[0\].pre: unknown key"),
        ({"backpressure": {"shedding": "drop"}},
         r"stageflow_plus.backpressure.shedding must be one"),
        ({"stage_limits": {"s": 1}, "interceptor_order": {"stage_limit": 9}},
         r"must run inside the circuit breaker"),
        ({"interceptor_order": {"call_scope": 3}},
         r"interceptor_order.call_scope = 3: .*must run after TimeoutInterceptor"),
        ({"plugins": ["missing_plugin"]}, r"unknown interceptor 'missing_plugin'"),
        ({"plugin_options": {"x": {}}}, r"plugin_options.x: options for a plugin that is not"),
        ({"ceilings": {"on_excess": "ignore"}}, r"on_excess must be one of 'clamp', 'error'"),
    ],
)
def test_bad_config_is_refused_naming_the_entry(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sfp.build(config, env={})


def test_environment_variables_configure_a_global_limit(tmp_path: Path) -> None:
    plus = sfp.build(None, env={"STAGEFLOW_PLUS_MAX_CONCURRENT": "7", "STAGEFLOW_PLUS_RPM": "600"})
    assert plus.config["concurrency"] == {"limit": 7}
    assert plus.config["rate"]["rates"] == [{"limit": 600, "per": 60}]
    assert plus.config["rate"].get("key", "global") == "global"
    path = tmp_path / "c.toml"
    path.write_text("[stageflow_plus.backpressure]\nmax_queue = 5\n")
    from_env_file = sfp.build(None, env={"STAGEFLOW_PLUS_CONFIG": str(path)})
    assert from_env_file.config == {"backpressure": {"max_queue": 5}}
    with pytest.raises(ConfigError, match="STAGEFLOW_PLUS_MAX_CONCURRENT='lots' must be an int"):
        sfp.build(None, env={"STAGEFLOW_PLUS_MAX_CONCURRENT": "lots"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[stageflow_plus\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        sfp.build(bad, env={})


def test_waiting_for_a_stage_permit_does_not_eat_the_tool_calls_deadline() -> None:
    """Stageflow starts a stage's timeout after every before(): a stage that waited 150 ms
    for its permit still gives its tool calls the full 200 ms from when it starts."""
    stage_limit = StageLimitInterceptor({"s": 1})
    plus = sfp.build({}, env={}, extra=[stage_limit])
    seen: list[tuple[float, float | None]] = []

    class Hold:
        name = "s"
        kind = StageKind.WORK

        async def execute(self, ctx: Any) -> StageOutput:
            scope = current_scope()
            seen.append((asyncio.get_running_loop().time(),
                         scope.deadline if scope is not None else None))
            await asyncio.sleep(0.15)
            return StageOutput.ok()

    graph = Pipeline().with_stage("s", Hold, StageKind.WORK).build(
        interceptors=plus.interceptors)

    async def main() -> None:
        await asyncio.gather(graph.run(PipelineContext(data={"_timeout_ms": 200})),
                             graph.run(PipelineContext(data={"_timeout_ms": 200})))

    run_virtual(main())
    (first_start, first_deadline), (second_start, second_deadline) = seen
    assert second_start - first_start == pytest.approx(0.15, abs=1e-6)
    assert first_deadline == pytest.approx(first_start + 0.2, abs=1e-6)
    assert second_deadline == pytest.approx(second_start + 0.2, abs=1e-6)


def test_cancelled_stages_leave_no_bookkeeping_behind() -> None:
    """Stageflow runs no after() for a stage cancelled by a sibling's failure: the scope and
    the stage permit are dropped by done-callbacks, so long-lived services do not grow."""
    stage_limit = StageLimitInterceptor({"slow": 2})
    plus = sfp.build({}, env={}, extra=[stage_limit])
    scope_interceptor = next(i for i in plus.interceptors
                             if isinstance(i, CallScopeInterceptor))

    graph = (Pipeline().with_stage("slow", SlowStage, StageKind.WORK)
             .with_stage("boom", BoomStage, StageKind.WORK).build(interceptors=plus.interceptors))

    async def main() -> None:
        for _ in range(5):
            with pytest.raises(Exception, match="sibling failed"):
                await graph.run(PipelineContext(data={}))
        await asyncio.sleep(0)

    run_virtual(main())
    assert stage_limit.in_use("slow") == 0
    assert stage_limit._leases == {}
    assert scope_interceptor._active == {}


def test_a_run_override_applies_in_a_config_without_its_limiter_table() -> None:
    # a rate-only config: the build adds an uncapped ConcurrencyLimiter for the override
    plus = sfp.build({"rate": {"rates": [{"limit": 1000, "per": 1}]}}, env={})
    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(SleepTool(probe))
    graph = Pipeline().with_stage(
        "fan_out", fan_out_stage(plus.registry(tools), 8), StageKind.WORK
    ).build(interceptors=plus.interceptors)

    async def run(data: dict[str, Any]) -> Any:
        return await graph.run(PipelineContext(data=data))

    run_virtual(run({}))
    assert probe.max_in_flight == 8  # nothing configured caps concurrency
    probe.max_in_flight = 0
    run_virtual(run({"_concurrency": 2}))
    assert probe.max_in_flight == 2

    # a concurrency-only config has no rate limiter: a run's _rates is refused, not ignored
    capped = sfp.build({"concurrency": {"limit": 4}}, env={})
    graph = Pipeline().with_stage(
        "fan_out", fan_out_stage(capped.registry(tools), 1), StageKind.WORK
    ).build(interceptors=capped.interceptors)
    with pytest.raises(Exception) as raised:
        run_virtual(run({"_rates": {"requests": 5}}))
    assert "'rates' needs a TokenBucketRateLimiter" in _all_messages(raised.value)


@pytest.mark.parametrize("reset_timeout", [float("nan"), float("inf"), 0, True, "30"])
def test_the_stage_breaker_refuses_a_reset_timeout_it_could_never_reach(
        reset_timeout: Any) -> None:
    with pytest.raises(ConfigError, match="reset_timeout must be a finite number > 0"):
        LimitAwareCircuitBreaker(reset_timeout=reset_timeout)
