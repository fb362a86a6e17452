"""The ``degrade`` policy (each process enforces its share while Redis is down) and the
provider-pause cap (issue 11.4) on a real server."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio

from stageflow_plus.backends import backend_from_url
from stageflow_plus.backends.limits import RedisLimits
from stageflow_plus.backends.redis import RedisBackend
from stageflow_plus.interceptors import ToolCall
from stageflow_plus.primitives import Rate

from .redis_helpers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_degrade_enforces_limit_over_live_processes(
    own_redis_server: RedisServer, prefix: str
) -> None:
    backends: list[RedisBackend] = []
    for _ in range(2):
        backend = backend_from_url(own_redis_server.url, prefix=prefix, ttl=1.5,
                                   on_unavailable="degrade", recheck_s=5.0)
        assert isinstance(backend, RedisBackend)
        backends.append(backend)
    one = backends[0]
    limits = RedisLimits(one, concurrency=4)
    try:
        for b in backends:  # both register as live
            await b._heartbeat.beat()
        await one._heartbeat.beat()
        assert one.statistics().live_processes == 2
        before = await limits.acquire(ToolCall("t"))  # granted by Redis, still running
        await asyncio.to_thread(own_redis_server.stop)
        in_flight = peak = 0

        async def call() -> None:
            nonlocal in_flight, peak
            lease = await limits.acquire(ToolCall("t"))
            assert lease.degraded
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.1)
            in_flight -= 1
            await lease.release()

        async with asyncio.timeout(20):
            waiting = asyncio.gather(*(call() for _ in range(8)))
            await asyncio.sleep(0.2)
            assert peak == 1  # share 4 // 2 = 2, one taken by the call from before
            await before.release()  # counted against the share until it ends
            await waiting
        assert peak == 2
        stats = one.statistics()
        assert stats.degraded == 8 and stats.failed_open == stats.failed_closed == 0
    finally:
        for b in backends:
            await b.aclose()


async def test_provider_pause_is_capped(redis_server: RedisServer, prefix: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stageflow_plus.redis")
    backend = RedisBackend(redis_server.url, prefix=prefix, max_pause=0.5)
    try:
        assert await backend.pause("rate:x", 1e12) == pytest.approx(0.5, abs=0.01)
        assert await backend.pause("rate:y", float("inf")) == pytest.approx(0.5, abs=0.01)
        assert backend.statistics().capped_pauses == 2
        assert "shortened" in caplog.text
        for bad in (float("nan"), -1.0, "10"):
            with pytest.raises(ValueError, match="pause seconds"):
                await backend.pause("rate:x", bad)  # type: ignore[arg-type]
        limits = RedisLimits(backend, rates=[])
        await limits.pause("z", float("nan"))  # a provider's nonsense is logged, not raised
        assert "ignored a provider pause" in caplog.text
    finally:
        await backend.aclose()


async def test_degrade_tells_redis_what_runs_and_what_it_spent_once_back(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """A call admitted on the local share still runs when Redis comes back: within
    ``recheck_s`` — no new acquire needed — it is leased in Redis again, and the rate its
    share spent is charged to the global bucket; a restore that fails first keeps the debt."""
    backend = RedisBackend(own_redis_server.url, prefix=prefix, ttl=3.0,
                           on_unavailable="degrade", recheck_s=0.1)
    limits = RedisLimits(backend, concurrency=4, rates=[Rate(60, per=60, burst=10)])
    pool = backend.pool_key("global:*")
    try:
        await backend._heartbeat.beat()  # live: 1 (the whole share)
        await asyncio.to_thread(own_redis_server.stop)
        leases = [await limits.acquire(ToolCall("t")) for _ in range(3)]
        assert all(lease.degraded for lease in leases)
        assert backend._outage.spent  # 3 requests owed to the global bucket
        await asyncio.sleep(0.35)  # the recovery loop tried (and failed) meanwhile
        assert backend._outage.spent and backend._outage.due
        await asyncio.to_thread(own_redis_server.start)
        client = redis.asyncio.from_url(own_redis_server.url)
        try:
            for _ in range(100):  # within a few recheck_s, without any new acquire
                if await client.zcard(pool) == 3:
                    break
                await asyncio.sleep(0.05)
            assert await client.zcard(pool) == 3
            gcra = [k async for k in client.scan_iter(f"{{{prefix}}}:gcra:*")]
            assert gcra  # the rate the share spent, charged
            assert not backend._outage.due and not backend._outage.spent
            for lease in leases:
                await lease.release()
            assert await client.zcard(pool) == 0
        finally:
            await client.aclose()
    finally:
        await backend.aclose()
