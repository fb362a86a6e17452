"""run_batch: input order, captured errors, isolated contexts, strategies, cancellation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stageflow.tools import ToolRegistry
from stageflow.tools.base import BaseTool, ToolInput, ToolOutput

from stageflow_plus import ConcurrencyLimiter, LimitedToolRegistry, ManualClock, ToolCallChain
from stageflow_plus.primitives.errors import ConfigError, StageflowPlusError
from stageflow_plus.stageflow.batch import (
    BatchFailed,
    BatchResult,
    Strategy,
    ToolFailed,
    run_batch,
)
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction, clock_sleep, drive, settle

pytestmark = pytest.mark.anyio


class Work(BaseTool):
    """Sleeps ``delay`` on the manual clock (or yields ``yields`` times), then answers.

    Payload: ``delay`` / ``yields``, ``fail`` ("raise" or "output"), ``n`` (echoed back).
    """

    name = "work"
    description = "a call with a scripted duration and outcome"
    action_type = "WORK"

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.probe = ConcurrencyProbe()
        self.contexts: list[dict[str, Any]] = []

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        payload = input.action.payload

        async def work() -> ToolOutput:
            ctx.setdefault("trail", []).append(payload["n"])
            self.contexts.append(ctx)
            if self.clock is not None:
                await clock_sleep(self.clock, payload.get("delay", 0.1))
            for _ in range(payload.get("yields", 0)):
                await asyncio.sleep(0)
            if payload.get("fail") == "raise":
                raise RuntimeError(f"call {payload['n']} broke")
            if payload.get("fail") == "output":
                return ToolOutput(success=False, error=f"call {payload['n']} said no")
            return ToolOutput(success=True, data={"n": payload["n"]})

        result: ToolOutput = await self.probe.run("WORK", work)
        return result


def setup(limit: int = 10, clock: ManualClock | None = None) -> tuple[Work, ToolRegistry,
                                                                      ToolCallChain]:
    tool, tools = Work(clock), ToolRegistry()
    tools.register(tool)
    return tool, tools, ToolCallChain([ConcurrencyLimiter(limit)], clock=clock)


def actions(*specs: dict[str, Any]) -> list[SimpleAction]:
    return [SimpleAction("WORK", {"n": i, **spec}) for i, spec in enumerate(specs)]


def summary(result: BatchResult) -> tuple[Any, ...]:
    items = tuple(
        (i.index, i.ok, repr(i.value), repr(i.error), i.cancelled)
        for i in result.items
    )
    return items, result.ok, result.order, result.winner


async def run_on_clock(clock: ManualClock, coro: Any) -> Any:
    task = asyncio.ensure_future(coro)
    await drive(clock, [task])
    return task.result()


async def test_all_keeps_input_order_and_every_error_beside_the_results() -> None:
    clock = ManualClock()
    _, tools, chain = setup(clock=clock)
    calls = actions({"delay": 0.3}, {"delay": 0.1, "fail": "raise"}, {"delay": 0.2},
                    {"delay": 0.05, "fail": "output"})
    result: BatchResult = await run_on_clock(clock, run_batch(calls, tools, chain=chain))
    assert [i.index for i in result.items] == [0, 1, 2, 3]
    assert result.order == (3, 1, 2, 0)  # finishing order differs from input order
    assert [i.ok for i in result.items] == [True, False, True, False]
    assert result.items[0].value.data == {"n": 0} and result.items[2].value.data == {"n": 2}
    assert isinstance(result.items[1].error, RuntimeError) and result.items[1].value is None
    assert isinstance(result.items[3].error, ToolFailed)
    assert result.items[3].value.error == "call 3 said no"  # the failed output is kept
    assert (result.ok, result.succeeded, result.failed, result.cancelled) == (False, 2, 2, 0)
    with pytest.raises(BatchFailed) as caught:
        result.raise_for_status()
    group = caught.value
    assert isinstance(group, ExceptionGroup) and isinstance(group, StageflowPlusError)
    assert group.result is result and len(group.exceptions) == 2
    try:
        result.raise_for_status()
    except* RuntimeError as runtime:
        assert len(runtime.exceptions) == 1
    except* ToolFailed as failed:
        assert len(failed.exceptions) == 1


async def test_all_ok_and_an_empty_batch_raise_nothing() -> None:
    _, tools, chain = setup()
    result = await run_batch(actions({}, {}), tools, chain=chain)
    assert result.ok and result.values[0].data == {"n": 0} and result.winner is None
    result.raise_for_status()
    empty = await run_batch([], tools, chain=chain)
    assert empty.ok and empty.items == ()


async def test_each_call_gets_its_own_deep_copy_of_the_context() -> None:
    tool, tools, chain = setup()
    ctx: dict[str, Any] = {"trail": ["origin"], "user": {"id": 7}}
    await run_batch(actions({}, {}, {}), tools, chain=chain, ctx=ctx)
    assert sorted(c["trail"][-1] for c in tool.contexts) == [0, 1, 2]
    assert all(c["trail"] == ["origin", c["trail"][-1]] for c in tool.contexts)
    assert len({id(c["user"]) for c in tool.contexts} | {id(ctx["user"])}) == 4
    assert ctx == {"trail": ["origin"], "user": {"id": 7}}  # the caller's is untouched


async def test_four_100ms_calls_take_a_quarter_of_the_sequential_fake_time() -> None:
    clock = ManualClock()
    _, tools, chain = setup(limit=4, clock=clock)
    calls = actions(*({"delay": 0.1} for _ in range(4)))
    result = await run_on_clock(clock, run_batch(calls, tools, chain=chain))
    parallel = clock.now()
    assert result.ok and parallel == pytest.approx(0.1)

    registry = LimitedToolRegistry(chain, tools)

    async def one_by_one() -> None:
        for action in calls:
            await registry.execute(action, {})

    start = clock.now()
    await run_on_clock(clock, one_by_one())
    sequential = clock.now() - start
    assert sequential == pytest.approx(0.4) and sequential >= 2 * parallel


async def test_first_success_cancels_the_rest_and_releases_their_permits() -> None:
    clock = ManualClock()
    tool, tools, chain = setup(limit=2, clock=clock)
    calls = actions({"delay": 0.05, "fail": "raise"}, {"delay": 0.1}, {"delay": 0.3},
                    {"delay": 0.2}, {"delay": 0.01})
    result = await run_on_clock(clock, run_batch(calls, tools, chain=chain,
                                                 strategy="first_success"))
    assert result.ok and result.winner == 1 and clock.now() == pytest.approx(0.1)
    assert [i.cancelled for i in result.items] == [False, False, True, True, True]
    assert isinstance(result.items[0].error, RuntimeError)
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0
    assert tool.probe.in_flight == 0 and clock.pending_timers == 0
    result.raise_for_status()


async def test_first_success_with_no_success_fails() -> None:
    _, tools, chain = setup()
    result = await run_batch(actions({"fail": "raise"}, {"fail": "output"}), tools,
                             chain=chain, strategy="first_success")
    assert not result.ok and result.winner is None and result.cancelled == 0
    with pytest.raises(BatchFailed):
        result.raise_for_status()


async def test_majority_decides_early_and_cancels_the_rest() -> None:
    clock = ManualClock()
    _, tools, chain = setup(clock=clock)
    calls = actions({"delay": 0.1}, {"delay": 0.5}, {"delay": 0.1, "fail": "raise"},
                    {"delay": 0.2}, {"delay": 0.3})
    result = await run_on_clock(clock, run_batch(calls, tools, chain=chain,
                                                 strategy="majority"))
    assert result.ok and clock.now() == pytest.approx(0.3)  # 3 of 5 at t=0.3
    assert [i.ok for i in result.items] == [True, False, False, True, True]
    assert [i.cancelled for i in result.items] == [False, True, False, False, False]
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0


async def test_majority_fails_fast_once_a_majority_is_impossible() -> None:
    clock = ManualClock()
    _, tools, chain = setup(clock=clock)
    calls = actions({"delay": 0.1, "fail": "raise"}, {"delay": 0.9}, {"delay": 0.2,
                    "fail": "output"}, {"delay": 0.9})
    result = await run_on_clock(clock, run_batch(calls, tools, chain=chain,
                                                 strategy="majority"))
    assert not result.ok and clock.now() == pytest.approx(0.2)  # 2 of 4 failed: no 3 left
    assert result.cancelled == 2 and result.failed == 2
    with pytest.raises(BatchFailed) as caught:
        result.raise_for_status()
    assert len(caught.value.exceptions) == 2


@pytest.mark.parametrize("strategy", ["all", "first_success", "majority"])
async def test_same_batch_gives_identical_results_100_times(strategy: Strategy) -> None:
    specs: list[dict[str, Any]] = [
        {"yields": 5}, {"yields": 2, "fail": "raise"}, {"yields": 7}, {"yields": 1},
        {"yields": 3, "fail": "output"}, {"yields": 4}, {"yields": 2},
    ]
    outcomes: set[tuple[Any, ...]] = set()
    for _ in range(100):
        _, tools, chain = setup(limit=3)
        result = await run_batch(actions(*specs), tools, chain=chain, strategy=strategy)
        outcomes.add(summary(result))
        stats = chain.statistics()
        assert stats is not None and stats.in_flight == 0
    assert len(outcomes) == 1


async def test_a_plain_callable_target_runs_under_the_chain() -> None:
    probe = ConcurrencyProbe()
    _, _, chain = setup(limit=2)

    async def target(action: Any, ctx: dict[str, Any]) -> int:
        async def work() -> int:
            await asyncio.sleep(0)
            return int(action.payload["n"]) * 10

        value: int = await probe.run("t", work)
        return value

    result = await run_batch(actions({}, {}, {}, {}), target, chain=chain)
    assert result.values == (0, 10, 20, 30) and probe.max_in_flight == 2
    unlimited = await run_batch(actions({}, {}), target)
    assert unlimited.values == (0, 10)


async def test_a_limited_registry_brings_its_own_chain() -> None:
    _, tools, chain = setup()
    registry = LimitedToolRegistry(chain, tools)
    assert (await run_batch(actions({}), registry)).ok
    with pytest.raises(ConfigError, match="already limited"):
        await run_batch(actions({}), registry, chain=chain)


async def test_bad_arguments_are_config_errors() -> None:
    _, tools, _ = setup()
    with pytest.raises(ConfigError, match="strategy"):
        await run_batch(actions({}), tools, strategy="any")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty"):
        await run_batch([], tools, strategy="majority")
    with pytest.raises(ConfigError, match="target"):
        await run_batch(actions({}), 42)  # type: ignore[arg-type]


async def test_cancelling_the_batch_cancels_every_call_and_frees_permits() -> None:
    clock = ManualClock()
    tool, tools, chain = setup(limit=2, clock=clock)
    calls = actions(*({"delay": 1.0} for _ in range(5)))
    batch = asyncio.ensure_future(run_batch(calls, tools, chain=chain))
    await settle()
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 2 and stats.tasks_waiting == 3
    batch.cancel()
    await settle()
    assert batch.cancelled()
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0
    assert tool.probe.in_flight == 0


def test_parallel_batch_example_runs() -> None:
    script = Path(__file__).parents[2] / "examples" / "parallel_batch.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=script.parents[1])
    assert done.returncode == 0, done.stderr
    assert "0.1 s" in done.stdout and "0.4 s" in done.stdout


class SlowToUnwind(BaseTool):
    """Answers after ``delay`` s of loop time; when cancelled, takes 50 ms to unwind."""

    name = "slow_unwind"
    description = "a call whose cancellation takes a while"
    action_type = "SLOW_UNWIND"

    async def execute(self, input: ToolInput, ctx: dict[str, Any]) -> ToolOutput:
        try:
            await asyncio.sleep(input.action.payload["delay"])
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # cleanup that takes time (e.g. closing a stream)
            raise
        return ToolOutput(success=True, data={"n": input.action.payload["n"]})


def test_a_cancel_during_the_batch_cleanup_is_not_swallowed() -> None:
    """first_success: the winner answers at 10 ms, the loser needs 50 ms to unwind; a
    timeout at 30 ms must still reach the caller (after the loser unwound: no leak)."""
    from stageflow_plus.testing import run_virtual

    async def main() -> tuple[bool, int]:
        tools = ToolRegistry()
        tools.register(SlowToUnwind())
        chain = ToolCallChain([ConcurrencyLimiter(4)])
        actions = [SimpleAction("SLOW_UNWIND", {"delay": 0.01, "n": 0}),
                   SimpleAction("SLOW_UNWIND", {"delay": 10.0, "n": 1})]
        timed_out = False
        try:
            async with asyncio.timeout(0.03):
                await run_batch(actions, tools, chain=chain, strategy="first_success")
        except TimeoutError:
            timed_out = True
        stats = chain.statistics()
        assert stats is not None
        return timed_out, stats.in_flight

    timed_out, in_flight = run_virtual(main())
    assert timed_out, "run_batch swallowed the cancellation of its caller"
    assert in_flight == 0
