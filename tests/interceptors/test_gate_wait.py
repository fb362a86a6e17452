"""A call queued behind others waits in a Python frame (interceptors/gate_wait.py).

The gate runs such a call through :func:`admit_then_run` so that, cancelled, it unwinds
through no compiled frame (each one adds GC-tracked traceback objects). These tests pin that
the path is taken, and that it keeps every cancellation rule of the compiled path: a
cancelled waiter leaves the queue, a grant that raced with the cancellation is handed back,
a call whose task never started holds nothing, and a failing tool still gives its permit
back. Every test runs in both cores.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

import pytest

from stageflow_plus import (
    AdmissionPolicy,
    ConcurrencyLimiter,
    ConcurrencyPool,
    Limiter,
    LoopClock,
    QueueFull,
    ToolCall,
    ToolCallChain,
    WaitTimeout,
)
from stageflow_plus.testing import VirtualTimeLoop, settle

pytestmark = pytest.mark.anyio


class Held:
    """A tool that runs until its call's event is set, recording who ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def __call__(self, call: ToolCall) -> str:
        self.ran.append(call.tool)
        event = self.release.setdefault(call.tool, asyncio.Event())
        await event.wait()
        return call.tool

    def finish(self, tool: str) -> None:
        self.release.setdefault(tool, asyncio.Event()).set()


async def run_call(chain: ToolCallChain, tool: Held, name: str) -> Any:
    return await chain.run(ToolCall(name), tool)  # the call made in its task, as users do


def start(chain: ToolCallChain, tool: Held, name: str) -> asyncio.Task[Any]:
    return asyncio.ensure_future(run_call(chain, tool, name))


def frames_of(error: BaseException) -> list[str]:
    return [f"{frame.filename}:{frame.name}" for frame in traceback.extract_tb(error.__traceback__)]


async def test_a_cancelled_call_behind_others_leaves_through_the_python_frame() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)])
    tool = Held()
    holder, first, second = (start(chain, tool, n) for n in ("holder", "first", "second"))
    await settle()
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 1 and stats.tasks_waiting == 2
    second.cancel()
    with pytest.raises(asyncio.CancelledError) as raised:
        await second
    frames = frames_of(raised.value)
    assert any("gate_wait.py:admit_then_run" in f for f in frames), frames
    assert not any("gate.py" in f and "gate_wait" not in f for f in frames), frames
    stats = chain.statistics()
    assert stats is not None and stats.tasks_waiting == 1 and stats.cancelled == 1
    tool.finish("holder")
    tool.finish("first")
    assert await holder == "holder" and await first == "first"
    assert tool.ran == ["holder", "first"]
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and all(p.in_use == 0 for p in stats.pools)


async def test_a_grant_that_raced_with_the_cancellation_is_handed_back() -> None:
    conc = ConcurrencyLimiter(1)
    chain = ToolCallChain([conc])
    tool = Held()
    holder, first, second, third = (
        start(chain, tool, n) for n in ("holder", "first", "second", "third")
    )
    await settle()
    first.cancel()  # (waits in the compiled frame: the queue was empty when it came)
    await asyncio.gather(first, return_exceptions=True)
    conc.set_limit("global", 2)  # grants "second" at once ...
    second.cancel()  # ... cancelled before it could run: its permit goes to "third"
    await asyncio.gather(second, return_exceptions=True)
    await settle()
    assert tool.ran == ["holder", "third"]
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 2 and stats.tasks_waiting == 0
    tool.finish("holder")
    tool.finish("third")
    assert (await holder, await third) == ("holder", "third")
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and all(p.in_use == 0 for p in stats.pools)


async def test_a_call_whose_task_never_started_holds_nothing() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)])
    tool = Held()
    holder, first = start(chain, tool, "holder"), start(chain, tool, "first")
    await settle()
    # made behind a waiting call (the Python-frame path); its task never runs a step
    never = asyncio.ensure_future(chain.run(ToolCall("never"), tool))
    never.cancel()
    await asyncio.gather(never, return_exceptions=True)
    stats = chain.statistics()
    assert stats is not None and stats.tasks_waiting == 1 and stats.cancelled == 0
    tool.finish("holder")
    tool.finish("first")
    assert (await holder, await first) == ("holder", "first")
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.admitted == 2


async def test_a_failing_tool_behind_others_gives_its_permit_back() -> None:
    chain = ToolCallChain([ConcurrencyLimiter(1)])
    tool = Held()

    async def boom(call: ToolCall) -> str:
        raise RuntimeError("downstream failed")

    holder, first = start(chain, tool, "holder"), start(chain, tool, "first")
    await settle()
    failing = asyncio.ensure_future(chain.run(ToolCall("boom"), boom))
    await settle()
    tool.finish("holder")
    tool.finish("first")
    with pytest.raises(RuntimeError, match="downstream failed"):
        await failing
    assert (await holder, await first) == ("holder", "first")
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and all(p.in_use == 0 for p in stats.pools)


async def read_time(clock: LoopClock) -> tuple[float, asyncio.AbstractEventLoop]:
    return clock.now(), clock.running_loop()


def test_the_loop_clock_follows_the_running_loop_from_loop_to_loop() -> None:
    """The clock trusts the loop it last saw only while that loop runs."""
    clock = LoopClock()
    first, _ = asyncio.run(read_time(clock))
    assert abs(first - time.monotonic()) < 5.0
    virtual = VirtualTimeLoop()
    try:
        later, loop = virtual.run_until_complete(_after(3600.0, clock))
    finally:
        virtual.close()
    assert loop is virtual and later == pytest.approx(3600.0)  # virtual time, not the host's
    again, again_loop = asyncio.run(read_time(clock))
    assert again_loop is not virtual and abs(again - time.monotonic()) < 5.0
    assert abs(clock.now() - time.monotonic()) < 5.0  # no loop runs: the host's clock
    with pytest.raises(RuntimeError):
        clock.running_loop()


async def _after(seconds: float, clock: LoopClock) -> tuple[float, asyncio.AbstractEventLoop]:
    await asyncio.sleep(seconds)
    return await read_time(clock)


async def test_an_admission_policy_set_at_runtime_bounds_the_queue_and_the_wait() -> None:
    limiter = Limiter(name="policy")
    pool = ConcurrencyPool("pool", 1)
    held = await limiter.acquire([(pool, 1.0)])
    limiter.admission = AdmissionPolicy(max_queue=1, max_wait=0.05)
    waiting = asyncio.ensure_future(limiter.acquire([(pool, 1.0)]))
    await settle()
    with pytest.raises(QueueFull):
        await limiter.acquire([(pool, 1.0)])
    with pytest.raises(WaitTimeout):
        await waiting
    limiter.admission = AdmissionPolicy()
    waiters = [asyncio.ensure_future(limiter.acquire([(pool, 1.0)])) for _ in range(3)]
    await settle()
    assert len(limiter) == 3
    held.release()
    for task in waiters:
        (await task).release()
    assert limiter.statistics().in_flight == 0
