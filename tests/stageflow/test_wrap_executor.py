"""Limiting an EXISTING AdvancedToolExecutor: its tools, undo store and approvals stay its own."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any, assert_type

import pytest
from stageflow.events import set_event_sink
from stageflow.tools import AdvancedToolExecutor, ToolRegistry
from stageflow.tools.approval import ApprovalService
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput
from stageflow.tools.definitions import ToolDefinition
from stageflow.tools.definitions import ToolOutput as AdvancedOutput
from stageflow.tools.undo import UndoStore

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    LimitedAdvancedToolExecutor,
    LimitedToolRegistry,
    QueueFull,
    ToolCallChain,
)
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction, settle

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Action:
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class Ctx:
    pipeline_run_id: uuid.UUID | None = None
    request_id: uuid.UUID | None = None
    execution_mode: str | None = None
    org_id: str | None = "acme"


class Sink:
    def __init__(self) -> None:
        self.types: list[str] = []

    async def emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.types.append(type)

    def try_emit(self, *, type: str, data: dict[str, Any] | None) -> None:
        self.types.append(type)


class AuditedExecutor(AdvancedToolExecutor):
    """A user's subclass with behaviour and state of its own."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audit: list[str] = []

    async def execute(self, action: Any, ctx: Any) -> AdvancedOutput:
        self.audit.append(action.type)
        return await super().execute(action, ctx)

    def audited(self) -> int:
        return len(self.audit)


async def approve_pending(service: ApprovalService) -> int:
    """A human approving every request waiting now; returns how many."""
    pending = await service.get_pending_requests()
    for request in pending:
        await service.record_decision(request.id, granted=True)
    await settle()
    return len(pending)


async def test_wrap_keeps_undo_store_approvals_tools_and_subclass() -> None:
    sink = Sink()
    set_event_sink(sink)
    undo_store, approvals = UndoStore(), ApprovalService()
    executor = AuditedExecutor(undo_store=undo_store, approval_service=approvals)
    # Stageflow 1.2 reads `undo_store or get_undo_store()`: an EMPTY store is falsy and is
    # replaced by the process-wide one; give the executor its own store explicitly
    executor._undo_store = undo_store
    document = {"text": "v1"}
    probe, release = ConcurrencyProbe(), asyncio.Event()

    async def edit(tool_input: Any) -> AdvancedOutput:
        async def work() -> AdvancedOutput:
            await release.wait()
            before = document["text"]
            document["text"] = tool_input.payload["text"]
            return AdvancedOutput(success=True, undo_metadata={"text": before})

        result: AdvancedOutput = await probe.run("EDIT", work)
        return result

    async def undo(metadata: Any) -> None:
        document["text"] = metadata.undo_data["text"]

    executor.register(ToolDefinition(name="EDIT", action_type="EDIT", handler=edit,
                                     requires_approval=True, undoable=True, undo_handler=undo))
    chain = ToolCallChain([Backpressure(max_queue=3), ConcurrencyLimiter(2)])
    limited = LimitedAdvancedToolExecutor.wrap(executor, chain)
    assert limited.wrapped is executor
    assert limited._undo_store is undo_store and limited._approval_service is approvals
    assert limited._tools is executor._tools and limited.config is executor.config

    actions = [Action("EDIT", {"text": f"v{i + 2}"}) for i in range(5)]
    tasks = [asyncio.ensure_future(limited.execute(a, Ctx())) for a in actions]
    await settle()
    # two admitted, awaiting approval while holding their permits; three queued (full)
    with pytest.raises(QueueFull):
        await limited.execute(Action("EDIT", {"text": "refused"}), Ctx())
    assert await approve_pending(approvals) == 2
    assert probe.in_flight == 2
    release.set()
    approved = 2
    for _ in range(10):  # the queued three are admitted, ask, and are approved in turn
        await settle()
        approved += await approve_pending(approvals)
    assert approved == 5
    outputs = await asyncio.gather(*tasks)
    assert_type(outputs[0], AdvancedOutput)
    assert all(o.success for o in outputs) and probe.max_in_flight == 2
    assert executor.audit == ["EDIT"] * 5  # each admitted call ran through the subclass
    assert limited.audited() == 5  # its own methods are reachable through the wrapper
    assert len(undo_store) == 5  # undo metadata landed in the executor's own store
    last = actions[-1]
    assert document["text"] == "v6"
    assert await limited.undo_action(last.id, Ctx()) is True
    assert document["text"] == "v5" and len(undo_store) == 4
    assert sink.types.count("tool.completed") == 5 and sink.types.count("tool.rejected") == 1
    assert "approval.requested" in sink.types or "tool.approval_requested" in sink.types

    # registering through either object is seen by both
    async def noop(tool_input: Any) -> AdvancedOutput:
        return AdvancedOutput(success=True)

    limited.register(ToolDefinition(name="NOOP", action_type="NOOP", handler=noop))
    assert executor.can_execute("NOOP")
    assert (await limited.execute(Action("NOOP"), Ctx())).success
    assert executor.audit[-1] == "NOOP"


async def test_wrap_refuses_what_it_cannot_wrap() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)])
    limited = LimitedAdvancedToolExecutor.wrap(AdvancedToolExecutor(), chain)
    with pytest.raises(ConfigError, match="already runs under a chain"):
        LimitedAdvancedToolExecutor.wrap(limited, chain)
    with pytest.raises(ConfigError, match="expected a Stageflow AdvancedToolExecutor"):
        LimitedAdvancedToolExecutor.wrap(ToolRegistry(), chain)  # type: ignore[arg-type]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        limited.nothing  # noqa: B018


class Echo(BaseTool):
    name = "echo"
    description = "echoes"
    action_type = "ECHO"

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        return ToolOutput(success=True, data=dict(input.action.payload))


async def test_registry_execute_is_typed() -> None:
    tools = ToolRegistry()
    tools.register(Echo())
    registry = LimitedToolRegistry(ToolCallChain([ConcurrencyLimiter(1)]), tools)
    output = await registry.execute(SimpleAction("ECHO", {"a": 1}), {})
    assert_type(output, ToolOutput | None)
    assert output is not None and output.data == {"a": 1}
