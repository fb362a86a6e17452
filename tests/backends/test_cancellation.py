"""No permit is ever left to its TTL by a caller that gives up (issue 14).

Against a real redis-server, on both transports (the lean connection and redis-py's):
an acquire is cancelled at every one of its await points — while it waits on a future,
and right when that future is answered but before the caller resumed — uncontended and
queued behind another process's holder (whose release races the cancellation); then a
random schedule of many callers. Right after (one round trip to let what was written land,
or a close), the pools hold nothing, nobody is queued, and this process holds nothing:
never "after the TTL" (the TTL here is 30 s). A cancel overtaken on the network by its own
acquire leaves a tombstone: the late acquire takes nothing. The heartbeat stops when asked.
"""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from collections.abc import Generator
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow_plus.backends import BackendUnavailable
from stageflow_plus.backends.redis import GlobalBucket, GlobalPool, RedisBackend
from stageflow_plus.primitives import Rejected

from .redis_helpers import DelayingProxy, RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

TTL = 30.0  # a permit left to its TTL would still be held when the test looks
POOL = [GlobalPool("global:*", 1)]
BUCKET = GlobalBucket("rate:*:requests", 1000.0, 100.0, 1.0)


class _CancelAt:
    """Awaits ``coro``, cancelling the task that awaits it at its ``k``-th suspension:
    ``"waiting"`` — while it waits there; ``"answered"`` — when what it waits on is
    answered, before it resumes (a done callback that runs before the task's own)."""

    def __init__(self, coro: Any, k: int, when: str) -> None:
        self.coro, self.k, self.when = coro, k, when
        self.suspensions = 0

    def __await__(self) -> Generator[Any, Any, Any]:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = self.coro.throw(error) if error is not None else self.coro.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            if self.suspensions == self.k:
                task = asyncio.current_task()
                assert task is not None
                if self.when == "waiting" or not isinstance(yielded, asyncio.Future):
                    asyncio.get_running_loop().call_soon(task.cancel)
                else:
                    def cancel(_: object, task: asyncio.Task[Any] = task) -> None:
                        task.cancel()

                    yielded.add_done_callback(cancel)
            self.suspensions += 1
            try:
                value = yield yielded
            except BaseException as exc:  # (handed to the awaited coroutine, as asyncio does)
                error = exc


def _backend(server: RedisServer, prefix: str, transport: str) -> RedisBackend:
    client = aioredis.from_url(server.url) if transport == "redis-py" else None
    return RedisBackend(server.url, prefix=prefix, ttl=TTL, client=client)


async def _state(server: RedisServer, prefix: str) -> tuple[int, int]:
    """(leases in the pool, calls queued), read on a fresh connection."""
    client = aioredis.from_url(server.url)
    try:
        return (int(await client.zcard(f"{{{prefix}}}:pool:global:*")),
                int(await client.hlen(f"{{{prefix}}}:q:wait")))
    finally:
        await client.aclose()


async def _one(server: RedisServer, prefix: str, transport: str, scenario: str, k: int,
               when: str) -> tuple[str, int]:
    """One acquire cancelled at suspension ``k``; returns its outcome and suspensions."""
    backend = _backend(server, prefix, transport)
    holder = _backend(server, prefix, transport)
    try:
        held = await holder.acquire(POOL, []) if scenario == "queued" else None
        waiter = _CancelAt(backend.acquire(POOL, [BUCKET], ["rate:*"], timeout=10), k, when)

        async def run() -> str:
            try:
                lease = await waiter
            except asyncio.CancelledError:
                return "cancelled"
            await lease.release()
            return "ran"

        task = asyncio.create_task(run())
        if held is not None:  # the release races the waiter's cancellation
            for _ in range(random.randint(0, 6)):
                await asyncio.sleep(0)
            await held.release()
        async with asyncio.timeout(20):
            outcome = await task
        await backend.drain()
        await holder.drain()
        assert backend.statistics().held == 0 and not backend.mailbox.waiters
        assert await _state(server, prefix) == (0, 0), (transport, scenario, k, when, outcome)
        return outcome, waiter.suspensions
    finally:
        await backend.aclose()
        await holder.aclose()


@pytest.mark.parametrize("transport", ["lean", "redis-py"])
@pytest.mark.parametrize("scenario", ["free", "queued"])
async def test_cancelled_at_every_await_point_takes_nothing(
    redis_server: RedisServer, prefix: str, transport: str, scenario: str
) -> None:
    random.seed(14)
    outcome, suspensions = await _one(redis_server, f"{prefix}n", transport, scenario, -1,
                                      "waiting")
    assert outcome == "ran" and suspensions >= 1
    outcomes = set()
    for k in range(suspensions + 1):
        for when in ("waiting", "answered"):
            outcome, _ = await _one(redis_server, f"{prefix}{k}{when[0]}", transport,
                                    scenario, k, when)
            outcomes.add(outcome)
    assert "cancelled" in outcomes


async def test_closing_right_after_a_cancellation_leaves_nothing(
    redis_server: RedisServer, prefix: str
) -> None:
    for k in range(4):
        backend = _backend(redis_server, prefix, "lean")
        holder = _backend(redis_server, prefix, "lean")
        held = await holder.acquire(POOL, [])
        task = asyncio.create_task(backend.acquire(POOL, []))
        for _ in range(k):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.aclose()  # at once: what was given back is flushed first
        await held.release()
        await holder.aclose()
        assert await _state(redis_server, prefix) == (0, 0)


