"""One limit shared by several processes (Redis) against per-process limits.

Worker *processes* (not tasks) call one strict provider
(:class:`~stageflow_plus.bench.provider.ProviderSimulator` in its own process: RPM, TPM and
a concurrency cap, answering 429 when exceeded) under an **uneven** load — process 0 is busy
(many closed-loop tasks), the others send a trickle. Three strategies:

* ``shared``      — one global limit in Redis (``RedisLimits``, the global queue) shared
  by all processes;
* ``per_process`` — each process has the provider's full limit in memory (→ 429s: the
  effective limit is limit × processes);
* ``split``       — each process has limit / N in memory (no 429s, but capacity of idle
  processes is wasted).

Metrics per strategy: calls completed, 429s, and efficiency = completed / what the provider
could have served in the same window (its burst plus its rate times the window, the
tightest of RPM / TPM / concurrency). Then the global queue's own runs
(:mod:`~stageflow_plus.bench.redis_global`): one process's uncontended acquire+release on
three limits (measured first, alone), release-to-wake-up across two processes, two tenants
10:1 over the processes (Jain's index), priorities across processes (p99 waits). Results
carry ``targets``, each ``{"measured", "goal", "processes", "met"}``.

Run ``python -m stageflow_plus.bench.distributed --processes 4 [--backend redis://…]
[--quick] [--json PATH]``; without ``--backend`` a temporary ``redis-server`` is started.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from .child_servers import http, provider_process, redis_server, sigterm_as_exit

__all__ = ["format_distributed_table", "main", "run_distributed_bench"]

STRATEGIES = ("shared", "per_process", "split")
PROVIDER = {"rpm": 6000.0, "tpm": 1_200_000.0, "max_concurrent": 8, "latency_ms": 50.0,
            "latency_jitter_ms": 20.0, "burst_s": 1.0}
TOKENS = (50, 150)  # tokens per call, uniform
SAFETY_BURST = 0.9  # client buckets hold 90 % of the provider's: slack for network jitter


# -- the worker process ------------------------------------------------------------------


class _Silent:
    """A limiter listener that drops every event (the benchmark measures, it does not log)."""

    def on_queued(self, info: Any, depth: int) -> None: ...
    def on_admitted(self, info: Any, wait: float) -> None: ...
    def on_rejected(self, info: Any, error: Any) -> None: ...
    def on_released(self, info: Any, held: float) -> None: ...


def _chain(cfg: dict[str, Any], backend: Any) -> Any:
    from ..backends.limits import RedisLimits
    from ..interceptors import ConcurrencyLimiter, TokenBucketRateLimiter, ToolCallChain
    from ..primitives import Rate

    p, share = PROVIDER, cfg["share"]
    rates = [Rate(p["rpm"] * share, per=60, burst=p["rpm"] / 60 * p["burst_s"] * share
                  * SAFETY_BURST),
             Rate(p["tpm"] * share, per=60, burst=p["tpm"] / 60 * p["burst_s"] * share
                  * SAFETY_BURST, dimension="tokens")]
    cap = max(1, int(p["max_concurrent"] * share))
    if cfg["strategy"] == "shared":  # the global queue only: no local cap in front
        steps: list[Any] = [RedisLimits(backend, concurrency=cap, rates=rates)]
    else:
        steps = [ConcurrencyLimiter(cap), TokenBucketRateLimiter(rates, key="global")]
    return ToolCallChain(steps, listener=_Silent())


async def _load(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from ..backends.redis import RedisBackend
    from ..interceptors import ToolCall
    from ..primitives import Rejected

    backend = RedisBackend(cfg["redis"], prefix=cfg["prefix"], ttl=10.0,
                           op_timeout=1.0) if cfg["redis"] else None
    chain = _chain(cfg, backend)
    rng = random.Random(cfg["index"])
    counts = {"completed": 0, "http_429": 0, "errors": 0, "refused": 0}
    await asyncio.sleep(max(0.0, cfg["start_at"] - time.time()))
    loop = asyncio.get_running_loop()
    end = loop.time() + cfg["duration"]
    url = cfg["provider"] + "/v1/call"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def send(call: ToolCall) -> float:
            if loop.time() >= end:
                return -1.0  # admitted after the window: not sent
            async with session.post(url, json={"tokens": call.cost["tokens"], "tenant": "t",
                                               "priority": 0}) as response:
                await response.read()
                if response.status == 200:
                    counts["completed"] += 1
                    return 0.0
                if response.status == 429:
                    counts["http_429"] += 1
                    return float(response.headers.get("retry-after", "0.05"))
                counts["errors"] += 1
                return 0.0

        async def client() -> None:
            while loop.time() < end:
                call = ToolCall("llm", cost={"tokens": float(rng.randint(*TOKENS))},
                                deadline=end)
                try:
                    retry_after = await chain.run(call, send)
                except Rejected as error:  # counted; a polite client waits, then retries
                    counts["refused"] += 1
                    await asyncio.sleep(error.retry_after or 0.05)
                    continue
                if retry_after > 0:
                    await asyncio.sleep(retry_after)  # a polite client honours Retry-After
                if cfg["think"]:
                    await asyncio.sleep(rng.expovariate(1 / cfg["think"]))

        await asyncio.gather(*(client() for _ in range(cfg["tasks"])))
    if backend is not None:
        stats = backend.statistics()
        tries = (stats.acquired + stats.refused) / max(1, stats.acquired)
        counts["acquire_tries_per_grant"] = round(tries, 2)  # type: ignore[assignment]
        await backend.aclose()
    return counts


def _worker(cfg: dict[str, Any]) -> int:
    logging.getLogger("stageflow_plus").setLevel(logging.ERROR)
    from . import redis_global

    jobs = {"load": _load, "fair": redis_global.fair_worker,
            "priority": redis_global.priority_worker, "latency": redis_global.latency_worker,
            "wake": redis_global.wake_worker}
    print(json.dumps(asyncio.run(jobs[cfg["mode"]](cfg))), flush=True)
    return 0


# -- the parent --------------------------------------------------------------------------


def _run_workers(configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    procs = [subprocess.Popen([sys.executable, "-m", "stageflow_plus.bench.distributed",
                               "--worker", json.dumps(cfg)], stdout=subprocess.PIPE, text=True)
             for cfg in configs]
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"a benchmark worker failed (exit {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:  # (an error, Ctrl-C, SIGTERM: no worker outlives the benchmark)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return results


def _provider_capacity(seconds: float) -> float:
    from .provider import ProviderLimits

    limits = ProviderLimits(**PROVIDER)  # type: ignore[arg-type]
    return limits.max_calls_in(seconds, sum(TOKENS) / 2)


def run_distributed_bench(*, processes: int = 4, backend_url: str | None = None,
                          quick: bool = False) -> dict[str, Any]:
    """Run the three strategies and the Redis acquire measurement; JSON-ready results.

    :param processes: worker processes (>= 1; uneven load: process 0 is the busy one).
    :param backend_url: ``redis://…`` of the shared limit (``None``: a temporary server).
    :param quick: shorter windows (for CI and tests).
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if backend_url is not None:
        from ..backends import backend_from_url

        backend_from_url(backend_url)  # validates (ConfigError) before spawning anything
    duration = 3.0 if quick else 8.0
    with sigterm_as_exit(), \
            redis_server() if backend_url is None else nullcontext(backend_url) as redis_url, \
            provider_process(PROVIDER) as provider:
        latency = _run_mode(redis_url, "latency", [{"duration": 1.0 if quick else 3.0}])[0]
        strategies: dict[str, Any] = {}
        for strategy in STRATEGIES:
            http("POST", provider + "/reset")
            start_at = time.time() + 1.5 + 0.3 * processes  # together, once imported
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            configs = [{"mode": "load", "strategy": strategy, "index": i, "redis": redis_url,
                        "prefix": prefix, "provider": provider, "start_at": start_at,
                        "duration": duration, "tasks": 24 if i == 0 else 1,
                        "think": 0.0 if i == 0 else 0.2,
                        "share": 1.0 / processes if strategy == "split" else 1.0}
                       for i in range(processes)]
            workers = _run_workers(configs)
            stats = http("GET", provider + "/stats")
            completed = sum(w["completed"] for w in workers)
            strategies[strategy] = {
                "completed": completed,
                "http_429": stats["http_429"],
                "efficiency": round(completed / _provider_capacity(duration), 3),
                "per_process_completed": [w["completed"] for w in workers],
                "max_concurrent_observed": stats["max_concurrent_observed"],
                "acquire_tries_per_grant": [w.get("acquire_tries_per_grant") for w in workers],
                "refused": sum(w.get("refused", 0) for w in workers),
            }
        extra = _global_queue_runs(redis_url, processes, quick, latency)
    return _report(processes, duration, strategies, extra)


