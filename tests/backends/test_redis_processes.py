"""Several processes on one Redis: limits hold together, crashes and restarts are survived.

These tests run on the wall clock (Redis ``TIME`` is real) but assert no speed: bounds are
generous and only safety (never above a limit; nothing hangs; nothing lost) is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from stageflow_plus.backends import BackendUnavailable, backend_from_url
from stageflow_plus.backends.limits import RedisLimits
from stageflow_plus.backends.redis import RedisBackend
from stageflow_plus.interceptors import ConcurrencyLimiter, ToolCall, ToolCallChain
from stageflow_plus.primitives import Rate, Rejected

from .redis_helpers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

WORKER = str(Path(__file__).with_name("worker.py"))
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}


def _spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


async def test_processes_together_never_exceed_the_global_limits(
    redis_server: RedisServer, prefix: str
) -> None:
    limit, rate, burst, calls = 3, 60.0, 4.0, 25
    workers = [_spawn("contend", redis_server.url, prefix, calls, 6, limit, rate, burst, 0.02)
               for _ in range(4)]
    outputs = [await asyncio.to_thread(w.communicate, timeout=40) for w in workers]
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
        assert json.loads(out.splitlines()[-1]) == {"done": calls}
    client = aioredis.from_url(redis_server.url)
    try:
        seen = [int(x) for x in await client.lrange(f"{prefix}:test:seen", 0, -1)]
        grants = sorted(float(x) for x in await client.lrange(f"{prefix}:test:grants", 0, -1))
    finally:
        await client.aclose()
    assert len(seen) == len(grants) == 4 * calls
    assert max(seen) <= limit
    # GCRA: in any interval of length L at most burst + rate * L grants (Redis clock)
    for i, start in enumerate(grants):
        for j in range(i, len(grants)):
            assert j - i + 1 <= burst + rate * (grants[j] - start) + 1e-3, (i, j)


async def test_permits_of_a_killed_worker_come_back_within_the_ttl(
    redis_server: RedisServer, prefix: str
) -> None:
    ttl = 1.0
    worker = _spawn("hold", redis_server.url, prefix, 2, 2, ttl)
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(worker.stdout.readline), timeout=20)
        assert line.strip() == "HELD"
        backend = RedisBackend(redis_server.url, prefix=prefix, ttl=ttl)
        limits = RedisLimits(backend, concurrency=2)
        loop = asyncio.get_running_loop()
        with pytest.raises(Rejected):  # the worker's heartbeat keeps both permits
            await limits.acquire(ToolCall("t", deadline=loop.time() + 1.5 * ttl))
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        killed = time.monotonic()
        lease = await limits.acquire(ToolCall("t", deadline=loop.time() + 5 * ttl))
        assert time.monotonic() - killed <= 5 * ttl
        await lease.release()
        await backend.aclose()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        for stream in (worker.stdout, worker.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_redis_restart_mid_load(own_redis_server: RedisServer, prefix: str,
                                      policy: str) -> None:
    server = own_redis_server
    backend = backend_from_url(server.url, prefix=prefix, ttl=1.0, on_unavailable=policy,
                               op_timeout=0.3, recheck_s=0.1)
    assert isinstance(backend, RedisBackend)
    chain = ToolCallChain([ConcurrencyLimiter(4),
                           RedisLimits(backend, concurrency=3, rates=Rate(200, per=1, burst=5))])
    outcomes: list[str] = []

    async def tool(call: ToolCall) -> str:
        await asyncio.sleep(0.005)
        return "ok"

    async def one() -> None:
        try:
            outcomes.append(await chain.run(ToolCall("t", deadline=chain.now() + 2.0), tool))
        except BackendUnavailable:
            outcomes.append("unavailable")
        except Rejected as error:
            outcomes.append(error.reason)

    async def load(n: int) -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    async with asyncio.timeout(30):  # nothing hangs
        await load(40)
        before = len(outcomes)
        during = asyncio.create_task(load(60))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.start)
        await during
        await asyncio.sleep(0.2)  # past recheck_s
        await load(40)
    assert len(outcomes) == 140  # every call accounted for
    assert set(outcomes) <= {"ok", "unavailable", "wait_timeout", "deadline"}
    assert outcomes[:before].count("ok") == before
    assert outcomes[-40:].count("ok") == 40  # back to normal after the restart
    stats = backend.statistics()
    assert stats.unavailable >= 1
    if policy == "fail_open":
        assert "unavailable" not in outcomes and stats.failed_open >= 1
    else:
        assert stats.failed_closed == outcomes.count("unavailable") >= 1
    await backend.aclose()
