"""Workloads for the global queue on Redis: fairness, priority, acquire cost, wake-up.

Each ``*_worker`` runs inside one worker process (spawned by
:mod:`stageflow_plus.bench.distributed`) and returns a JSON-able dict; ``summarise_*``
turn the workers' dicts into the figures reported under ``targets``. The tool is a sleep
(no provider): what is measured is how the limiter shares a global cap between processes.

* ``fair``     — two tenants offering 10:1 (closed-loop tasks), spread unevenly over the
  processes, one global concurrency cap: per-tenant completions → Jain's index.
* ``priority`` — a low-priority flood in some processes, a trickle of high-priority calls in
  others, one global cap: queue-wait p99 per priority.
* ``latency``  — one process, uncontended: acquire + release of a demand on three limits
  (global cap, tool cap, RPM + TPM buckets) through :class:`RedisLimits`.
* ``wake``     — two processes ping-pong one permit: from the holder's release to the
  waiter's wake-up, on the machine's wall clock (both processes share it).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["fair_worker", "jain", "latency_worker", "percentile", "priority_worker",
           "summarise_fairness", "summarise_priority", "wake_ups", "wake_worker"]

CAP = 8  # the global concurrency cap of the fairness and priority runs
HOLD_S = 0.02  # how long a call holds its permit


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))])


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index of ``values`` (1 = perfectly even)."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def _backend(cfg: dict[str, Any], **options: Any) -> Any:
    from ..backends.redis import RedisBackend

    # generous timeouts: the benchmark shares 2 cores with 8 workers and redis-server
    backend: Any = RedisBackend(cfg["redis"], prefix=cfg["prefix"], ttl=10.0, op_timeout=1.0,
                                **options)
    return backend


async def _start(cfg: dict[str, Any]) -> float:
    await asyncio.sleep(max(0.0, cfg["start_at"] - time.time()))
    return asyncio.get_running_loop().time() + float(cfg["duration"])


async def fair_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg["tasks"]``: tenant → closed-loop tasks in this process."""
    from ..backends.limits import RedisLimits
    from ..interceptors import ToolCall
    from ..primitives import Rejected

    backend = _backend(cfg, aging_interval=None)
    limits = RedisLimits(backend, concurrency=CAP)
    end = await _start(cfg)
    loop = asyncio.get_running_loop()
    done: dict[str, int] = dict.fromkeys(cfg["tasks"], 0)

    async def client(tenant: str) -> None:
        while loop.time() < end:
            try:
                lease = await limits.acquire(ToolCall("llm", tenant=tenant, deadline=end))
            except Rejected:
                await asyncio.sleep(0.05)  # refused (counted by the backend): try again
                continue
            await asyncio.sleep(HOLD_S)
            if loop.time() < end:
                done[tenant] += 1
            await lease.release()

    await asyncio.gather(*(client(t) for t, n in cfg["tasks"].items() for _ in range(n)))
    await backend.aclose()
    return {"completed": done}


async def priority_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg["tasks"]``: priority → closed-loop tasks; ``cfg["think"]``: priority → think s."""
    from ..backends.limits import RedisLimits
    from ..interceptors import ToolCall
    from ..primitives import Rejected

    backend = _backend(cfg, aging_interval=cfg["aging"])
    limits = RedisLimits(backend, concurrency=CAP)
    end = await _start(cfg)
    loop = asyncio.get_running_loop()
    rng = random.Random(cfg["index"])
    waits: dict[str, list[float]] = {p: [] for p in cfg["tasks"]}

    async def client(priority: str) -> None:
        think = cfg["think"].get(priority, 0.0)
        while loop.time() < end:
            if think:
                await asyncio.sleep(rng.expovariate(1 / think))
            started = loop.time()
            try:
                lease = await limits.acquire(ToolCall("llm", priority=int(priority),
                                                      deadline=end))
            except Rejected:
                await asyncio.sleep(0.05)
                continue
            if loop.time() < end:
                waits[priority].append(loop.time() - started)
            await asyncio.sleep(HOLD_S)
            await lease.release()

    await asyncio.gather(*(client(p) for p, n in cfg["tasks"].items() for _ in range(n)))
    await backend.aclose()
    return {"waits": waits}


async def latency_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One task, nothing else on the prefix, in interleaved rounds: a ``PING`` on a lean
    connection (the round-trip floor, the baseline), the interceptor's acquire + release
    (the release pipelined, as :class:`RedisLimits` does it), the acquire alone, and the
    primitive's acquire + awaited release; then the Redis CPU each library call used."""
    from ..backends.limits import RedisLimits
    from ..backends.resp import Connection, encode
    from ..interceptors import ToolCall
    from ..primitives import Rate

    backend = _backend(cfg)
    limits = RedisLimits(backend, concurrency=1_000, per_tool=1_000,
                         rates=[Rate(6_000_000, per=60),
                                Rate(1e12, per=60, dimension="tokens")])
    ping = Connection(cfg["redis"], connect_timeout=1.0, op_timeout=1.0)
    await ping.connect()
    command = encode(["PING"])
    call = ToolCall("llm", cost={"tokens": 100.0})
    out: dict[str, list[float]] = {"ping_us": [], "pair_us": [], "acquire_us": [],
                                   "awaited_pair_us": []}

    async def proceed(_: Any) -> None:
        return None

    async def one_ping() -> None:
        await ping.send(command)

    async def pair() -> None:
        await limits(call, proceed)

    async def acquire_only() -> Any:
        return await limits.acquire(call)

    async def awaited_pair() -> None:
        await (await limits.acquire(call)).release()

    for _ in range(200):  # warm up: connections, the library, plans
        await pair()
    await backend.drain()
    before = await _library_cpu(backend)
    rounds = int(cfg.get("rounds", 10))
    end = time.perf_counter() + cfg["duration"]
    for _ in range(rounds):
        per_round = max(10, int(cfg.get("per_round", 200)))
        for name, step in (("ping_us", one_ping), ("pair_us", pair),
                           ("awaited_pair_us", awaited_pair)):
            for _ in range(per_round):
                started = time.perf_counter()
                await step()
                out[name].append(round((time.perf_counter() - started) * 1e6, 1))
        for _ in range(per_round):
            started = time.perf_counter()
            lease = await acquire_only()
            out["acquire_us"].append(round((time.perf_counter() - started) * 1e6, 1))
            lease.release_nowait()
        if time.perf_counter() > end:
            break
    await backend.drain()
    after = await _library_cpu(backend)
    cpu = {name: round((after[name][1] - before[name][1])
                       / max(1, after[name][0] - before[name][0]), 1)
           for name in after if after[name][0] > before.get(name, (0, 0))[0]}
    ping.close()
    await backend.aclose()
    return {**out, "redis_cpu_us_per_call": cpu}


