"""A worker process for the multi-process tests: ``python worker.py MODE URL PREFIX ...``.

* ``contend URL PREFIX CALLS TASKS LIMIT RATE BURST HOLD_S`` — run ``CALLS`` calls on
  ``TASKS`` tasks through one global concurrency limit and one rate; while holding the
  permits each call records (in Redis) how many calls were in flight and its grant time.
* ``hold URL PREFIX LIMIT COUNT TTL`` — take ``COUNT`` permits, print ``HELD`` and sleep
  (the test SIGKILLs it).
"""

from __future__ import annotations

import asyncio
import json
import sys

from stageflow_plus.backends.limits import RedisLimits
from stageflow_plus.backends.redis import RedisBackend
from stageflow_plus.interceptors import ToolCall
from stageflow_plus.primitives import Rate


async def contend(url: str, prefix: str, calls: int, tasks: int, limit: int, rate: float,
                  burst: float, hold: float) -> dict[str, int]:
    backend = RedisBackend(url, prefix=prefix, ttl=3.0)
    limits = RedisLimits(backend, concurrency=limit, rates=[Rate(rate, per=1, burst=burst)])
    queue = list(range(calls))
    done = 0

    async def run() -> None:
        nonlocal done
        while queue:
            queue.pop()
            lease = await limits.acquire(ToolCall("t"))
            in_flight = await backend.client.incr(f"{prefix}:test:inflight")
            await backend.client.rpush(f"{prefix}:test:seen", in_flight)
            await backend.client.rpush(f"{prefix}:test:grants", repr(lease.granted_at))
            await asyncio.sleep(hold)
            await backend.client.decr(f"{prefix}:test:inflight")
            await lease.release()
            done += 1

    await asyncio.gather(*(run() for _ in range(tasks)))
    await backend.aclose()
    return {"done": done}


async def hold(url: str, prefix: str, limit: int, count: int, ttl: float) -> None:
    backend = RedisBackend(url, prefix=prefix, ttl=ttl)
    limits = RedisLimits(backend, concurrency=limit)
    for _ in range(count):
        await limits.acquire(ToolCall("t"))
    print("HELD", flush=True)
    await asyncio.sleep(60)


def main(argv: list[str]) -> int:
    mode, url, prefix, *rest = argv
    if mode == "contend":
        calls, tasks, limit = (int(x) for x in rest[:3])
        rate, burst, hold_s = (float(x) for x in rest[3:])
        print(json.dumps(asyncio.run(contend(url, prefix, calls, tasks, limit, rate, burst,
                                             hold_s))), flush=True)
    elif mode == "hold":
        asyncio.run(hold(url, prefix, int(rest[0]), int(rest[1]), float(rest[2])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
