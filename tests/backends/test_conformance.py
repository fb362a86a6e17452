"""One conformance suite for the waiting primitive, in memory and in Redis.

The same tests run against the in-process :class:`~stageflow_plus.primitives.limiter.Limiter`
and the global queue of :class:`~stageflow_plus.backends.redis.RedisBackend`: exclusion,
priority and aging order, weighted fair share, cancellation while waiting, no
oversubscription over a random schedule, and a release that wakes a waiter of another
holder (for Redis: another backend instance, i.e. another process's connection and
mailbox). Redis runs twice: as it is (the ``FUNCTION`` library), and the way a Redis 6.x
server would run it (``EVAL`` scripts, no ``PEXPIRE … GT``: see ``_redis6_path``). All run on
real clocks (Redis's ``TIME``), so only orders and bounds are asserted, never speeds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import pytest
import redis

from stageflow_plus.backends import scripts
from stageflow_plus.backends.redis import GlobalPool, RedisBackend
from stageflow_plus.primitives import (
    ConcurrencyPool,
    DeadlineUnmeetable,
    Limiter,
    Rejected,
    WaitTimeout,
)
from stageflow_plus.primitives.ordering import PriorityFairOrdering

from .redis_helpers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


class Impl(Protocol):
    """What the suite needs: acquire pools (name → cap) for a priority and tenant."""

    async def acquire(self, pools: Mapping[str, int], *, priority: int = 0, tenant: str = "",
                      timeout: float | None = None) -> Any: ...
    async def release(self, lease: Any) -> None: ...
    def other(self) -> Impl: ...  # a second holder (another process, for Redis)
    async def waiting(self) -> int: ...


class MemoryImpl:
    def __init__(self, aging: float | None, weights: Mapping[str, float],
                 limiter: Limiter | None = None,
                 pools: dict[str, ConcurrencyPool] | None = None) -> None:
        self.limiter = limiter if limiter is not None else Limiter(
            ordering=PriorityFairOrdering(aging_interval=aging, weights=weights))
        self.pools = pools if pools is not None else {}

    async def acquire(self, pools: Mapping[str, int], *, priority: int = 0, tenant: str = "",
                      timeout: float | None = None) -> Any:
        demands = []
        for name, cap in pools.items():
            if name not in self.pools:
                self.pools[name] = ConcurrencyPool(name, cap)
            demands.append((self.pools[name], 1.0))
        return await self.limiter.acquire(demands, priority=priority, tenant=tenant,
                                          timeout=timeout)

    async def release(self, lease: Any) -> None:
        lease.release()

    def other(self) -> MemoryImpl:
        return MemoryImpl(None, {}, self.limiter, self.pools)

    async def waiting(self) -> int:
        return len(self.limiter)


class RedisImpl:
    def __init__(self, backend: RedisBackend, peers: list[RedisBackend], url: str,
                 prefix: str) -> None:
        self.backend = backend
        self.peers = peers
        self.url = url
        self.prefix = prefix

    async def acquire(self, pools: Mapping[str, int], *, priority: int = 0, tenant: str = "",
                      timeout: float | None = None) -> Any:
        return await self.backend.acquire([GlobalPool(k, v) for k, v in pools.items()], [],
                                          priority=priority, tenant=tenant, timeout=timeout)

    async def release(self, lease: Any) -> None:
        await lease.release()

    def other(self) -> RedisImpl:
        b = self.backend
        aging = float(b.aging_ms) / 1000 if b.aging_ms else None
        peer = RedisBackend(self.url, prefix=self.prefix, ttl=b.ttl, aging_interval=aging,
                            weights=b.weights)
        self.peers.append(peer)
        return RedisImpl(peer, self.peers, self.url, self.prefix)

    async def waiting(self) -> int:
        return int(await self.backend.client.hlen(f"{self.backend.prefix}q:wait"))


_GT_LINE = "local GT = (redis.REDIS_VERSION_NUM or 0) >= 0x070000"


def _redis6_path(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """What a Redis 6.x server leaves the backend, on this Redis 7: no ``FUNCTION`` (an ACL
    user without it, so the library runs as ``EVAL`` scripts on a standalone server) and no
    ``PEXPIRE … GT`` (the library's pre-7 branch, forced). Returns that user's URL."""
    source = scripts._raw()
    assert _GT_LINE in source  # (the library still chooses its branch on this line)
    monkeypatch.setattr(scripts, "_raw", lambda: source.replace(_GT_LINE, "local GT = false"))
    admin = redis.Redis(port=server.port)
    try:
        admin.acl_setuser("sfp-no-function", enabled=True, passwords=["+no-function-pw"],
                          keys=["*"], channels=["*"], commands=["+@all", "-function"])
    finally:
        admin.close()
    return f"redis://sfp-no-function:no-function-pw@127.0.0.1:{server.port}/0"


@pytest.fixture(params=["memory", "redis", "redis-6-path"])
async def make(request: pytest.FixtureRequest, redis_server: RedisServer, prefix: str,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    peers: list[RedisBackend] = []
    url = redis_server.url
    if request.param == "redis-6-path":
        url = _redis6_path(redis_server, monkeypatch)

    def factory(aging: float | None = 1.0, weights: Mapping[str, float] | None = None) -> Impl:
        if request.param == "memory":
            return MemoryImpl(aging, weights or {})
        backend = RedisBackend(url, prefix=prefix, ttl=3.0,
                               aging_interval=aging, weights=dict(weights or {}))
        peers.append(backend)
        return RedisImpl(backend, peers, url, prefix)

    try:
        yield factory
        if request.param == "redis-6-path":  # it ran the way a Redis 6.x server makes it
            assert peers
            for backend in peers:
                assert not backend._library.functions
                assert "local GT = false" in backend._library.source("acquire")
    finally:
        for backend in peers:
            await backend.aclose()


async def _settle(impl: Impl, expected: int) -> None:
    """Wait (bounded) until ``expected`` calls are queued: quiescence, not time."""
    for _ in range(500):
        if await impl.waiting() == expected:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never saw {expected} queued (now {await impl.waiting()})")


async def test_exclusion(make: Any) -> None:
    impl = make()
    in_flight = peak = 0

    async def one() -> None:
        nonlocal in_flight, peak
        lease = await impl.acquire({"g": 2})
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        await impl.release(lease)

    async with asyncio.timeout(30):
        await asyncio.gather(*(one() for _ in range(12)))
    assert peak == 2


async def test_priority_then_aging_order(make: Any) -> None:
    impl = make(aging=0.05)
    held = await impl.acquire({"g": 1})
    order: list[str] = []

    async def one(name: str, priority: int) -> None:
        lease = await impl.acquire({"g": 1}, priority=priority)
        order.append(name)
        await impl.release(lease)

    old_low = asyncio.create_task(one("old-low", 0))
    await _settle(impl, 1)
    await asyncio.sleep(0.3)  # waited 6 aging intervals: worth 6 levels
    high = asyncio.create_task(one("new-high", 3))
    newer_low = asyncio.create_task(one("new-low", 0))
    await _settle(impl, 3)
    await impl.release(held)
    async with asyncio.timeout(20):
        await asyncio.gather(old_low, high, newer_low)
    assert order == ["old-low", "new-high", "new-low"]


async def test_strict_priority_without_aging(make: Any) -> None:
    impl = make(aging=None)
    held = await impl.acquire({"g": 1})
    order: list[int] = []

    async def one(priority: int) -> None:
        lease = await impl.acquire({"g": 1}, priority=priority)
        order.append(priority)
        await impl.release(lease)

    tasks = []
    for priority in (0, 2, 1, 3):
        tasks.append(asyncio.create_task(one(priority)))
        await _settle(impl, len(tasks))
    await impl.release(held)
    async with asyncio.timeout(20):
        await asyncio.gather(*tasks)
    assert order == [3, 2, 1, 0]


async def test_weighted_fair_share(make: Any) -> None:
    impl = make(aging=None, weights={"big": 1.0, "small": 1.0})
    held = await impl.acquire({"g": 1})
    order: list[str] = []

    async def one(tenant: str) -> None:
        lease = await impl.acquire({"g": 1}, tenant=tenant)
        order.append(tenant)
        await impl.release(lease)

    tasks = []
    for tenant in ["big"] * 6 + ["small"] * 3:  # "big" floods first
        tasks.append(asyncio.create_task(one(tenant)))
        await _settle(impl, len(tasks))
    await impl.release(held)
    async with asyncio.timeout(20):
        await asyncio.gather(*tasks)
    # start-time fair queuing: the small tenant is served every other grant, not last
    assert order[:6].count("small") == 3, order


async def test_cancel_while_waiting_takes_nothing(make: Any) -> None:
    impl = make()
    held = await impl.acquire({"g": 1})
    cancelled = asyncio.create_task(impl.acquire({"g": 1}))
    await _settle(impl, 1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await _settle(impl, 0)
    nxt = asyncio.create_task(impl.acquire({"g": 1}))
    await _settle(impl, 1)
    await impl.release(held)
    async with asyncio.timeout(20):
        lease = await nxt
    await impl.release(lease)
    # a timeout is a refusal (the in-process limiter may refuse at once when its estimate
    # already exceeds the timeout), never a leak
    with pytest.raises((WaitTimeout, DeadlineUnmeetable)):
        held = await impl.acquire({"g": 1})
        try:
            await impl.acquire({"g": 1}, timeout=0.05)
        finally:
            await impl.release(held)
    async with asyncio.timeout(20):
        await impl.release(await impl.acquire({"g": 1}))  # nothing leaked


async def test_no_oversubscription_over_a_random_schedule(make: Any) -> None:
    impl = make(aging=0.01)
    caps = {"global": 3, "tool:a": 1, "tool:b": 2}
    rng = random.Random(1414)
    in_flight: dict[str, int] = dict.fromkeys(caps, 0)
    violations: list[str] = []

    async def call(tool: str, priority: int, hold: float, timeout: float | None) -> str:
        pools = {"global": 3, f"tool:{tool}": caps[f"tool:{tool}"]}
        try:
            lease = await impl.acquire(pools, priority=priority, tenant=rng.choice("xy"),
                                       timeout=timeout)
        except Rejected:  # timed out (or refused at once: its deadline cannot be met)
            return "refused"
        for key in pools:
            in_flight[key] += 1
            if in_flight[key] > caps[key]:
                violations.append(key)
        try:
            await asyncio.sleep(hold)
        finally:
            for key in pools:
                in_flight[key] -= 1
            await impl.release(lease)
        return "ran"

    tasks = []
    for _ in range(40):
        task = asyncio.create_task(call(rng.choice("ab"), rng.randint(0, 2),
                                        rng.uniform(0, 0.01),
                                        rng.choice([None, None, 0.02, 0.2])))
        tasks.append(task)
        if rng.random() < 0.15:
            await asyncio.sleep(0.003)
            task.cancel()
        await asyncio.sleep(rng.uniform(0, 0.003))
    async with asyncio.timeout(60):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    # every call ran, was refused or was cancelled: nothing else, nothing lost
    assert all(r in ("ran", "refused") or isinstance(r, asyncio.CancelledError)
               for r in results), results
    assert any(r == "ran" for r in results)
    assert not violations
    await _settle(impl, 0)
    async with asyncio.timeout(20):  # every permit came back
        leases = [await impl.acquire({"global": 3}) for _ in range(3)]
    for lease in leases:
        await impl.release(lease)


async def test_a_release_wakes_a_waiter_of_another_holder(make: Any) -> None:
    one = make()
    two = one.other()  # for Redis: another backend (connection, mailbox): a process
    held = await one.acquire({"g": 1})
    waiter = asyncio.create_task(two.acquire({"g": 1}))
    await _settle(one, 1)
    await one.release(held)
    async with asyncio.timeout(10):
        lease = await waiter
    await two.release(lease)
    if isinstance(two, RedisImpl):
        assert two.backend.statistics().woken == 1  # pushed through its mailbox
