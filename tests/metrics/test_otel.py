"""OpenTelemetry metrics, read back with the SDK's InMemoryMetricReader."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ManualClock,
    PriorityFairQueue,
    QueueFull,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
    notify_limit_changed,
)
from stageflow_plus.metrics import OTHER, OTelMetrics
from stageflow_plus.testing import settle

pytestmark = pytest.mark.anyio

Points = dict[tuple[str, frozenset[tuple[str, Any]]], Any]


def read(reader: InMemoryMetricReader) -> Points:
    data = reader.get_metrics_data()
    points: Points = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, frozenset((point.attributes or {}).items()))
                    if isinstance(point, NumberDataPoint):
                        points[key] = point.value
                    else:
                        assert isinstance(point, HistogramDataPoint)
                        points[key] = point
    return points


def at(points: Points, name: str, **attributes: Any) -> Any:
    return points[(f"stageflow_plus.{name}", frozenset({"limiter": "llm", **attributes}.items()))]


async def test_instruments_report_flight_queue_refusals_buckets_waits_and_changes() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    clock = ManualClock()
    rate = TokenBucketRateLimiter([Rate(600, per=60, burst=100),
                                   Rate(90_000, per=60, burst=50_000, dimension="tokens")],
                                  key="global")
    chain = ToolCallChain([Backpressure(max_queue=3), PriorityFairQueue(), rate,
                           ConcurrencyLimiter(2)], name="llm", clock=clock)
    OTelMetrics(provider, tenants=["acme"], max_tenants=1, snapshot_ttl=0).attach(chain)
    release = asyncio.Event()

    async def hold(call: ToolCall) -> None:
        await release.wait()

    def call(tenant: str, priority: int) -> asyncio.Future[Any]:
        return asyncio.ensure_future(chain.run(
            ToolCall("llm", tenant=tenant, priority=priority, cost={"tokens": 1000}), hold))

    tasks = [call("acme", 1), call("acme", 1)]
    await settle()
    clock.advance(0.5)
    tasks += [call("acme", 3), call("beta", 0), call("gamma", 0)]
    await settle()
    with pytest.raises(QueueFull):
        await chain.run(ToolCall("llm"), hold)
    key = rate.key_of(ToolCall("llm"))
    rate.pause(key, 5.0)
    assert chain.gate is not None
    notify_limit_changed(chain.gate.limiter.listener, "concurrency:global", 2, 4, "aimd")

    # collected from another thread: the snapshot is taken on this loop
    points = await asyncio.to_thread(read, reader)
    assert at(points, "calls.in_flight") == 2
    assert at(points, "calls.waiting") == 3
    assert at(points, "calls.waiting", priority="3") == 1
    assert at(points, "calls.waiting", priority="0") == 2
    assert at(points, "calls.waiting_by_tenant", tenant="acme") == 1
    assert at(points, "calls.waiting_by_tenant", tenant="beta") == 1
    assert at(points, "calls.waiting_by_tenant", tenant=OTHER) == 1
    assert at(points, "calls.admitted") == 2
    assert at(points, "calls.rejected", reason="queue_full") == 1
    assert at(points, "bucket.available", key="rate:*:tokens:90000/60s",
              dimension="tokens") == pytest.approx(48_750)  # 48 000 + 0.5 s of refill
    assert at(points, "pool.capacity", key="global:*") == 2
    assert at(points, "provider.pauses", key=key) == 1
    assert at(points, "limit.changes", key="concurrency:global", reason="aimd") == 1
    assert at(points, "limit", key="concurrency:global") == 4
    immediate = at(points, "wait", priority="1")
    assert immediate.count == 2 and immediate.sum == 0.0

    clock.advance(5.0)
    release.set()
    await asyncio.gather(*tasks)
    points = read(reader)  # collected on the loop's own thread
    assert at(points, "calls.in_flight") == 0 and at(points, "calls.waiting") == 0
    queued = [at(points, "wait", priority=p) for p in ("3", "0")]
    assert sum(h.count for h in queued) == 3
    assert all(h.min >= 5.0 for h in queued)  # they waited out the provider's pause
    assert list(queued[0].explicit_bounds)[:3] == [0.0, 0.001, 0.005]
    provider.shutdown()


async def test_two_chains_report_under_their_names() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = OTelMetrics(provider, snapshot_ttl=0)
    metrics.attach(ToolCallChain([ConcurrencyLimiter(1)], name="llm"))
    metrics.attach(ToolCallChain([ConcurrencyLimiter(7)], name="search"))
    points = read(reader)
    assert points[("stageflow_plus.pool.capacity",
                   frozenset({"limiter": "search", "key": "global:*"}.items()))] == 7
    assert at(points, "pool.capacity", key="global:*") == 1
    provider.shutdown()
