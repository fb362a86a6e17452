"""ToolResultBag: conflicts, versions, atomic updates and a real lost-update race."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stageflow.context import OutputConflictError
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

from stageflow_plus import ConcurrencyLimiter, LimitedToolRegistry, ToolCallChain
from stageflow_plus.primitives.errors import StageflowPlusError
from stageflow_plus.stageflow.output_bag import (
    ToolResultBag,
    VersionConflict,
    Versioned,
    WriteConflict,
)
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction, settle

pytestmark = pytest.mark.anyio

TOOLS = 20


# -- write / read / conflicts ----------------------------------------------------------------


async def test_second_writer_raises_a_stageflow_output_conflict_naming_both_writers() -> None:
    bag = ToolResultBag()
    first = await bag.write("weather", {"t": 21}, writer="tool-a")
    assert first == Versioned({"t": 21}, 1, "tool-a")
    with pytest.raises(OutputConflictError) as caught:
        await bag.write("weather", {"t": 99}, writer="tool-b")
    err = caught.value
    assert isinstance(err, WriteConflict) and isinstance(err, StageflowPlusError)
    assert (err.key, err.existing_writer, err.new_writer) == ("weather", "tool-a", "tool-b")
    assert err.stage_name == "weather" and err.existing_attempt == 1  # Stageflow's fields
    assert "'weather'" in str(err) and "'tool-a'" in str(err) and "'tool-b'" in str(err)
    assert bag.read("weather") == first  # the first write stays


async def test_same_writer_twice_conflicts_unless_overwrite_is_allowed() -> None:
    bag = ToolResultBag()
    await bag.write("k", 1, writer="a")
    with pytest.raises(WriteConflict):
        await bag.write("k", 2, writer="a")
    again = await bag.write("k", 2, writer="a", allow_overwrite=True)
    assert again == Versioned(2, 2, "a")
    assert [v.value for v in bag.history("k")] == [1, 2]


async def test_read_missing_key_raises_key_error_and_get_returns_none() -> None:
    bag = ToolResultBag()
    with pytest.raises(KeyError):
        bag.read("nope")
    assert bag.get("nope") is None and bag.version("nope") == 0 and bag.history("nope") == ()
    assert "nope" not in bag and len(bag) == 0


async def test_compare_and_set_checks_the_version() -> None:
    bag = ToolResultBag()
    assert await bag.compare_and_set("c", 0, 1, writer="a") == Versioned(1, 1, "a")
    with pytest.raises(VersionConflict) as caught:
        await bag.compare_and_set("c", 0, 5, writer="b")
    err = caught.value
    assert isinstance(err, OutputConflictError)
    assert (err.expected_version, err.current_version, err.current_writer) == (0, 1, "a")
    assert await bag.compare_and_set("c", 1, 2, writer="b") == Versioned(2, 2, "b")
    with pytest.raises(VersionConflict) as missing:
        await bag.compare_and_set("other", 3, 0, writer="b")
    assert missing.value.current_version == 0 and missing.value.current_writer is None


async def test_update_with_sync_and_async_functions_and_default() -> None:
    bag = ToolResultBag()
    with pytest.raises(KeyError):
        await bag.update("n", lambda v: v + 1, writer="a")
    assert (await bag.update("n", lambda v: v + 1, writer="a", default=0)).value == 1

    async def double(v: int) -> int:
        await asyncio.sleep(0)
        return v * 2

    assert await bag.update("n", double, writer="b") == Versioned(2, 2, "b")
    with pytest.raises(ZeroDivisionError):
        await bag.update("n", lambda v: v / 0, writer="c")
    assert bag.read("n").version == 2  # a failing fn stores nothing


async def test_snapshot_is_immutable_and_frozen_in_time() -> None:
    bag = ToolResultBag()
    await bag.write("a", 1, writer="x")
    snap = bag.snapshot()
    await bag.write("b", 2, writer="x")
    assert dict(snap) == {"a": 1}
    with pytest.raises(TypeError):
        snap["a"] = 5  # type: ignore[index]


async def test_statistics_count_attempts_and_conflicts() -> None:
    bag = ToolResultBag(history=2)
    await bag.write("a", 1, writer="x")
    with pytest.raises(WriteConflict):
        await bag.write("a", 1, writer="y")
    with pytest.raises(VersionConflict):
        await bag.compare_and_set("a", 0, 1, writer="y")
    for _ in range(3):
        await bag.update("a", lambda v: v + 1, writer="z")
    stats = bag.statistics()
    assert (stats.keys, stats.writes, stats.write_conflicts, stats.version_conflicts) == (
        1, 4, 1, 1)
    assert stats.updates == 3 and stats.attempts == (("a", 6),) and stats.locks_waiting == 0
    assert [v.version for v in bag.history("a")] == [3, 4]  # bounded history
    assert "1 keys, 4 writes, 2 conflicts" in repr(bag)


def test_history_size_is_validated() -> None:
    with pytest.raises(TypeError):
        ToolResultBag(history=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ToolResultBag(history=0)


async def test_write_waits_for_an_async_update_in_progress_then_conflicts() -> None:
    bag = ToolResultBag()
    release = asyncio.Event()

    async def slow(v: int) -> int:
        await release.wait()
        return v + 1

    updating = asyncio.ensure_future(bag.update("k", slow, writer="u", default=0))
    await settle()
    writing = asyncio.ensure_future(bag.write("k", 100, writer="w"))
    await settle()
    assert bag.statistics().locks_waiting == 1 and not writing.done()
    release.set()
    await settle()
    assert (await updating).value == 1
    with pytest.raises(WriteConflict):
        await writing  # the write came second: it may not overwrite the update
    assert bag.statistics().locks_waiting == 0 and not bag._locks  # idle locks forgotten


async def test_cancelled_while_waiting_for_a_key_leaves_the_bag_unchanged() -> None:
    bag = ToolResultBag()
    release = asyncio.Event()

    async def slow(v: int) -> int:
        await release.wait()
        return v + 1

    updating = asyncio.ensure_future(bag.update("k", slow, writer="u", default=0))
    await settle()
    waiter = asyncio.ensure_future(bag.update("k", lambda v: v + 10, writer="w"))
    await settle()
    waiter.cancel()
    await settle()
    release.set()
    assert (await updating).value == 1
    assert waiter.cancelled() and bag.read("k") == Versioned(1, 1, "u")
    assert not bag._locks and bag.statistics().locks_waiting == 0


# -- the lost-update race ---------------------------------------------------------------------


async def _racing_tools(step: Any) -> None:
    """Start ``TOOLS`` real tasks at once, each running ``step(i)``, and wait for all."""
    await asyncio.gather(*(asyncio.ensure_future(step(i)) for i in range(TOOLS)))


async def test_plain_dict_loses_updates() -> None:
    state = {"counter": 0}

    async def tool(i: int) -> None:
        seen = state["counter"]
        await asyncio.sleep(0)  # the tool's I/O: every other tool reads the same value
        state["counter"] = seen + 1

    await _racing_tools(tool)
    assert state["counter"] == 1  # 19 of 20 increments lost


async def test_update_loses_nothing() -> None:
    bag = ToolResultBag()
    await bag.write("counter", 0, writer="init")

    async def tool(i: int) -> None:
        await asyncio.sleep(0)  # the I/O happens outside the lock
        await bag.update("counter", lambda v: v + 1, writer=f"tool-{i}")

    await _racing_tools(tool)
    assert bag.read("counter").value == TOOLS and bag.read("counter").version == TOOLS + 1


async def test_compare_and_set_with_retries_loses_nothing_and_sees_conflicts() -> None:
    bag = ToolResultBag()
    await bag.write("counter", 0, writer="init")
    conflicts = 0

    async def tool(i: int) -> None:
        nonlocal conflicts
        while True:
            seen = bag.read("counter")
            await asyncio.sleep(0)  # the same race window as with the plain dict
            try:
                await bag.compare_and_set("counter", seen.version, seen.value + 1,
                                          writer=f"tool-{i}")
                return
            except VersionConflict:
                conflicts += 1

    await _racing_tools(tool)
    assert bag.read("counter").value == TOOLS
    assert conflicts > 0 and bag.statistics().version_conflicts == conflicts


class CounterTool(BaseTool):
    """A tool that increments a shared counter after some I/O, with or without the bag."""

    name = "counter"
    description = "increments a shared counter"
    action_type = "INCR"

    def __init__(self, probe: ConcurrencyProbe, bag: ToolResultBag | None,
                 state: dict[str, int]) -> None:
        self.probe = probe
        self.bag = bag
        self.state = state

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        async def work() -> None:
            if self.bag is None:
                seen = self.state["counter"]
                await asyncio.sleep(0)
                self.state["counter"] = seen + 1
            else:
                await asyncio.sleep(0)
                await self.bag.update("counter", lambda v: v + 1,
                                      writer=f"call-{input.action.payload['i']}", default=0)

        await self.probe.run("INCR", work)
        return ToolOutput(success=True)


@pytest.mark.parametrize("with_bag", [False, True], ids=["plain-dict", "bag"])
async def test_race_through_a_limited_tool_registry(with_bag: bool) -> None:
    probe, state = ConcurrencyProbe(), {"counter": 0}
    bag = ToolResultBag() if with_bag else None
    tools = ToolRegistry()
    tools.register(CounterTool(probe, bag, state))
    registry = LimitedToolRegistry(ToolCallChain([ConcurrencyLimiter(TOOLS)]), tools)
    outputs = await asyncio.gather(*(asyncio.ensure_future(
        registry.execute(SimpleAction("INCR", {"i": i}), {})) for i in range(TOOLS)))
    assert all(o is not None and o.success for o in outputs)
    assert probe.max_in_flight == TOOLS  # all 20 really overlapped
    if bag is None:
        assert state["counter"] == 1
    else:
        assert bag.read("counter").value == TOOLS
        assert bag.statistics().updates == TOOLS


def test_output_bag_example_runs() -> None:
    script = Path(__file__).parents[2] / "examples" / "output_bag_race.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=script.parents[1])
    assert done.returncode == 0, done.stderr
    assert "plain dict: 1" in done.stdout and "update(): 20" in done.stdout
