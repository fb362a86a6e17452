"""A mass cancellation is swept in batches across loop iterations, losing nothing."""

from __future__ import annotations

import asyncio

import pytest

from stageflow_plus.primitives import ConcurrencyPool, Lease, Limiter, PriorityFairOrdering
from stageflow_plus.primitives.dispatch import SWEEP_BATCH

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("fair", [False, True])
@pytest.mark.parametrize("survivors", [0, 3])
async def test_mass_cancellation_keeps_every_survivor_and_every_permit(
    fair: bool, survivors: int
) -> None:
    limiter = Limiter(name="mass", ordering=PriorityFairOrdering() if fair else None)
    pool = ConcurrencyPool("pool", 2)
    demands = [(pool, 1.0)]
    held = [await limiter.acquire(demands), await limiter.acquire(demands)]
    n = 4 * SWEEP_BATCH + 7
    granted: list[Lease] = []

    async def waiter(i: int) -> None:
        lease = await limiter.acquire(demands, tenant=f"t{i % 3}", priority=i % 2)
        granted.append(lease)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(n + survivors)]
    await asyncio.sleep(0)
    assert limiter.statistics().tasks_waiting == n + survivors
    for task in tasks[:n]:  # the first n cancelled, the last ``survivors`` keep waiting
        task.cancel()
    for lease in held:  # a release runs a pass that meets the cancelled waiters first
        lease.release()
    assert limiter._sweep_pending  # the pass stopped after a batch, the rest comes later
    results = await asyncio.gather(*tasks[:n], return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    for _ in range(survivors + 2):
        await asyncio.sleep(0)
        while granted:
            granted.pop().release()
    await asyncio.gather(*tasks[n:])
    stats = limiter.statistics()
    assert (stats.tasks_waiting, stats.in_flight, stats.cancelled) == (0, 0, n)
    assert stats.admitted == 2 + survivors
    assert pool.in_use == 0 and pool.queued == 0
    assert not limiter._sweep_pending


async def test_without_a_running_loop_the_pass_sweeps_at_once() -> None:
    limiter = Limiter(name="sync")
    assert limiter._defer_pass() is True  # (a loop runs here: deferred)
    await asyncio.sleep(0)
    assert not limiter._sweep_pending

    def no_loop() -> bool:
        return Limiter(name="off")._defer_pass()

    assert await asyncio.get_running_loop().run_in_executor(None, no_loop) is False
