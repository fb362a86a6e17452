"""Seeded random walks over one Limiter: after every quiescent step the queue is at a fixed
point — a fresh dispatch pass grants nobody unless a timer is already due.

Complements the hypothesis property tests (which shrink failures) with long, eviction-heavy
walks: acquire with mixed demands, release / release_unused, cancel, time steps, capacity
changes, cost adjustments and provider pauses, under FIFO and priority-fair orderings with
every shedding policy. The seeds are fixed, so the test is deterministic; it found a lost
wake-up after an eviction and an order-dependent reservation that a single pass left behind.

The collector runs aggressively meanwhile (low thresholds; a random generation collected
after some steps, with a timer left pending on the loop by a dropped limiter), so a compiled
class that misreports its references to the collector clears a live timer here.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from gc_pressure import collect, orphan_timer

from stageflow_plus.primitives import (
    AdmissionPolicy,
    ConcurrencyPool,
    FifoOrdering,
    Lease,
    Limiter,
    ManualClock,
    PriorityFairOrdering,
    Rate,
    Rejected,
    Shedding,
    TokenBucket,
)
from stageflow_plus.primitives.ordering import Ordering
from stageflow_plus.primitives.waiter import Demand
from stageflow_plus.testing import settle

# 200 walks, plus seeds that caught a pass leaving a waiter behind after grants reordered a
# fair queue past a reservation (found by a 1500-seed run; now one pass repeats when needed)
SEEDS = [*range(200), 366, 995, 1249]
STEPS = 120


async def walk(seed: int) -> None:
    rnd = random.Random(seed)
    clock = ManualClock()
    pools = [ConcurrencyPool(f"p{i}", rnd.randint(1, 3)) for i in range(3)]
    buckets = [
        TokenBucket(f"b{i}", Rate(rnd.choice([1, 2, 5]), burst=rnd.choice([2, 4])), 0.0)
        for i in range(2)
    ]
    orderings: list[Ordering] = [
        FifoOrdering(),
        PriorityFairOrdering(aging_interval=rnd.choice([None, 1.0]), weights={"a": 2}),
    ]
    ordering = rnd.choice(orderings)
    limiter = Limiter(
        clock=clock,
        ordering=ordering,
        admission=AdmissionPolicy(
            max_queue=rnd.choice([None, 3, 5]),
            max_queue_per_key=rnd.choice([None, 2, 4]),
            shedding=rnd.choice(list(Shedding)),
        ),
    )
    tasks: list[asyncio.Task[None]] = []
    leases: list[Lease] = []

    async def call(demands: list[Demand], priority: int, tenant: str,
                   timeout: float | None) -> None:
        try:
            lease = await limiter.acquire(demands, priority=priority, tenant=tenant,
                                          timeout=timeout)
        except Rejected:
            return
        leases.append(lease)

    try:
        for step in range(STEPS):
            op = rnd.random()
            if op < 0.45:
                demands: list[Demand] = [
                    (r, 1.0 if isinstance(r, ConcurrencyPool) else rnd.choice([0.0, 0.5, 1.0, 2.0]))
                    for r in rnd.sample([*pools, *buckets], rnd.randint(1, 3))
                ]
                tasks.append(asyncio.ensure_future(call(
                    demands, rnd.randint(0, 2), rnd.choice("abc"), rnd.choice([None, 0.5, 3.0]))))
            elif op < 0.65 and leases:
                lease = leases.pop(rnd.randrange(len(leases)))
                (lease.release_unused if rnd.random() < 0.3 else lease.release)()
            elif op < 0.72 and tasks:
                rnd.choice(tasks).cancel()
            elif op < 0.85:
                clock.advance(rnd.choice([0.0, 0.1, 0.25, 0.5, 1.0]))
            elif op < 0.9:
                rnd.choice(pools).capacity = rnd.randint(1, 3)
                limiter.dispatch()
            elif op < 0.93 and leases:
                rnd.choice(leases).adjust({"requests": rnd.choice([0.0, 3.0])})
            else:
                rnd.choice(buckets).pause(clock.now() + rnd.choice([0.3, 1.0]))
                limiter.dispatch()
            if rnd.random() < 0.2:
                if rnd.random() < 0.5:
                    orphan_timer()
                collect(rnd.randint(0, 1))
            await settle()
            waiting = list(limiter.ordering.waiting())
            assert len(waiting) == len(limiter) == limiter.statistics().tasks_waiting
            for resource in (*pools, *buckets):
                needing = sum(1 for w in waiting for r, _ in w.demands if r is resource)
                assert needing == resource.queued, (step, resource)
            for pool in pools:
                held = sum(1 for lease in leases for r, _ in lease.demands if r is pool)
                assert held == pool.in_use, (step, pool)
            for resource in (*pools, *buckets):
                holding = sum(1 for lease in leases for r, _ in lease.demands if r is resource)
                assert holding == resource.holders, (step, resource)
            admitted = limiter.statistics().admitted
            limiter.dispatch()
            due = clock.next_due()
            assert limiter.statistics().admitted == admitted or (
                # a timer due within float noise: buckets accept 1e-9 early, timers fire on time
                due is not None and due <= clock.now() + 1e-6
            ), f"seed {seed} step {step}: a waiter could go but was left waiting"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.usefixtures("aggressive_gc")
@pytest.mark.parametrize("chunk", range(4))
def test_every_quiescent_queue_is_a_fixed_point(chunk: int) -> None:
    async def main() -> None:
        for seed in SEEDS[chunk::4]:
            await walk(seed)

    asyncio.run(main())
