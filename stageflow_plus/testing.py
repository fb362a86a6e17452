"""Test helpers shipped with the package: sleeping on a manual clock, recording tools.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from .primitives.clock import Clock, ManualClock

__all__ = ["ConcurrencyProbe", "SimpleAction", "clock_sleep", "drive", "settle"]


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
    """Yield until every other task is blocked on an unfinished future (quiescence).

    Like ``anyio.wait_all_tasks_blocked`` but never sleeps on the wall clock, so tests with
    thousands of tasks stay fast. Raises ``RuntimeError`` after ``max_rounds`` yields.
    """
    this = asyncio.current_task()
    for _ in range(max_rounds):
        await asyncio.sleep(0)
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
