"""Per-run and per-tenant state is released once idle: memory does not grow with keys.

Before: 200 000 calls with distinct run ids and tenants kept every rate bucket and most
fair-share records (+130 MiB RSS, +1.3 M blocks); concurrency pools were swept in O(n)
passes. Now every table is swept a few entries per new key (pools, buckets, per-run
buckets), owing idle tenants are capped, and the deadline heap drops stale entries, so the
tables stay bounded by what is in use. These tests drive thousands of distinct keys through
a full chain on virtual time and bound every table at every step.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ManualClock,
    PriorityFairQueue,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from stageflow_plus.bench.memory import MemoryGrowth, measure_distinct_keys, state_sizes
from stageflow_plus.primitives import (
    ConcurrencyPool,
    Limiter,
    PriorityFairOrdering,
    Rejected,
    TokenBucket,
    Waiter,
)
from stageflow_plus.primitives.ordering import IDLE_TENANTS
from stageflow_plus.testing import drive, run_virtual, settle

WAVE = 32


class Quiet:
    immediate_events = False

    def on_queued(self, info: Any, depth: int) -> None: ...
    def on_admitted(self, info: Any, wait: float) -> None: ...
    def on_rejected(self, info: Any, error: Rejected) -> None: ...
    def on_released(self, info: Any, held: float) -> None: ...


def chain_with_every_kind_of_key_state() -> ToolCallChain:
    return ToolCallChain(
        [
            Backpressure(max_queue=1000),
            PriorityFairQueue(aging_interval=1.0, fair_cost="tokens"),
            TokenBucketRateLimiter(
                [Rate(10, per=1), Rate(1000, per=1, dimension="tokens")], key="tenant"
            ),
            ConcurrencyLimiter(8, per_run=1, per_tenant=2, per_tool=4),
        ],
        listener=Quiet(),
    )


async def run_distinct(chain: ToolCallChain, calls: int) -> list[dict[str, int]]:
    """``calls`` calls, each with its own run id and tenant, ``WAVE`` at a time (more than
    the global cap, so calls queue); the table sizes after every wave."""
    sizes: list[dict[str, int]] = []

    async def tool(call: ToolCall) -> None:
        await asyncio.sleep(0.01)

    async def one(i: int) -> None:
        limits: dict[str, Any] = {}
        if i % 2:
            limits = {"rates": {"requests": 5.0}, "max_queue": 4}
        await chain.run(
            ToolCall(
                f"tool-{i % 3}", run_id=f"run-{i}", tenant=f"tenant-{i}", priority=i % 4,
                cost={"tokens": 10.0 + i % 7}, deadline=chain.now() + 3600.0, limits=limits,
            ),
            tool,
        )

    for first in range(0, calls, WAVE):
        await asyncio.gather(*(one(i) for i in range(first, first + WAVE)))
        sizes.append(state_sizes(chain))
    return sizes


def test_thousands_of_distinct_runs_and_tenants_leave_bounded_tables() -> None:
    chain = chain_with_every_kind_of_key_state()
    sizes = run_virtual(run_distinct(chain, 6400))
    peak = {name: max(s[name] for s in sizes) for name in sizes[0]}
    # bounded by what is in use (a wave, the buckets still refilling), never by the 6 400
    # keys seen; without release the buckets reach 6 400 and the tenants ~4 800
    assert peak["pools"] <= 4 * WAVE + 8, peak
    assert peak["buckets"] <= 200, peak  # 10/s per tenant: full again within 0.1 s
    assert peak["run_buckets"] <= 4 * WAVE, peak
    assert peak["fair_tenants"] <= IDLE_TENANTS + WAVE, peak
    assert peak["fair_idle"] <= IDLE_TENANTS, peak
    assert peak["run_waiting"] <= WAVE and peak["deadlines"] <= 2 * WAVE + 64, peak
    end = sizes[-1]
    assert end["waiting"] == 0 and end["run_waiting"] == 0
    stats = chain.statistics()
    assert stats is not None and stats.admitted == 6400 and stats.in_flight == 0


def test_the_memory_helper_reports_growth_and_table_sizes() -> None:
    growth = measure_distinct_keys(calls=1_000, distinct=50, wave=16, warmup=100)
    assert isinstance(growth, MemoryGrowth)
    assert growth.calls == 1_000 and growth.distinct == 50 and growth.admitted == 1_000
    sizes = dict(growth.state)
    assert sizes["waiting"] == 0 and sizes["buckets"] <= 50
    assert growth.seconds > 0 and isinstance(growth.rss_mib, float)
    with pytest.raises(ValueError, match="calls and wave must be >= 1"):
        measure_distinct_keys(calls=0)


@pytest.mark.anyio
async def test_a_full_bucket_still_held_by_a_running_call_is_not_dropped() -> None:
    """Its lease may still charge the actual cost: dropping the bucket would lose the
    charge and let the next call of that key through a fresh, full bucket."""
    clock = ManualClock()
    rate = TokenBucketRateLimiter(
        Rate(10, per=1, burst=100, dimension="tokens"),
        key="tenant",
        actual_cost=lambda result: result,
    )
    chain = ToolCallChain([rate], clock=clock, listener=Quiet())
    release = asyncio.Event()

    async def long_llm(call: ToolCall) -> dict[str, float]:
        await release.wait()
        return {"tokens": 100.0}  # billed 100 for an estimate of 1

    async def short(call: ToolCall) -> None:
        return None

    held = asyncio.ensure_future(chain.run(ToolCall("llm", tenant="a", cost={"tokens": 1}),
                                           long_llm))
    await settle()
    clock.advance(1.0)  # tenant a's bucket is full again while the call runs
    for i in range(50):  # new keys: each sweeps the oldest buckets
        await chain.run(ToolCall("llm", tenant=f"other-{i}", cost={"tokens": 1}), short)
    release.set()
    await held
    (bucket,) = rate.buckets_for("a", clock.now())
    assert bucket.level(clock.now()) == pytest.approx(1.0)  # full (100), charged 99 more
    waited = asyncio.ensure_future(chain.run(ToolCall("llm", tenant="a", cost={"tokens": 10}),
                                             short))
    await settle()
    assert not waited.done()  # 9 more tokens at 10/s: 0.9 s away
    await drive(clock, [waited])
    assert clock.now() == pytest.approx(1.9)


def test_an_empty_started_bucket_comes_back_as_it_would_have_refilled() -> None:
    async def main() -> None:
        clock = ManualClock()
        rate = TokenBucketRateLimiter(Rate(2, per=1, start_full=False), key="tenant")
        chain = ToolCallChain([rate], clock=clock, listener=Quiet())

        async def tool(call: ToolCall) -> None:
            return None

        first = asyncio.ensure_future(chain.run(ToolCall("t", tenant="a"), tool))
        await drive(clock, [first])
        assert clock.now() == pytest.approx(0.5)  # started empty: waits for one token
        clock.advance(10.0)
        for i in range(8):  # new keys sweep a's bucket away (full, idle)
            rate.buckets_for(f"k{i}", clock.now())
        assert "a" not in rate._buckets
        (again,) = rate.buckets_for("a", clock.now())
        assert again.level(clock.now()) == pytest.approx(2.0)  # not empty again
        (late,) = rate.buckets_for("late", clock.now())
        assert late.level(clock.now()) == pytest.approx(2.0)  # as if it existed all along

    asyncio.run(main())


@pytest.mark.anyio
async def test_the_deadline_heap_drops_the_entries_of_granted_calls() -> None:
    """Each granted call's entry stayed until its deadline (an hour here), with its lease
    and call: memory grew with the call rate times the deadline."""
    clock = ManualClock()
    limiter = Limiter(clock=clock)
    pool, stuck = ConcurrencyPool("one", 1), ConcurrencyPool("stuck", 1)
    blocker = limiter.acquire_nowait([(stuck, 1.0)])
    # a call that waits long with the earliest deadline: the heap's top stays live
    early = asyncio.ensure_future(limiter.acquire([(stuck, 1.0)], deadline=100.0))
    await settle()
    holder = await limiter.acquire([(pool, 1.0)])  # (through the queue: someone waits)
    peak = 0
    for _ in range(2000):
        task = asyncio.ensure_future(limiter.acquire([(pool, 1.0)], deadline=3600.0))
        await settle()
        holder.release()
        holder = await task
        peak = max(peak, len(limiter._deadlines))
    assert peak <= 2 * 2 + 64 + 1  # without the drop: 2 001 entries, each with its lease
    holder.release()
    blocker.release()
    (await early).release()


def test_fair_share_forgets_idle_tenants_but_remembers_what_they_owe() -> None:
    loop = asyncio.new_event_loop()
    try:
        ordering = PriorityFairOrdering()

        def waiter(seq: int, tenant: str, cost: float) -> Waiter:
            return Waiter([], 0, tenant, cost, 0.0, None, seq, loop.create_future())

        def serve(w: Waiter) -> None:
            popped = ordering.pop(0.0)
            assert popped is w
            popped.state = popped.state.GRANTED
            ordering.granted(popped)

        # a tenant that used a large call owes it: back with a newcomer, the newcomer goes first
        big = waiter(0, "heavy", 10.0)
        ordering.push(big)
        serve(big)
        again, newcomer = waiter(1, "heavy", 1.0), waiter(2, "light", 1.0)
        ordering.push(again)
        ordering.push(newcomer)
        serve(newcomer)
        serve(again)
        # thousands of distinct tenants: the table keeps those waiting plus the owing ones,
        # at most IDLE_TENANTS of them
        for seq in range(3, 3 + 5 * IDLE_TENANTS):
            w = waiter(seq, f"t{seq}", 1.0)
            ordering.push(w)
            serve(w)
            assert len(ordering._tenants) <= IDLE_TENANTS + 1
        assert len(ordering) == 0
    finally:
        loop.close()


def test_a_token_bucket_knows_its_holders() -> None:
    async def main() -> None:
        clock = ManualClock()
        limiter = Limiter(clock=clock)
        bucket = TokenBucket("b", Rate(1, start_full=False), 0.0)
        pool = ConcurrencyPool("p", 1)
        lease = limiter.acquire_nowait([(pool, 1.0)])
        assert (pool.holders, bucket.holders) == (1, 0)
        queued = asyncio.ensure_future(limiter.acquire([(pool, 1.0), (bucket, 1.0)]))
        await settle()
        lease.release()
        clock.advance(1.0)
        second = await queued
        assert (pool.holders, bucket.holders) == (1, 1)
        second.release_unused()
        assert (pool.holders, bucket.holders) == (0, 0)
        refused = limiter.try_acquire([(pool, 1.0), (bucket, 1.0)])  # the bucket: 1 token
        assert refused and (pool.holders, bucket.holders) == (1, 1)
        refused.release()
        assert not limiter.try_acquire([(pool, 1.0), (bucket, 1.0)])  # bucket empty now
        assert (pool.holders, bucket.holders) == (0, 0)  # the pool's take was undone

    asyncio.run(main())
