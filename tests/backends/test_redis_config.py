"""Choosing the backend by URL in the pipeline config: the same config, limits held in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stageflow_plus import (
    ConcurrencyLimiter,
    ConfigError,
    MemoryBackend,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    build,
)
from stageflow_plus.backends.limits import RedisLimits
from stageflow_plus.backends.redis import RedisBackend
from stageflow_plus.testing import ConcurrencyProbe

from .redis_helpers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def test_memory_is_the_default() -> None:
    built = build({"concurrency": {"limit": 3}, "rate": {"rates": {"limit": 5, "per": 1}}},
                  env={})
    assert isinstance(built.backend, MemoryBackend)
    kinds = [type(step) for step in built.chain.interceptors]
    assert kinds == [TokenBucketRateLimiter, ConcurrencyLimiter]


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"url": "redis://"}, "stageflow_plus.backend: redis:// needs a host"),
        ({"url": "http://127.0.0.1"}, "stageflow_plus.backend: unknown backend scheme"),
        ({"url": 6379}, "stageflow_plus.backend.url must be a string"),
        ({"url": "redis://127.0.0.1/0", "ttl": 0}, "stageflow_plus.backend: RedisBackend ttl"),
        ({"url": "redis://127.0.0.1/0", "policy": "open"}, "stageflow_plus.backend.policy"),
    ],
)
def test_bad_backend_config_names_the_entry(backend: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build({"backend": backend, "concurrency": {"limit": 2}}, env={})


def test_per_key_rates_have_no_redis_form_yet() -> None:
    config = {
        "backend": {"url": "redis://127.0.0.1:1/0"},
        "rate": {"rates": {"limit": 5, "per": 1}, "key": "tool",
                 "per_key_rates": {"a": {"limit": 1, "per": 1}}},
    }
    with pytest.raises(ConfigError, match=r"per_key_rates: not supported with a Redis backend"):
        build(config, env={})


async def test_two_processes_worth_of_chains_share_one_limit(
    redis_server: RedisServer, prefix: str
) -> None:
    """Two independently built pipelines (as two workers would) never exceed the limit together.

    The global limits live only in Redis (one queue for both); in process stays the
    uncapped per-run ConcurrencyLimiter.
    """
    config = {
        "backend": {"url": redis_server.url, "prefix": prefix, "ttl": 5},
        "concurrency": {"limit": 3},
        "rate": {"rates": [{"limit": 1000, "per": 1}], "key": "global"},
    }
    workers = [build(config, env={}), build(config, env={})]
    for built in workers:
        assert isinstance(built.backend, RedisBackend)
        assert [type(s) for s in built.chain.interceptors] == [ConcurrencyLimiter, RedisLimits]
    probe = ConcurrencyProbe()

    async def work() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    async def tool(call: ToolCall) -> Any:
        return await probe.run("all", work)

    try:
        results = await asyncio.gather(*[
            workers[i % 2].chain.run(ToolCall(tool="t", run_id=f"r{i}"), tool) for i in range(24)
        ])
    finally:
        for built in workers:
            await built.aclose()
    assert results == ["ok"] * 24
    assert probe.max_in_flight == 3
    assert sum(w.backend.statistics().acquired for w in workers  # type: ignore[attr-defined]
               ) == 24


def test_backend_url_from_the_environment(redis_server: RedisServer) -> None:
    built = build({"concurrency": {"limit": 2}},
                  env={"STAGEFLOW_PLUS_BACKEND": redis_server.url})
    assert isinstance(built.backend, RedisBackend)
    assert built.config["backend"] == {"url": redis_server.url}


def test_the_config_and_backend_limits_build_the_same_chain(redis_server: RedisServer) -> None:
    """build() delegates to RedisBackend.limits(): the same steps either way."""
    built = build({"backend": {"url": redis_server.url},
                   "rate": {"rates": {"limit": 10, "per": 1}}}, env={})
    assert isinstance(built.backend, RedisBackend)
    by_hand = built.backend.limits(rates=Rate(10, per=1))
    assert [type(s) for s in built.chain.interceptors] == [type(s) for s in by_hand] == [
        ConcurrencyLimiter, RedisLimits]
