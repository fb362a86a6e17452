"""The waiting primitive: exclusion, order, cancellation, deadlines, bounds, resizing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from stageflow_plus.primitives import (
    AdmissionPolicy,
    ConcurrencyPool,
    CostTooLarge,
    DeadlineUnmeetable,
    Demand,
    Evicted,
    Lease,
    Limiter,
    LimiterClosed,
    ManualClock,
    PriorityFairOrdering,
    QueueFull,
    Rate,
    Rejected,
    Shedding,
    TimerHandle,
    TokenBucket,
    WaitTimeout,
    WouldBlock,
)
from stageflow_plus.testing import drive, settle

pytestmark = pytest.mark.anyio


def spawn(
    limiter: Limiter, demands: Sequence[Demand], **kwargs: object
) -> asyncio.Task[Lease]:
    return asyncio.ensure_future(limiter.acquire(demands, **kwargs))  # type: ignore[arg-type]


async def test_exclusion_and_handoff_in_fifo_order() -> None:
    limiter = Limiter(clock=ManualClock())
    pool = ConcurrencyPool("p", 2)
    first = [await limiter.acquire([(pool, 1)]) for _ in range(2)]
    waiters = [spawn(limiter, [(pool, 1)]) for _ in range(3)]
    await settle()
    assert limiter.statistics().tasks_waiting == 3 and pool.in_use == 2
    first[0].release()
    first[0].release()  # idempotent
    await settle()
    assert waiters[0].done() and not waiters[1].done()
    assert pool.in_use == 2  # handed off, never above capacity
    for lease in [first[1], waiters[0].result()]:
        lease.release()
    await settle()
    assert waiters[1].done() and waiters[2].done()
    for task in waiters[1:]:
        task.result().release()
    assert pool.in_use == 0 and limiter.statistics().in_flight == 0


async def test_nowait_refuses_while_others_wait() -> None:
    limiter = Limiter(clock=ManualClock())
    pool = ConcurrencyPool("p", 1)
    held = limiter.acquire_nowait([(pool, 1)])
    waiter = spawn(limiter, [(pool, 1)])
    await settle()
    held.release()  # the permit goes to the waiter, not to a barging nowait caller
    lease = limiter.try_acquire([(pool, 1)])
    assert not lease and lease.error is not None
    with pytest.raises(WouldBlock) as info:
        limiter.acquire_nowait([(pool, 1)])
    assert info.value.key == "p"
    (await waiter).release()
    assert limiter.try_acquire([(pool, 1)])


async def test_cancel_while_waiting_frees_the_place() -> None:
    limiter = Limiter(clock=ManualClock())
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    doomed = spawn(limiter, [(pool, 1)])
    behind = spawn(limiter, [(pool, 1)])
    await settle()
    doomed.cancel()
    await settle()
    assert limiter.statistics().tasks_waiting == 1 and limiter.statistics().cancelled == 1
    held.release()
    (await behind).release()
    assert pool.in_use == 0 and pool.queued == 0


async def test_cancel_right_after_grant_returns_the_permit() -> None:
    """anyio #1170: a waiter granted and cancelled in the same iteration must not leak."""
    limiter = Limiter(clock=ManualClock())
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    granted_then_cancelled = spawn(limiter, [(pool, 1)])
    next_in_line = spawn(limiter, [(pool, 1)])
    await settle()
    held.release()  # grants the first waiter...
    granted_then_cancelled.cancel()  # ...which is cancelled before it runs
    await settle()
    assert granted_then_cancelled.cancelled()
    assert next_in_line.done(), "the returned permit must go to the next waiter"
    (await next_in_line).release()
    assert pool.in_use == 0


