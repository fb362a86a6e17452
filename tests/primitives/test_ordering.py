"""Priority with aging, weighted fair share, and the documented starvation bound."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from stageflow_plus.primitives import (
    AdmissionPolicy,
    ConcurrencyPool,
    ConfigError,
    Limiter,
    ManualClock,
    PriorityFairOrdering,
    Rejected,
)
from stageflow_plus.testing import clock_sleep, settle

pytestmark = pytest.mark.anyio


@dataclass
class Sim:
    """Calls that hold one of ``capacity`` permits for ``service`` seconds of fake time."""

    limiter: Limiter
    pool: ConcurrencyPool
    clock: ManualClock
    service: float
    admitted: list[tuple[float, str, int]] = field(default_factory=list)  # (t, tenant, prio)
    rejected: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _call(self, tenant: str, priority: int) -> None:
        try:
            lease = await self.limiter.acquire(
                [(self.pool, 1)], tenant=tenant, priority=priority)
        except Rejected:
            self.rejected += 1
            return
        self.admitted.append((self.clock.now(), tenant, priority))
        try:
            await clock_sleep(self.clock, self.service)
        finally:
            lease.release()

    def submit(self, tenant: str, priority: int) -> None:
        self.tasks.append(asyncio.ensure_future(self._call(tenant, priority)))

    async def step(self, dt: float) -> None:
        await settle()
        self.clock.advance(dt)
        await settle()

    async def finish(self) -> None:
        self.limiter.close()
        while not all(t.done() for t in self.tasks):
            await self.step(self.service)
        assert self.pool.in_use == 0


def make_sim(ordering: PriorityFairOrdering, *, capacity: int, service: float,
             max_queue: int | None = None) -> Sim:
    clock = ManualClock()
    limiter = Limiter(ordering=ordering, clock=clock,
                      admission=AdmissionPolicy(max_queue=max_queue))
    return Sim(limiter, ConcurrencyPool("p", capacity), clock, service)


async def run_overload(aging: float | None, horizon: float) -> tuple[Sim, float | None]:
    """Priority-3 load at 2x capacity forever; one priority-0 call enqueued at t=0.5."""
    sim = make_sim(PriorityFairOrdering(aging_interval=aging), capacity=2, service=1.0,
                   max_queue=20)
    t, low_submitted = 0.0, False
    while t < horizon:
        sim.submit("hi", 3)  # 4 calls per second: capacity is 2 per second
        if t >= 0.5 and not low_submitted:
            sim.submit("lo", 0)
            low_submitted = True
        await sim.step(0.25)
        t += 0.25
    low = [at for at, tenant, _ in sim.admitted if tenant == "lo"]
    await sim.finish()
    return sim, (low[0] - 0.5 if low else None)


async def test_aging_bounds_the_wait_of_the_lowest_priority() -> None:
    # documented bound: tau*(P - p) + 2*Q*S/C = 1*(3-0) + 2*20*1/2 = 23 s
    tau, p_max, p_low, queue, service, cap = 1.0, 3, 0, 20, 1.0, 2
    bound = tau * (p_max - p_low) + 2 * queue * service / cap
    sim, wait = await run_overload(aging=tau, horizon=60.0)
    assert wait is not None, "with aging the lowest priority gets in"
    assert wait <= bound
    assert sim.rejected > 0, "the overload really exceeded capacity (newcomers were shed)"


async def test_without_aging_the_lowest_priority_starves() -> None:
    _, wait = await run_overload(aging=None, horizon=60.0)
    assert wait is None, "strict priorities: the low call never got in while overloaded"


async def test_equal_weights_share_equally_under_10_to_1_load() -> None:
    sim = make_sim(PriorityFairOrdering(), capacity=2, service=1.0)
    for _ in range(1000):
        sim.submit("heavy", 0)
    for _ in range(100):
        sim.submit("light", 0)
    await settle()
    while sum(1 for _, tenant, _ in sim.admitted if tenant == "light") < 100:
        await sim.step(1.0)
    light_done_at = max(t for t, tenant, _ in sim.admitted if tenant == "light")
    window = [tenant for t, tenant, _ in sim.admitted if t < light_done_at]
    heavy, light = window.count("heavy"), window.count("light")
    assert abs(heavy - light) <= 0.05 * max(heavy, light), (heavy, light)
    await sim.finish()


async def test_weights_give_proportional_shares() -> None:
    sim = make_sim(PriorityFairOrdering(weights={"gold": 3.0}), capacity=1, service=1.0)
    for _ in range(200):
        sim.submit("gold", 0)
        sim.submit("basic", 0)
    await settle()
    for _ in range(80):
        await sim.step(1.0)
    tenants = [tenant for _, tenant, _ in sim.admitted]
    gold, basic = tenants.count("gold"), tenants.count("basic")
    assert gold / basic == pytest.approx(3.0, rel=0.1)
    await sim.finish()


async def test_idle_tenant_banks_no_credit() -> None:
    sim = make_sim(PriorityFairOrdering(), capacity=1, service=1.0)
    for _ in range(30):
        sim.submit("a", 0)
    await settle()
    for _ in range(20):  # "a" alone for 20 s
        await sim.step(1.0)
    for _ in range(10):
        sim.submit("b", 0)
    await settle()
    for _ in range(10):
        await sim.step(1.0)
    recent = [tenant for t, tenant, _ in sim.admitted if t > 20.5]
    # b returns from idle and alternates with a; it does not take 20 s of banked share
    assert 4 <= recent.count("b") <= 6
    await sim.finish()


async def test_higher_priority_goes_first_within_aging_horizon() -> None:
    sim = make_sim(PriorityFairOrdering(aging_interval=10.0), capacity=1, service=1.0)
    sim.submit("x", 0)  # takes the only permit
    await settle()
    sim.submit("x", 0)
    sim.submit("x", 5)
    await settle()
    await sim.step(1.0)
    assert [p for _, _, p in sim.admitted] == [0, 5]
    await sim.finish()


def test_ordering_validation_names_the_entry() -> None:
    with pytest.raises(ConfigError, match="aging_interval"):
        PriorityFairOrdering(aging_interval=0)
    with pytest.raises(ConfigError, match="tenant 'x'"):
        PriorityFairOrdering(weights={"x": -1})
