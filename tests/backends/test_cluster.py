"""The global queue on a real 3-node Redis Cluster: every key of a prefix in one slot."""

from __future__ import annotations

import asyncio

import pytest

from stageflow_plus.backends import backend_from_url
from stageflow_plus.backends.redis import GlobalBucket, GlobalPool, RedisBackend

from .redis_helpers import RedisClusterNodes

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_cluster_queue_wakes_across_backends_and_keys_share_one_slot(
    redis_cluster: RedisClusterNodes, prefix: str
) -> None:
    backends = []
    for _ in range(2):
        backend = backend_from_url(redis_cluster.url, prefix=prefix, ttl=3.0, cluster=True)
        assert isinstance(backend, RedisBackend)
        backends.append(backend)
    one, two = backends
    pools = [GlobalPool("global:*", 1)]
    buckets = [GlobalBucket("rate:*:requests", 1000.0, 10.0, 1.0)]
    try:
        async with asyncio.timeout(20):
            held = await one.acquire(pools, buckets, ["rate:*"])
            waiter = asyncio.create_task(two.acquire(pools, buckets, ["rate:*"], priority=1))
            for _ in range(500):  # until it waits in the global queue
                if await one.client.hlen(f"{one.prefix}q:wait"):
                    break
                await asyncio.sleep(0.01)
            await held.release()
            lease = await waiter  # woken through its mailbox on the prefix's node
            assert lease.waited > 0 and two.statistics().woken == 1
            await lease.release()
            assert await one.pause("rate:*", 0.05) > 0
        keys = [one.pool_key("global:*"), one.bucket_key("rate:*:requests"),
                one.pause_key("rate:*"), f"{one.prefix}q:wait", f"{one.prefix}wake:x"]
        slots = {int(await one.client.cluster_keyslot(k)) for k in keys}
        assert len(slots) == 1  # the hash tag: one script's keys live in one slot
    finally:
        for backend in backends:
            await backend.aclose()