async def test_timeout_and_unmeetable_deadline() -> None:
    clock = ManualClock()
    limiter = Limiter(clock=clock)
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    waiter = spawn(limiter, [(pool, 1)], timeout=2.0)
    await settle()
    clock.advance(1.999)
    await settle()
    assert not waiter.done()
    clock.advance(0.001)
    await settle()
    with pytest.raises(WaitTimeout, match="deadline"):
        await waiter
    with pytest.raises(DeadlineUnmeetable):
        await limiter.acquire([(pool, 1)], deadline=clock.now())  # already passed
    # the pool learned a service time: estimated wait 1s > remaining 0.5s -> refused at once
    held.release()
    pool.service_time = 1.0
    held = await limiter.acquire([(pool, 1)])
    with pytest.raises(DeadlineUnmeetable) as info:
        await limiter.acquire([(pool, 1)], timeout=0.5)
    assert info.value.retry_after == pytest.approx(1.0) and info.value.key == "p"
    held.release()
    assert pool.queued == 0 and limiter.statistics().rejected == (
        ("deadline", 2), ("wait_timeout", 1))


async def test_bucket_deadline_estimate_uses_queued_demand() -> None:
    clock = ManualClock()
    limiter = Limiter(clock=clock)
    bucket = TokenBucket("b", Rate(10, burst=1), clock.now())
    await limiter.acquire([(bucket, 1)])
    spawn(limiter, [(bucket, 1)])
    await settle()
    # one queued token ahead + our token at 10/s = 0.2 s > 0.15 s
    with pytest.raises(DeadlineUnmeetable) as info:
        await limiter.acquire([(bucket, 1)], timeout=0.15)
    assert info.value.retry_after == pytest.approx(0.2)
    clock.advance(1)
    await settle()


async def test_queue_full_rejects_newcomer_with_context() -> None:
    limiter = Limiter(clock=ManualClock(), admission=AdmissionPolicy(max_queue=2))
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    tasks = [spawn(limiter, [(pool, 1)]) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull) as info:
        await limiter.acquire([(pool, 1)])
    err = info.value
    assert isinstance(err, Rejected) and err.queue_depth == 2 and err.limiter == "limiter"
    assert "full" in str(err) and err.to_dict()["reason"] == "queue_full"
    held.release()
    for task in tasks:
        (await task).release()


async def test_per_key_bound_leaves_other_keys_alone() -> None:
    limiter = Limiter(clock=ManualClock(), admission=AdmissionPolicy(max_queue_per_key=1))
    a, b = ConcurrencyPool("a", 1), ConcurrencyPool("b", 1)
    held_a, held_b = await limiter.acquire([(a, 1)]), await limiter.acquire([(b, 1)])
    wa = spawn(limiter, [(a, 1)])
    await settle()
    with pytest.raises(QueueFull) as info:
        await limiter.acquire([(a, 1)])
    assert info.value.key == "a"
    wb = spawn(limiter, [(b, 1)])  # b's queue has room
    await settle()
    for lease in (held_a, held_b):
        lease.release()
    for task in (wa, wb):
        (await task).release()


async def test_evict_lowest_priority_and_oldest() -> None:
    policy = AdmissionPolicy(max_queue=2, shedding=Shedding.EVICT_LOWEST_PRIORITY)
    limiter = Limiter(clock=ManualClock(), admission=policy,
                      ordering=PriorityFairOrdering(aging_interval=None))
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    low = spawn(limiter, [(pool, 1)], priority=0)
    mid = spawn(limiter, [(pool, 1)], priority=1)
    await settle()
    with pytest.raises(QueueFull):  # not more urgent than the least urgent waiter
        await limiter.acquire([(pool, 1)], priority=0)
    high = spawn(limiter, [(pool, 1)], priority=2)
    await settle()
    with pytest.raises(Evicted, match="priority 2"):
        await low
    held.release()
    (await high).release()
    (await mid).release()

    oldest = Limiter(clock=ManualClock(), admission=AdmissionPolicy(
        max_queue=1, shedding="evict_oldest"))  # type: ignore[arg-type]
    held = await oldest.acquire([(pool, 1)])
    first = spawn(oldest, [(pool, 1)])
    await settle()
    second = spawn(oldest, [(pool, 1)])
    await settle()
    with pytest.raises(Evicted):
        await first
    held.release()
    (await second).release()