async def _settled(server: RedisServer, prefix: str) -> tuple[int, int]:
    """The state once what is still on the network has landed (a safety bound of 5 s,
    far below the TTL: a permit left to its TTL is still there when it runs out)."""
    for _ in range(500):
        state = await _state(server, prefix)
        if state == (0, 0):
            break
        await asyncio.sleep(0.01)
    return state


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), network=st.sampled_from(["direct", "delayed"]))
async def test_a_random_schedule_of_cancellations_leaves_nothing(
    redis_server: RedisServer, seed: int, network: str
) -> None:
    """Callers cancelled at random times; on the ``delayed`` network, one backend's path
    also stalls at random (longer than its op timeout, sometimes): replies are lost,
    cancels overtake acquires."""
    rng = random.Random(seed)
    prefix = f"r{seed}{uuid.uuid4().hex[:6]}"
    proxy = DelayingProxy(redis_server.port)
    await proxy.start()
    backends = [_backend(redis_server, prefix, rng.choice(["lean", "lean", "redis-py"]))]
    if network == "delayed":
        backends.append(RedisBackend(proxy.url, prefix=prefix, ttl=TTL, op_timeout=0.03,
                                     recheck_s=0.005))
    else:
        backends.append(_backend(redis_server, prefix, "lean"))
    pools = [GlobalPool("global:*", 2)]

    async def call(backend: RedisBackend, delay: float, hold: float) -> None:
        await asyncio.sleep(delay)
        try:
            lease = await backend.acquire(pools, [BUCKET], ["rate:*"],
                                          priority=rng.randint(0, 2), timeout=10)
        except Rejected:  # (Redis "unavailable" through the stalled path)
            return
        try:
            await asyncio.sleep(hold)
        finally:  # (cancelled while holding: given back at once, as the interceptor does)
            if rng.random() < 0.5:
                lease.release_nowait()
            else:
                await lease.release()

    async def stalls() -> None:
        for _ in range(4):
            await asyncio.sleep(rng.uniform(0, 0.01))
            proxy.hold_all()
            await asyncio.sleep(rng.uniform(0.01, 0.06))
            proxy.release_all()

    try:
        tasks = []
        stalling = asyncio.create_task(stalls()) if network == "delayed" else None
        for _ in range(16):
            task = asyncio.create_task(call(rng.choice(backends), rng.uniform(0, 0.02),
                                            rng.uniform(0, 0.004)))
            tasks.append(task)
            if rng.random() < 0.5:
                asyncio.get_running_loop().call_later(rng.uniform(0, 0.03), task.cancel)
        async with asyncio.timeout(30):
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if stalling is not None:
                await stalling
        proxy.release_all()
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results
        for backend in backends:
            await backend.drain()
        assert all(b.statistics().held == 0 for b in backends)
        assert await _settled(redis_server, prefix) == (0, 0)
    finally:
        for backend in backends:
            await backend.aclose()
        await proxy.aclose()


async def test_a_cancel_overtaken_by_its_acquire_leaves_a_tombstone(
    redis_server: RedisServer, prefix: str
) -> None:
    """The acquire is held back on the network; the caller gives up (op timeout); the blind
    cancel goes on a new connection and lands first. When the acquire finally reaches the
    server it must take nothing — not a permit left for the TTL."""
    proxy = DelayingProxy(redis_server.port)
    await proxy.start()
    backend = RedisBackend(proxy.url, prefix=prefix, ttl=TTL, op_timeout=0.2, recheck_s=0.01)
    try:
        lease = await backend.acquire(POOL, [])  # connected (and the library is loaded)
        await lease.release()
        proxy.hold_all()  # what this connection sends from now on is held back
        with pytest.raises(BackendUnavailable):
            await backend.acquire(POOL, [])  # unanswered: the watchdog gives up
        await backend.drain()  # the blind cancel went through a new connection
        assert await _state(redis_server, prefix) == (0, 0)
        proxy.release_all()  # the late acquire reaches the server now
        for _ in range(500):
            client = aioredis.from_url(redis_server.url)
            try:
                tombstones = int(await client.zcard(f"{{{prefix}}}:q:gone"))
            finally:
                await client.aclose()
            if tombstones == 0:
                break  # the late acquire met its tombstone (and removed it)
            await asyncio.sleep(0.01)
        assert tombstones == 0
        assert await _state(redis_server, prefix) == (0, 0)
    finally:
        await backend.aclose()
        await proxy.aclose()


@pytest.mark.parametrize("transport", ["lean", "redis-py"])
@pytest.mark.parametrize("stall", [False, True])
async def test_the_heartbeat_stops_when_asked_at_any_point(
    own_redis_server: RedisServer, prefix: str, stall: bool, transport: str
) -> None:
    """Through redis-py, a cancellation that lands while its connection is re-connecting
    (the handshake's read) is lost by redis-py: the beat ends when its op timeout fires,
    as a ``TimeoutError``. The loop checks its stop flag before every beat, so it still
    ends then (``stop()`` waits for that, without a bound of its own)."""
    rng = random.Random(3)
    assert own_redis_server.process is not None
    for _ in range(12):
        client = (aioredis.from_url(own_redis_server.url, socket_timeout=0.075)
                  if transport == "redis-py" else None)
        backend = RedisBackend(own_redis_server.url, prefix=prefix, ttl=0.3, recheck_s=0.01,
                               client=client)
        lease = await backend.acquire(POOL, [])
        heartbeat = backend._heartbeat._task
        assert heartbeat is not None
        await asyncio.sleep(rng.uniform(0, 0.15))  # anywhere: asleep, or a beat in flight
        if stall:
            own_redis_server.process.send_signal(signal.SIGSTOP)
        try:
            async with asyncio.timeout(10):  # (a safety net: stop() has no bound of its own)
                await backend._heartbeat.stop()
            assert heartbeat.done()
        finally:
            if stall:
                own_redis_server.process.send_signal(signal.SIGCONT)
        lease.release_nowait()
        await backend.aclose()
        if client is not None:
            await client.aclose()
