"""Prometheus metrics: queue depth by priority and tenant, waits, refusals, bucket levels.

Starts prometheus_client's HTTP server on 127.0.0.1 (a free port), runs a burst of calls
through a chain and scrapes its own /metrics endpoint, as Prometheus would.

Run: python examples/metrics_prometheus.py   (needs: pip install 'stageflow-plus[prometheus]')
"""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    Rate,
    Rejected,
    TokenBucketRateLimiter,
    ToolCallChain,
)
from stageflow_plus.metrics import PrometheusMetrics


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                                     if k != "limiter") + "}": sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


async def main() -> None:
    chain = ToolCallChain([
        Backpressure(max_queue=20),
        PriorityFairQueue(),
        TokenBucketRateLimiter([Rate(600, per=60, burst=20),
                                Rate(90_000, per=60, burst=20_000, dimension="tokens")],
                               key="global"),
        ConcurrencyLimiter(4),
    ], name="llm")
    registry = CollectorRegistry()  # (the default REGISTRY works the same)
    PrometheusMetrics(registry, tenants=["acme", "globex"]).attach(chain)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    release = asyncio.Event()

    async def llm_call(tenant: str, priority: int) -> None:
        async with chain.limit(tool="llm", tenant=tenant, priority=priority,
                               cost={"tokens": 800}):
            await release.wait()

    calls = [asyncio.ensure_future(llm_call(("acme", "globex")[i % 2], i % 3))
             for i in range(30)]
    await asyncio.sleep(0.05)
    m = await asyncio.to_thread(scrape, url)  # from another thread, like Prometheus
    print(f"in flight {m['stageflow_plus_calls_in_flight{}']:.0f}, waiting "
          f"{m['stageflow_plus_calls_waiting{}']:.0f} (priority 2: "
          f"{m['stageflow_plus_calls_waiting_by_priority{priority=2}']:.0f}, acme: "
          f"{m['stageflow_plus_calls_waiting_by_tenant{tenant=acme}']:.0f}), refused "
          f"{m['stageflow_plus_calls_rejected_total{reason=queue_full}']:.0f} (queue full)")
    release.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(o is None or isinstance(o, Rejected) for o in outcomes)
    m = await asyncio.to_thread(scrape, url)
    tokens = m["stageflow_plus_bucket_available{dimension=tokens,key=rate:*:tokens:90000/60s}"]
    print(f"admitted {m['stageflow_plus_calls_admitted_total{}']:.0f}, of which "
          f"{m['stageflow_plus_wait_seconds_bucket{le=0.0,priority=0}']:.0f} at once; "
          f"{tokens:.0f} of 20000 tokens left in the TPM bucket")
    server.shutdown()
    server.server_close()
    thread.join(5)


if __name__ == "__main__":
    asyncio.run(main())
