"""Test helpers shipped with the package: sleeping on a manual clock, recording tools.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .primitives.clock import Clock, ManualClock

T = TypeVar("T")

__all__ = [
    "ConcurrencyProbe",
    "SimpleAction",
    "VirtualTimeLoop",
    "clock_sleep",
    "drive",
    "run_virtual",
    "settle",
]


async def clock_sleep(clock: Clock, seconds: float) -> None:
    """Sleep ``seconds`` on ``clock`` (a :class:`ManualClock` wakes it when advanced)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    handle = clock.call_at(clock.now() + seconds, wake)
    try:
        await future
    finally:
        handle.cancel()


async def settle(max_rounds: int = 10_000) -> None:
    """Yield until every other task is blocked on an unfinished future and no callback is
    queued on the loop (quiescence; timers do not count).

    Like ``anyio.wait_all_tasks_blocked`` but never sleeps on the wall clock, so tests with
    thousands of tasks stay fast. Raises ``RuntimeError`` after ``max_rounds`` yields.
    """
    this = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        if getattr(loop, "_ready", None):
            continue  # callbacks still queued (e.g. a future's done-callbacks): not quiet yet
        for task in asyncio.all_tasks():
            if task is this or task.done():
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                break
        else:
            return
    raise RuntimeError(f"tasks still runnable after {max_rounds} rounds")


async def drive(
    clock: ManualClock,
    tasks: Collection[asyncio.Future[Any]],
    *,
    until: float | None = None,
    max_steps: int = 1_000_000,
) -> None:
    """Advance ``clock`` timer by timer until every task in ``tasks`` is done.

    Jumps straight to each next due time (no floating-point drift from fixed steps) and settles
    the loop after each jump. Stops early at ``until`` if given. Raises ``RuntimeError`` when the
    tasks are stuck with no timer pending (a lost wake-up) or after ``max_steps`` jumps.
    """
    await settle()
    for _ in range(max_steps):
        if all(t.done() for t in tasks):
            return
        due = clock.next_due()
        if due is None:
            raise RuntimeError("tasks are blocked and no timer is pending on the clock")
        if until is not None and due > until:
            clock.advance_to(max(until, clock.now()))
            await settle()
            return
        clock.advance_to(max(due, clock.now()))
        await settle()
    raise RuntimeError(f"tasks not done after {max_steps} clock steps")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready to run.

    Everything that reads ``loop.time()`` — ``asyncio.sleep``, ``asyncio.wait_for`` (and so
    Stageflow's stage timeout), :class:`~stageflow_plus.primitives.clock.LoopClock` — then
    runs on virtual time: a 30 s timeout elapses in microseconds, deterministically. Only for
    code that does no real I/O (a socket wait would let virtual time jump past it).
    """

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        ready: Any = getattr(self, "_ready")  # noqa: B009 - the base loop's own queues
        scheduled: list[Any] = getattr(self, "_scheduled")  # noqa: B009
        if not ready:
            while scheduled and scheduled[0]._cancelled:
                handle = heapq.heappop(scheduled)
                handle._scheduled = False
                self._timer_cancelled_count -= 1  # type: ignore[attr-defined]
            if scheduled:
                self._virtual_now = max(self._virtual_now, scheduled[0]._when)
        super()._run_once()  # type: ignore[misc]


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a fresh :class:`VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


@dataclass(frozen=True)
class SimpleAction:
    """An action object as Stageflow's registry expects: ``type`` and ``payload``."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)


class ConcurrencyProbe:
    """Counts calls in flight and remembers the maximum (wrap any coroutine with it)."""

    __slots__ = ("calls", "in_flight", "max_in_flight", "per_key", "per_key_max")

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.per_key: dict[str, int] = {}
        self.per_key_max: dict[str, int] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work()`` counted under ``key``."""
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        n = self.per_key[key] = self.per_key.get(key, 0) + 1
        self.per_key_max[key] = max(self.per_key_max.get(key, 0), n)
        try:
            return await work()
        finally:
            self.in_flight -= 1
            self.per_key[key] -= 1