async def test_all_or_nothing_no_hold_and_wait() -> None:
    limiter = Limiter(clock=ManualClock())
    a, b = ConcurrencyPool("a", 1), ConcurrencyPool("b", 1)
    held_b = await limiter.acquire([(b, 1)])
    both = spawn(limiter, [(a, 1), (b, 1)])
    await settle()
    assert a.in_use == 0, "a waiter must not hold a while waiting for b"
    only_a = await limiter.acquire([(a, 1)])  # an idle resource passes a blocked queue
    only_a.release()
    held_b.release()
    lease = await both
    assert (a.in_use, b.in_use) == (1, 1)
    lease.release()


async def test_large_cost_is_not_starved_by_small_ones() -> None:
    """aiolimiter's failure: acquire(5) behind a stream of acquire(1) at 2x load."""
    clock = ManualClock()
    limiter = Limiter(clock=clock)
    bucket = TokenBucket("b", Rate(10, burst=10, start_full=False), clock.now())
    big = spawn(limiter, [(bucket, 5)])
    small: list[asyncio.Task[Lease]] = []
    for _ in range(40):  # 20 small calls per second: 2x the rate
        small.append(spawn(limiter, [(bucket, 1)]))
        small.append(spawn(limiter, [(bucket, 1)]))
        clock.advance(0.1)
        await settle()
    assert big.done(), "the large call must get in, and early"
    assert big.result().acquired_at == pytest.approx(0.5)
    limiter.close()
    await asyncio.gather(*small, return_exceptions=True)


async def test_cost_too_large_and_capacity_decrease() -> None:
    clock = ManualClock()
    limiter = Limiter(clock=clock)
    bucket = TokenBucket("b", Rate(10, burst=5), clock.now())
    with pytest.raises(CostTooLarge, match="never"):
        await limiter.acquire([(bucket, 6)])
    pool = ConcurrencyPool("p", 3)
    held = await limiter.acquire([(pool, 3)])
    waiter = spawn(limiter, [(pool, 3)])
    await settle()
    pool.capacity = 2
    limiter.dispatch()
    await settle()
    with pytest.raises(CostTooLarge, match="lowered"):
        await waiter
    held.release()
    assert pool.in_use == 0


async def test_raising_capacity_wakes_waiters() -> None:
    limiter = Limiter(clock=ManualClock())
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    waiters = [spawn(limiter, [(pool, 1)]) for _ in range(3)]
    await settle()
    pool.capacity = 3
    limiter.dispatch()
    await settle()
    assert [w.done() for w in waiters] == [True, True, False]
    pool.capacity = 1  # holders finish normally; nobody new until below the cap
    for w in waiters[:2]:
        w.result().release()
    await settle()
    assert not waiters[2].done()
    held.release()
    (await waiters[2]).release()


async def test_close_refuses_waiters_and_newcomers() -> None:
    limiter = Limiter(clock=ManualClock())
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    waiter = spawn(limiter, [(pool, 1)])
    await settle()
    limiter.close()
    with pytest.raises(LimiterClosed):
        await waiter
    with pytest.raises(LimiterClosed):
        await limiter.acquire([(pool, 1)])
    held.release()
    assert pool.queued == 0


async def test_lease_adjust_reconciles_cost() -> None:
    clock = ManualClock()
    limiter = Limiter(clock=clock)
    tokens = TokenBucket("t", Rate(100, burst=100, dimension="tokens"), clock.now())
    lease = await limiter.acquire([(tokens, 50)])
    lease.adjust({"tokens": 90})  # used 40 more than estimated
    assert tokens.level(clock.now()) == pytest.approx(10)
    with pytest.raises(ValueError, match=">= 0"):
        lease.adjust({"tokens": -1})
    lease.adjust({"tokens": 20})  # refund down to the actual 20
    assert tokens.level(clock.now()) == pytest.approx(80)
    lease.release()
    assert repr(lease).startswith("<Lease released")


