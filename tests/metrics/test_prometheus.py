"""Prometheus metrics, scraped from a real ``/metrics`` HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    ManualClock,
    PriorityFairQueue,
    QueueFull,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
    notify_limit_changed,
)
from stageflow_plus.metrics import OTHER, LabelBudget, PrometheusMetrics
from stageflow_plus.testing import settle

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Endpoint:
    """A real prometheus_client HTTP server on a free port of 127.0.0.1."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    async def scrape(self) -> Samples:
        """GET /metrics from another thread (the loop stays free to answer the collector)."""
        def get() -> str:
            with urllib.request.urlopen(self.url, timeout=10) as response:
                assert response.status == 200
                body: bytes = response.read()
                return body.decode()

        text = await asyncio.to_thread(get)
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def endpoint(registry: CollectorRegistry) -> Iterator[Endpoint]:
    server = Endpoint(registry)
    try:
        yield server
    finally:
        server.close()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset({"limiter": "llm", **labels}.items()))]


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


@pytest.fixture
async def held() -> AsyncIterator[asyncio.Event]:
    release = asyncio.Event()
    yield release
    release.set()


async def test_a_scrape_shows_flight_queue_refusals_buckets_and_waits(
    registry: CollectorRegistry, endpoint: Endpoint, held: asyncio.Event,
) -> None:
    rate = TokenBucketRateLimiter([Rate(600, per=60, burst=100),
                                   Rate(90_000, per=60, burst=50_000, dimension="tokens")],
                                  key="global")
    clock = ManualClock()
    chain = ToolCallChain([Backpressure(max_queue=4), PriorityFairQueue(), rate,
                           ConcurrencyLimiter(2)], name="llm", clock=clock)
    metrics = PrometheusMetrics(registry, tenants=["acme"], max_tenants=1)
    metrics.attach(chain)

    async def hold(call: ToolCall) -> None:
        await held.wait()

    def call(tenant: str, priority: int) -> asyncio.Future[Any]:
        return asyncio.ensure_future(chain.run(
            ToolCall("llm", tenant=tenant, priority=priority, cost={"tokens": 1000}), hold))

    running = [call("acme", 0), call("acme", 0)]
    await settle()
    queued = [call("acme", 2), call("beta", 0), call("gamma", 1), call("delta", 1)]
    await settle()
    with pytest.raises(QueueFull):
        await chain.run(ToolCall("llm", tenant="acme"), hold)
    key = rate.key_of(ToolCall("llm"))  # the global bucket's key
    rate.pause(key, 30.0)
    notify_limit_changed(chain.gate.limiter.listener if chain.gate else None,
                         "concurrency:global", 2, 3, "manual")

    samples = await endpoint.scrape()
    assert value(samples, "stageflow_plus_calls_in_flight") == 2
    assert value(samples, "stageflow_plus_calls_waiting") == 4
    assert {d["priority"]: value(samples, "stageflow_plus_calls_waiting_by_priority", **d)
            for d in series(samples, "stageflow_plus_calls_waiting_by_priority")
            if d["limiter"] == "llm" and "priority" in d} == {"0": 1, "1": 2, "2": 1}
    by_tenant = {d["tenant"]: value(samples, "stageflow_plus_calls_waiting_by_tenant",
                                    tenant=d["tenant"])
                 for d in series(samples, "stageflow_plus_calls_waiting_by_tenant")}
    # acme is configured; one more tenant gets its own label; the rest are "other"
    assert by_tenant == {"acme": 1, "beta": 1, OTHER: 2}
    assert value(samples, "stageflow_plus_calls_rejected_total", reason="queue_full") == 1
    assert value(samples, "stageflow_plus_calls_admitted_total") == 2
    tokens = {"key": "rate:*:tokens:90000/60s", "dimension": "tokens"}
    requests = {"key": "rate:*:requests:600/60s", "dimension": "requests"}
    assert value(samples, "stageflow_plus_bucket_available", **tokens) == 48_000
    assert value(samples, "stageflow_plus_bucket_capacity", **requests) == 100
    assert value(samples, "stageflow_plus_bucket_paused_seconds", **requests) == 30
    assert value(samples, "stageflow_plus_pool_in_use", key="global:*") == 2
    assert value(samples, "stageflow_plus_pool_capacity", key="global:*") == 2
    assert value(samples, "stageflow_plus_provider_pauses_total", key=key) == 1
    assert value(samples, "stageflow_plus_limit_changes_total", key="concurrency:global",
                 reason="manual") == 1
    assert value(samples, "stageflow_plus_limit", key="concurrency:global") == 3
    # the two immediate admissions: a zero wait, in the le="0.0" bucket
    assert value(samples, "stageflow_plus_wait_seconds_bucket", priority="0", le="0.0") == 2
    assert value(samples, "stageflow_plus_wait_seconds_count", priority="0") == 2

    clock.advance(30.0)  # the pause ends
    held.set()
    await asyncio.gather(*running, *queued)
    samples = await endpoint.scrape()
    assert value(samples, "stageflow_plus_calls_in_flight") == 0
    assert value(samples, "stageflow_plus_calls_waiting") == 0
    assert value(samples, "stageflow_plus_calls_admitted_total") == 6
    waited = sum(value(samples, "stageflow_plus_wait_seconds_count", priority=p)
                 for p in ("0", "1", "2"))
    assert waited == 6


