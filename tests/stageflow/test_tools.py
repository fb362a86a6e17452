"""Limited wrappers around Stageflow's real ToolRegistry, ToolExecutor and AdvancedToolExecutor."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from stageflow.events import set_event_sink
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput
from stageflow.tools.definitions import ToolDefinition
from stageflow.tools.definitions import ToolOutput as AdvancedOutput

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    LimitedAdvancedToolExecutor,
    LimitedToolExecutor,
    LimitedToolRegistry,
    ManualClock,
    QueueFull,
    ToolCallChain,
    call_scope,
)
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction, settle

pytestmark = pytest.mark.anyio


class RecordingSink:
    """An event sink that keeps every event (Stageflow's EventSink protocol)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.events.append((type, dict(data or {})))

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.events.append((type, dict(data or {})))

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


class GateTool(BaseTool):
    """A tool that holds until the test opens its gate, counted by a probe."""

    name = "slow"
    description = "waits for a gate"
    action_type = "SLOW"

    def __init__(self, probe: ConcurrencyProbe, gate: asyncio.Event) -> None:
        self.probe = probe
        self.gate = gate

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        async def work() -> ToolOutput:
            await self.gate.wait()
            return ToolOutput(success=True, data={"n": input.action.payload["n"]})

        result: ToolOutput = await self.probe.run("SLOW", work)
        return result


async def test_hundred_calls_on_a_real_registry_never_exceed_ten_in_flight() -> None:
    probe, gate = ConcurrencyProbe(), asyncio.Event()
    registry = ToolRegistry()
    registry.register(GateTool(probe, gate))
    limited = LimitedToolRegistry(ToolCallChain([ConcurrencyLimiter(10)]), registry)
    tasks = [asyncio.ensure_future(limited.execute(SimpleAction("SLOW", {"n": i}), {}))
             for i in range(100)]
    await settle()
    assert probe.in_flight == 10
    stats = limited.chain.statistics()
    assert stats is not None and stats.tasks_waiting == 90
    gate.set()
    outputs = await asyncio.gather(*tasks)
    assert probe.max_in_flight == 10 and probe.calls == 100
    assert all(o is not None and o.success for o in outputs)
    assert [o.data["n"] for o in outputs if o is not None and o.data] == list(range(100))
    final = limited.chain.statistics()
    assert final is not None and final.admitted == 100 and final.in_flight == 0


async def test_unlimited_registry_runs_all_hundred_at_once() -> None:
    """The control: without the wrapper Stageflow starts every call together."""
    probe, gate = ConcurrencyProbe(), asyncio.Event()
    registry = ToolRegistry()
    registry.register(GateTool(probe, gate))
    tasks = [asyncio.ensure_future(registry.execute(SimpleAction("SLOW", {"n": i}), {}))
             for i in range(100)]
    await settle()
    assert probe.in_flight == 100
    gate.set()
    await asyncio.gather(*tasks)


async def test_registration_is_shared_and_unknown_types_bypass_limits() -> None:
    registry = ToolRegistry()
    limited = LimitedToolRegistry(ToolCallChain([ConcurrencyLimiter(1)]), registry)
    limited.register(GateTool(ConcurrencyProbe(), asyncio.Event()))
    assert registry.can_execute("SLOW")
    missing = await limited.execute(SimpleAction("NOPE"), {})
    assert missing is not None and not missing.success
    stats = limited.chain.statistics()
    assert stats is not None and stats.admitted == 0


async def test_a_bad_call_is_raised_when_awaited_like_from_a_coroutine_function() -> None:
    registry = ToolRegistry()
    registry.register(GateTool(ConcurrencyProbe(), asyncio.Event()))
    limited = LimitedToolRegistry(ToolCallChain([ConcurrencyLimiter(1)]), registry,
                                  cost_of=lambda tool, payload: {"tokens": -1.0})
    pending = limited.execute(SimpleAction("SLOW", {"n": 1}), {})  # nothing raised yet
    with pytest.raises(ConfigError, match=r"cost_of\(\)\['tokens'\] for tool 'SLOW'"):
        await pending
    outcomes = await asyncio.gather(limited.execute(SimpleAction("SLOW", {"n": 2}), {}),
                                    limited.execute(object(), {}), return_exceptions=True)
    assert isinstance(outcomes[0], ConfigError) and isinstance(outcomes[1], AttributeError)
    stats = limited.chain.statistics()
    assert stats is not None and stats.admitted == 0


async def test_refusals_are_typed_and_reported_on_the_event_sink() -> None:
    sink = RecordingSink()
    set_event_sink(sink)
    probe, gate = ConcurrencyProbe(), asyncio.Event()
    registry = ToolRegistry()
    registry.register(GateTool(probe, gate))
    chain = ToolCallChain([ConcurrencyLimiter(1), Backpressure(max_queue=1)], clock=ManualClock())
    limited = LimitedToolRegistry(chain, registry)
    with call_scope(run_id="run-1", tenant="acme", priority=2):
        first = asyncio.ensure_future(limited.execute(SimpleAction("SLOW", {"n": 1}), {}))
        second = asyncio.ensure_future(limited.execute(SimpleAction("SLOW", {"n": 2}), {}))
        await settle()
        with pytest.raises(QueueFull) as refused:
            await limited.execute(SimpleAction("SLOW", {"n": 3}), {})
    assert refused.value.queue_depth == 1 and "queue is full" in str(refused.value)
    gate.set()
    await asyncio.gather(first, second)
    assert sink.types().count("tool.queued") == 1
    rejected = [data for kind, data in sink.events if kind == "tool.rejected"]
    assert len(rejected) == 1
    assert rejected[0]["reason"] == "queue_full" and rejected[0]["tenant"] == "acme"
    assert rejected[0]["priority"] == 2 and rejected[0]["tool"] == "SLOW"


@dataclass
class Ctx:
    """The parts of a PipelineContext the legacy ToolExecutor reads."""

    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass
class Plan:
    actions: list[SimpleAction]


async def test_legacy_executor_runs_the_plan_concurrently_in_plan_order() -> None:
    order: list[int] = []
    probe = ConcurrencyProbe()

    class Echo(BaseTool):
        name = "echo"
        description = "echo"
        action_type = "ECHO"

        async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
            async def work() -> ToolOutput:
                n = input.action.payload["n"]
                await asyncio.sleep(0)
                order.append(n)
                if n == 3:
                    return ToolOutput(success=False, error="three failed")
                return ToolOutput(success=True, artifacts=[{"n": n}])

            result: ToolOutput = await probe.run("ECHO", work)
            return result

    registry = ToolRegistry()
    registry.register(Echo())
    executor = LimitedToolExecutor(ToolCallChain([ConcurrencyLimiter(4)]), registry=registry)
    plan = Plan([SimpleAction("ECHO", {"n": n}) for n in range(8)] + [SimpleAction("MISSING")])
    result = await executor.execute(Ctx(), plan)
    assert probe.max_in_flight == 4  # concurrent, but never beyond the limit
    assert result.actions_executed == 7 and result.actions_failed == 2
    assert [a["n"] for a in result.artifacts_produced] == [0, 1, 2, 4, 5, 6, 7]
    assert result.requires_reentry
    assert (await executor.execute(Ctx(), None)).actions_executed == 0


@dataclass(frozen=True)
class AdvancedAction:
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class ExecCtx:
    pipeline_run_id: uuid.UUID | None = None
    request_id: uuid.UUID | None = None
    execution_mode: str | None = None
    org_id: str | None = "tenant-a"


async def test_advanced_executor_keeps_tool_events_and_adds_rejections() -> None:
    sink = RecordingSink()
    set_event_sink(sink)
    probe, gate = ConcurrencyProbe(), asyncio.Event()

    async def handler(tool_input: Any) -> AdvancedOutput:
        async def work() -> AdvancedOutput:
            await gate.wait()
            return AdvancedOutput(success=True, data={"ok": True})

        result: AdvancedOutput = await probe.run("H", work)
        return result

    chain = ToolCallChain([ConcurrencyLimiter(10), Backpressure(max_queue=90)])
    executor = LimitedAdvancedToolExecutor(chain)
    executor.register(ToolDefinition(name="work", action_type="WORK", handler=handler))
    ctx = ExecCtx(pipeline_run_id=uuid.uuid4(), request_id=uuid.uuid4())
    tasks = [asyncio.ensure_future(executor.execute(AdvancedAction("WORK"), ctx))
             for _ in range(100)]
    await settle()
    assert probe.in_flight == 10
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    ok = [o for o in outcomes if isinstance(o, AdvancedOutput)]
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    assert len(ok) == 100 - len(refused) and len(refused) == 0
    assert probe.max_in_flight == 10
    kinds = sink.types()
    for stageflow_event in ("tool.invoked", "tool.started", "tool.completed"):
        assert kinds.count(stageflow_event) == 100, stageflow_event
    assert kinds.count("tool.queued") == 90
    # one more than the queue holds while it is full: refused, typed, and on the sink
    gate.clear()
    held = [asyncio.ensure_future(executor.execute(AdvancedAction("WORK"), ctx))
            for _ in range(100)]
    await settle()
    with pytest.raises(QueueFull):
        await executor.execute(AdvancedAction("WORK"), ctx)
    assert kinds != sink.types() and sink.types().count("tool.rejected") == 1
    rejected = dict(sink.events)["tool.rejected"]
    assert rejected["tenant"] == "tenant-a" and rejected["queue_depth"] == 90
    gate.set()
    await asyncio.gather(*held)
    assert sink.types().count("tool.invoked") == 200  # the refused call never reached the tool


async def test_a_call_made_while_nobody_waited_that_queues_meanwhile_leaves_cleanly() -> None:
    """Both coroutines are made while nobody waits (the compiled path); the second finds
    the slot taken when it starts, queues, and is cancelled: it leaves the queue, nothing
    leaks, and the first's slot comes back when the first is cancelled while running."""
    probe, gate = ConcurrencyProbe(), asyncio.Event()
    registry = ToolRegistry()
    registry.register(GateTool(probe, gate))
    limited = LimitedToolRegistry(ToolCallChain([ConcurrencyLimiter(1)]), registry)
    first = limited.execute(SimpleAction("SLOW", {"n": 1}), {})
    second = limited.execute(SimpleAction("SLOW", {"n": 2}), {})
    running = asyncio.ensure_future(first)
    queued = asyncio.ensure_future(second)
    await settle()
    stats = limited.chain.statistics()
    assert stats is not None and stats.in_flight == 1 and stats.tasks_waiting == 1
    queued.cancel()
    await settle()
    stats = limited.chain.statistics()
    assert stats is not None and stats.in_flight == 1 and stats.tasks_waiting == 0
    running.cancel()
    await settle()
    assert running.cancelled() and queued.cancelled() and probe.in_flight == 0
    stats = limited.chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0
    gate.set()
    output = await limited.execute(SimpleAction("SLOW", {"n": 3}), {})
    assert output is not None and output.data == {"n": 3}
    assert all(p.in_use == 0 for p in limited.chain.statistics().pools)  # type: ignore[union-attr]


async def test_a_tool_error_on_the_compiled_path_is_raised_and_its_permit_returned() -> None:
    class Broken(BaseTool):
        name = "broken"
        description = "raises"
        action_type = "BROKEN"

        async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
            raise ValueError("tool failed")

    registry = ToolRegistry()
    registry.register(Broken())
    limited = LimitedToolRegistry(ToolCallChain([ConcurrencyLimiter(1)]), registry)
    for _ in range(3):
        with pytest.raises(ValueError, match="tool failed"):
            await limited.execute(SimpleAction("BROKEN"), {})
    stats = limited.chain.statistics()
    assert stats is not None and stats.admitted == 3 and stats.in_flight == 0