async def test_statistics_snapshot_is_frozen_and_counts() -> None:
    limiter = Limiter(name="llm", ordering=PriorityFairOrdering(), clock=ManualClock())
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    tasks = [spawn(limiter, [(pool, 1)], priority=p, tenant=t)
             for p, t in [(0, "a"), (1, "a"), (1, "b")]]
    await settle()
    stats = limiter.statistics()
    assert stats.waiting_by_priority == ((0, 1), (1, 2))
    assert stats.waiting_by_tenant == (("a", 2), ("b", 1))
    with pytest.raises(AttributeError):
        stats.admitted = 5  # type: ignore[misc]
    assert "1 in flight, 3 waiting" in repr(limiter)
    limiter.close()
    held.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert limiter.statistics().rejected_total == 3


async def test_shedding_takes_from_the_tenant_holding_most_of_the_queue() -> None:
    """The heavy tenant loses a call, even though the light tenant's call is the newest."""
    policy = AdmissionPolicy(max_queue=5, shedding=Shedding.EVICT_LOWEST_PRIORITY)
    limiter = Limiter(clock=ManualClock(), admission=policy,
                      ordering=PriorityFairOrdering(aging_interval=None))
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    heavy = [spawn(limiter, [(pool, 1)], tenant="heavy") for _ in range(4)]
    await settle()
    light = spawn(limiter, [(pool, 1)], tenant="light")  # newest, alone in its tenant
    await settle()
    urgent = spawn(limiter, [(pool, 1)], priority=1, tenant="light")
    await settle()
    assert heavy[-1].done() and not light.done()  # the heavy tenant's newest was shed
    with pytest.raises(Evicted):
        await heavy[-1]
    held.release()
    await release_as_granted([urgent, light, *heavy[:-1]])
    assert pool.in_use == 0 and limiter.statistics().in_flight == 0


async def test_shedding_weighs_tenants() -> None:
    """Per unit of weight: a tenant of weight 4 with 4 waiting holds less than one of 1 with 2."""
    policy = AdmissionPolicy(max_queue=6, shedding=Shedding.EVICT_LOWEST_PRIORITY)
    limiter = Limiter(clock=ManualClock(), admission=policy,
                      ordering=PriorityFairOrdering(aging_interval=None, weights={"big": 4}))
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    small = [spawn(limiter, [(pool, 1)], tenant="small") for _ in range(2)]
    big = [spawn(limiter, [(pool, 1)], tenant="big") for _ in range(4)]
    await settle()
    urgent = spawn(limiter, [(pool, 1)], priority=1, tenant="big")
    await settle()
    assert small[-1].done() and not any(t.done() for t in big)
    with pytest.raises(Evicted):
        await small[-1]
    held.release()
    await release_as_granted([urgent, *big, small[0]])
    assert pool.in_use == 0