def _uneven(total: int, slots: int) -> list[int]:
    """``total`` tasks over ``slots`` processes, unevenly (weights slots, slots-1, ..., 1)."""
    weights = list(range(slots, 0, -1))
    shares = [total * w // sum(weights) for w in weights]
    shares[0] += total - sum(shares)
    return shares


def _run_mode(redis_url: str, mode: str, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    start_at = time.time() + 1.5 + 0.3 * len(configs)
    prefix = f"{mode}{uuid.uuid4().hex[:8]}"
    return _run_workers([{"mode": mode, "redis": redis_url, "prefix": prefix,
                          "start_at": start_at, "index": i, **cfg}
                         for i, cfg in enumerate(configs)])


def _global_queue_runs(redis_url: str, processes: int, quick: bool,
                       latency: dict[str, Any]) -> dict[str, Any]:
    from .redis_global import summarise_fairness, summarise_priority, wake_ups

    window = 3.0 if quick else 8.0

    def run(mode: str, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _run_mode(redis_url, mode, configs)

    rounds = 60 if quick else 300
    wake = run("wake", [{"role": r, "rounds": rounds, "duration": 0.0} for r in (0, 1)])
    wakes = wake_ups(wake)
    # two tenants offering 10:1, spread unevenly: "heavy" over all but the last process(es)
    light_slots = 1 if processes < 3 else 2
    heavy = _uneven(60, max(1, processes - light_slots))
    fair_cfgs = []
    for i in range(processes):
        tasks = {"heavy": heavy[i] if i < len(heavy) else 0,
                 "light": 6 // light_slots if i >= processes - light_slots else 0}
        fair_cfgs.append({"tasks": tasks, "duration": window})
    fairness = summarise_fairness(run("fair", fair_cfgs))
    low_slots = max(1, processes // 2)
    prio_cfgs = [{"tasks": {"0": 40} if i < low_slots else {"3": 2}, "think": {"3": 0.05},
                  "aging": 10.0, "duration": window} for i in range(processes)]
    if processes == 1:
        prio_cfgs = [{"tasks": {"0": 40, "3": 2}, "think": {"3": 0.05}, "aging": 10.0,
                      "duration": window}]
    priority = summarise_priority(run("priority", prio_cfgs))
    return {
        "acquire": {
            "processes": 1,
            "pair_p50_us": round(_pct(latency["pair_us"], 0.5), 1),
            "pair_p99_us": round(_pct(latency["pair_us"], 0.99), 1),
            "acquire_p50_us": round(_pct(latency["acquire_us"], 0.5), 1),
            "acquire_p99_us": round(_pct(latency["acquire_us"], 0.99), 1),
            # the floor, in the same rounds: a PING's round trip on the same kind of connection
            "ping_p50_us": round(_pct(latency["ping_us"], 0.5), 1),
            "ping_p99_us": round(_pct(latency["ping_us"], 0.99), 1),
            "redis_cpu_us_per_call": latency["redis_cpu_us_per_call"],
            "samples": len(latency["pair_us"]),
        },
        "wake_up": {"processes": 2, "samples": len(wakes),
                    "p50_us": round(_pct(wakes, 0.5), 1), "p99_us": round(_pct(wakes, 0.99), 1),
                    "woken_by_push": sum(w["woken"] for w in wake)},
        "fairness": {"processes": processes, "tasks": [c["tasks"] for c in fair_cfgs],
                     "window_s": window, **fairness},
        "priority": {"processes": processes, "window_s": window, **priority},
    }


def _pct(values: Sequence[float], q: float) -> float:
    from .redis_global import percentile

    return percentile(values, q)


def _report(processes: int, duration: float, strategies: dict[str, Any],
            extra: dict[str, Any]) -> dict[str, Any]:
    shared = strategies["shared"]
    acquire, wake = extra["acquire"], extra["wake_up"]
    targets = {
        "global_efficiency": {
            "measured": {"http_429": shared["http_429"], "efficiency": shared["efficiency"]},
            "goal": "0 x 429 and efficiency >= 0.97", "processes": processes,
            "met": shared["http_429"] == 0 and shared["efficiency"] >= 0.97},
        "global_fairness": {"measured": extra["fairness"]["jain"], "goal": "Jain >= 0.98",
                            "processes": processes, "met": extra["fairness"]["jain"] >= 0.98},
        "global_priority": {"measured": extra["priority"]["high_over_low_p99"],
                            "goal": "highest p99 wait <= 5 % of the lowest's",
                            "processes": processes,
                            "met": extra["priority"]["high_over_low_p99"] <= 0.05},
        "redis_acquire_p50": {
            "measured": {"p50_us": acquire["pair_p50_us"], "p99_us": acquire["pair_p99_us"]},
            "goal": "acquire+release p50 <= 150 us, p99 <= 1000 us", "processes": 1,
            "met": acquire["pair_p50_us"] <= 150 and acquire["pair_p99_us"] <= 1000},
        "release_to_wake_p99": {"measured": wake["p99_us"], "goal": "p99 <= 1000 us (aim)",
                                "processes": 2, "met": wake["p99_us"] <= 1000},
    }
    return {
        "processes": processes,
        "cores": os.cpu_count(),
        "duration_s": duration,
        "provider": dict(PROVIDER),
        "provider_capacity": round(_provider_capacity(duration), 1),
        "strategies": strategies,
        **extra,
        "targets": targets,
    }


def format_distributed_table(result: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    lines = [f"{result['processes']} processes, {result['duration_s']:g} s window, uneven load; "
             f"provider capacity {result['provider_capacity']:g} calls",
             f"{'strategy':<12} {'completed':>9} {'429s':>6} {'efficiency':>10}  per process"]
    for name, row in result["strategies"].items():
        lines.append(f"{name:<12} {row['completed']:>9} {row['http_429']:>6} "
                     f"{row['efficiency']:>10.3f}  {row['per_process_completed']}")
    a, w = result["acquire"], result["wake_up"]
    lines.append(f"acquire+release, one process, uncontended, 3 limits: p50 "
                 f"{a['pair_p50_us']:g} us, p99 {a['pair_p99_us']:g} us (acquire alone p50 "
                 f"{a['acquire_p50_us']:g} us; PING round trip p50 {a['ping_p50_us']:g} us, p99 "
                 f"{a['ping_p99_us']:g} us; Redis CPU per library call "
                 f"{a['redis_cpu_us_per_call']} us)")
    lines.append(f"release -> wake-up in another process: p50 {w['p50_us']:g} us, p99 "
                 f"{w['p99_us']:g} us ({w['samples']} samples, 2 processes)")
    f = result["fairness"]
    lines.append(f"fairness, tenants 10:1 over {f['processes']} processes: completed "
                 f"{f['completed']}, Jain {f['jain']:.4f}")
    pr = result["priority"]
    lines.append(f"priority over {pr['processes']} processes: " + ", ".join(
        f"p{p}: p50 {v['p50_ms']:g} ms p99 {v['p99_ms']:g} ms ({v['calls']} calls)"
        for p, v in sorted(pr["by_priority"].items())) +
        f"; high/low p99 = {pr['high_over_low_p99']:.3f}")
    lines.append("targets: " + ", ".join(f"{k}={'met' if v['met'] else 'MISSED'}"
                                         for k, v in result["targets"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stageflow_plus.bench.distributed``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m stageflow_plus.bench.distributed",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--backend", metavar="URL", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="PATH", default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return _worker(json.loads(args.worker))
    result = run_distributed_bench(processes=args.processes, backend_url=args.backend,
                                   quick=args.quick)
    print(format_distributed_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