async def test_hostile_tenants_and_keys_cannot_grow_the_registry(
    registry: CollectorRegistry, endpoint: Endpoint, held: asyncio.Event,
) -> None:
    rate = TokenBucketRateLimiter(Rate(1000, per=1, burst=1000), key="tenant")
    chain = ToolCallChain([PriorityFairQueue(), rate, ConcurrencyLimiter(1)], name="llm")
    PrometheusMetrics(registry, max_tenants=3, max_keys=5, max_priorities=2).attach(chain)

    async def hold(call: ToolCall) -> None:
        await held.wait()

    tasks = [asyncio.ensure_future(chain.run(ToolCall("t", tenant=f"evil-{i}", priority=i),
                                             hold)) for i in range(300)]
    await settle()
    samples = await endpoint.scrape()
    assert len(samples) < 120  # 300 tenants, 300 buckets, 300 priorities: bounded series
    assert len(series(samples, "stageflow_plus_calls_waiting_by_tenant")) == 4
    # 5 keys in all (the pool "global:*" took one), then "other"
    assert len(series(samples, "stageflow_plus_bucket_available")) == 5
    # priorities "0" (admitted at once) and "1" took the 2 slots: "1" and "other" wait
    assert len(series(samples, "stageflow_plus_calls_waiting_by_priority")) == 2
    assert value(samples, "stageflow_plus_calls_waiting_by_tenant", tenant=OTHER) == 296
    held.set()
    await asyncio.gather(*tasks)


async def test_two_chains_share_a_collector_and_need_distinct_names(
    registry: CollectorRegistry, endpoint: Endpoint,
) -> None:
    metrics = PrometheusMetrics(registry)
    first = ToolCallChain([ConcurrencyLimiter(1)], name="llm")
    second = ToolCallChain([ConcurrencyLimiter(5)], name="search")
    metrics.attach(first)
    metrics.attach(second)
    with pytest.raises(ConfigError, match="a chain named 'llm' is attached already"):
        metrics.attach(ToolCallChain([ConcurrencyLimiter(1)], name="llm"))
    with pytest.raises(ConfigError, match="no limiter interceptors"):
        metrics.attach(ToolCallChain([]))
    with pytest.raises(ConfigError, match="measured already"):
        PrometheusMetrics(None).attach(first)  # a second collector would see no events

    async def ok(call: ToolCall) -> str:
        return "ok"

    await first.run(ToolCall("a"), ok)
    samples = await endpoint.scrape()
    assert value(samples, "stageflow_plus_calls_admitted_total") == 1
    assert samples[("stageflow_plus_pool_capacity",
                    frozenset({"limiter": "search", "key": "global:*"}.items()))] == 5


def test_label_budget_is_stable_and_bounded() -> None:
    budget = LabelBudget(["acme"], max_values=2)
    assert [budget(v) for v in ("x", "acme", "y", "z", "x", "y")] == [
        "x", "acme", "y", OTHER, "x", "y"]
    assert len(budget) == 3
    with pytest.raises(ConfigError, match="max_values"):
        LabelBudget(max_values=-1)


def test_a_scrape_without_a_running_loop_reads_directly(registry: CollectorRegistry) -> None:
    chain = ToolCallChain([ConcurrencyLimiter(3)], name="llm")
    PrometheusMetrics(registry).attach(chain)
    assert registry.get_sample_value("stageflow_plus_pool_capacity",
                                     {"limiter": "llm", "key": "global:*"}) == 3