async def release_as_granted(tasks: list[asyncio.Task[Lease]]) -> None:
    """Release each lease as it is granted (in whatever order the limiter grants them)."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result().release()


async def test_a_flooding_tenant_cannot_lock_a_light_one_out_of_a_full_queue() -> None:
    """Same priority: the light tenant's newcomer takes the place of the heavy one's newest;
    once the two hold comparable shares, a full queue refuses newcomers again."""
    policy = AdmissionPolicy(max_queue=4, shedding=Shedding.EVICT_LOWEST_PRIORITY)
    limiter = Limiter(clock=ManualClock(), admission=policy,
                      ordering=PriorityFairOrdering(aging_interval=None))
    pool = ConcurrencyPool("p", 1)
    held = await limiter.acquire([(pool, 1)])
    heavy = [spawn(limiter, [(pool, 1)], tenant="heavy") for _ in range(4)]
    await settle()
    light = spawn(limiter, [(pool, 1)], tenant="light")
    await settle()
    assert heavy[-1].done() and not light.done()
    with pytest.raises(Evicted, match="tenant 'light'"):
        await heavy[-1]
    with pytest.raises(QueueFull):  # the heaviest tenant itself: refused, as before
        await limiter.acquire([(pool, 1)], tenant="heavy")
    light_2 = spawn(limiter, [(pool, 1)], tenant="light")  # (3-1)/1 > (1+1)/1? no → refused
    await settle()
    with pytest.raises(QueueFull):
        await light_2
    held.release()
    await release_as_granted([light, *heavy[:-1]])
    assert pool.in_use == 0


async def test_an_eviction_that_frees_a_reservation_wakes_the_waiters_behind_it() -> None:
    """V needs all of P and reserves it; W fits in P but waits behind V. A newcomer blocked
    on Q evicts V: W must be granted at once (a skipped pass would strand it)."""
    clock = ManualClock()
    p, q = ConcurrencyPool("P", 2), ConcurrencyPool("Q", 1)
    limiter = Limiter(clock=clock,
                      admission=AdmissionPolicy(max_queue=2, shedding=Shedding.EVICT_OLDEST))
    hold_p = limiter.acquire_nowait([(p, 1)])
    hold_q = limiter.acquire_nowait([(q, 1)])
    v = spawn(limiter, [(p, 2)])
    await settle()
    w = spawn(limiter, [(p, 1)])
    await settle()
    n = spawn(limiter, [(q, 1)])
    await settle()
    with pytest.raises(Evicted):
        await v
    assert w.done(), "W fits and nothing reserves P any more"
    (await w).release()
    hold_p.release()
    hold_q.release()
    (await n).release()
    assert p.in_use == q.in_use == 0


async def test_released_event_for_a_queued_call_granted_without_measurable_wait() -> None:
    """A quiet listener (immediate_events=False) still hears of the release of every lease
    that went through the queue, even one granted in the same instant (wait 0.0)."""
    events: list[str] = []

    class Quiet:
        immediate_events = False

        def on_queued(self, info: object, depth: int) -> None:
            events.append(f"queued {info}")

        def on_admitted(self, info: object, wait: float) -> None:
            events.append(f"admitted {info}")

        def on_rejected(self, info: object, error: Exception) -> None:
            events.append(f"rejected {info}")

        def on_released(self, info: object, held: float) -> None:
            events.append(f"released {info}")

    limiter = Limiter(clock=ManualClock(), listener=Quiet())
    pool = ConcurrencyPool("p", 1)
    first = await limiter.acquire([(pool, 1)], info="first")
    second = spawn(limiter, [(pool, 1)], info="second")
    await settle()
    first.release()  # same instant: "second" is granted with wait 0.0
    (await second).release()
    assert events == ["queued second", "admitted second", "released second"]


class CountingManualClock(ManualClock):
    """A manual clock that counts the timers armed on it."""

    __slots__ = ("armed",)

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.armed = 0

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        self.armed += 1
        if self.armed > 100:
            raise RuntimeError(f"timer re-armed for {when!r} at {self.now()!r}, 100 times")
        return super().call_at(when, callback)


@pytest.mark.parametrize("deficit", [3e-9, 0.5])
async def test_a_waiter_on_a_large_clock_value_is_woken_once_not_forever(
    deficit: float,
) -> None:
    """At 1e5 s (a day of uptime on the loop's monotonic clock) a bucket's refill time
    rounded to before the refill completed, or to ``now`` itself: the timer fired, found the
    bucket short and re-armed for the same instant, forever on a manual clock."""
    clock = CountingManualClock(1e5)
    limiter = Limiter(clock=clock)
    bucket = TokenBucket("b", Rate(1000, per=1, burst=10), clock.now())
    bucket.tokens = 1.0 - deficit
    task = spawn(limiter, [(bucket, 1.0)])
    await drive(clock, [task], max_steps=10)
    (await task).release()
    assert clock.armed <= 2