async def _library_cpu(backend: Any) -> dict[str, tuple[int, int]]:
    """``INFO commandstats``: (calls, µs) of FCALL and EVALSHA (the library's calls)."""
    info = await backend.client.info("commandstats")
    return {name[len("cmdstat_"):]: (int(v["calls"]), int(v["usec"]))
            for name, v in info.items() if name in ("cmdstat_fcall", "cmdstat_evalsha")}


async def wake_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Role ``cfg["role"]`` 0 or 1: take turns holding one permit. The holder notes (wall
    clock) when it releases, the other process — queued on the permit — when it wakes up
    with the grant; the parent pairs them by turn (both processes share the clock)."""
    from ..backends.redis import GlobalPool

    backend = _backend(cfg)
    client = backend.client
    pool = [GlobalPool("wake", 1)]
    await _start(cfg)
    released: dict[int, float] = {}
    woke: dict[int, float] = {}
    role = cfg["role"]
    for turn in range(cfg["rounds"]):
        if turn % 2 == role:  # holder: take it, let the other queue, release
            lease = await backend.acquire(pool, [], timeout=10)
            for _ in range(200):  # until the other one is queued
                if await client.hlen(f"{backend.prefix}q:wait"):
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.002)  # (quiet: nothing else of this process runs now)
            released[turn] = time.time()
            lease.release_nowait()
        else:  # waiter: wait until the holder holds, then queue
            await asyncio.sleep(0.002)
            for _ in range(500):
                if await client.zcard(backend.pool_key("wake")):
                    break
                await asyncio.sleep(0.001)
            lease = await backend.acquire(pool, [], timeout=10)
            if lease.waited > 0:
                woke[turn] = time.time()
            await asyncio.sleep(0.001)
            lease.release_nowait()
        await backend.drain()
    woken = backend.statistics().woken
    await backend.aclose()
    return {"released": released, "woke": woke, "woken": woken}


def wake_ups(workers: Sequence[dict[str, Any]]) -> list[float]:
    """Release → wake-up times (µs) of :func:`wake_worker` runs, paired by turn."""
    released = {int(t): v for w in workers for t, v in w["released"].items()}
    woke = {int(t): v for w in workers for t, v in w["woke"].items()}
    return [round((woke[t] - released[t]) * 1e6, 1) for t in sorted(woke) if t in released]


def summarise_fairness(workers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-tenant completions and Jain's index over them (equal weights)."""
    totals: dict[str, int] = {}
    for w in workers:
        for tenant, n in w["completed"].items():
            totals[tenant] = totals.get(tenant, 0) + n
    return {"completed": totals, "jain": round(jain(list(totals.values())), 4)}


def summarise_priority(workers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Queue-wait p50/p99 per priority (ms) and the high/low p99 ratio."""
    waits: dict[str, list[float]] = {}
    for w in workers:
        for priority, values in w["waits"].items():
            waits.setdefault(priority, []).extend(values)
    out = {p: {"calls": len(v), "p50_ms": round(percentile(v, 0.5) * 1000, 2),
               "p99_ms": round(percentile(v, 0.99) * 1000, 2)} for p, v in waits.items()}
    high, low = max(waits, key=int), min(waits, key=int)
    low_p99 = percentile(waits[low], 0.99)
    ratio = percentile(waits[high], 0.99) / low_p99 if low_p99 else 0.0
    return {"by_priority": out, "high_over_low_p99": round(ratio, 4)}
