"""The test helpers we ship: virtual time, drive(), settle()."""

from __future__ import annotations

import asyncio
import time

import pytest

from stageflow_plus import ManualClock
from stageflow_plus.testing import clock_sleep, drive, run_virtual, settle


def test_virtual_time_loop_jumps_to_the_next_timer() -> None:
    async def main() -> tuple[float, list[str]]:
        loop = asyncio.get_running_loop()
        order: list[str] = []

        async def sleeper(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            order.append(f"{name}@{loop.time():g}")

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), timeout=0.2)
        await asyncio.gather(sleeper("b", 30), sleeper("a", 10))
        return loop.time(), order

    wall = time.perf_counter()
    now, order = run_virtual(main())
    assert now == pytest.approx(30.2) and order == ["a@10.2", "b@30.2"]
    assert time.perf_counter() - wall < 5  # virtual: an hour-long sleep costs nothing


@pytest.mark.anyio
async def test_drive_advances_timer_by_timer_and_reports_stuck_tasks() -> None:
    clock = ManualClock()
    woke: list[float] = []

    async def nap(seconds: float) -> None:
        await clock_sleep(clock, seconds)
        woke.append(clock.now())

    tasks = [asyncio.ensure_future(nap(s)) for s in (0.3, 0.1, 0.2)]
    await drive(clock, tasks)
    assert woke == [0.1, 0.2, 0.3]
    stuck = asyncio.ensure_future(asyncio.Event().wait())
    with pytest.raises(RuntimeError, match="no timer is pending"):
        await drive(clock, [stuck])
    stuck.cancel()
    await settle()
