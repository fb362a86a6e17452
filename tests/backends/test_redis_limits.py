"""Global permits in a real Redis: GCRA math, all-or-nothing, refunds, pauses, policies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from stageflow_plus.backends import BackendUnavailable, MemoryBackend, backend_from_url
from stageflow_plus.backends.limits import RedisLimits
from stageflow_plus.backends.redis import GlobalBucket, GlobalPool, RedisBackend
from stageflow_plus.interceptors import ConcurrencyLimiter, ToolCall, ToolCallChain
from stageflow_plus.primitives import (
    ConfigError,
    CostTooLarge,
    DeadlineUnmeetable,
    Rate,
    WaitTimeout,
)

from .redis_helpers import RedisServer, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def backend(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(redis_server.url, prefix=prefix, ttl=2.0)
    try:
        yield b
    finally:
        await b.aclose()


def _bucket(key: str, rate: float, burst: float, amount: float) -> GlobalBucket:
    return GlobalBucket(key, rate, burst, amount)


async def test_gcra_burst_then_rate(backend: RedisBackend) -> None:
    bucket = _bucket("r:requests", rate=10.0, burst=5.0, amount=1.0)
    grants = [await backend.try_acquire([], [bucket]) for _ in range(5)]
    assert all(g.granted for g, _ in grants)
    grant, lease = await backend.try_acquire([], [bucket])
    assert not grant.granted and lease is None
    assert grant.reason == "rate" and grant.key.endswith("gcra:r:requests")
    assert 0.05 < grant.wait <= 0.1 + 1e-6  # one emission interval, minus elapsed time
    await asyncio.sleep(grant.wait + 0.01)
    assert (await backend.try_acquire([], [bucket]))[0].granted


async def test_all_or_nothing_across_two_buckets(backend: RedisBackend) -> None:
    def buckets(tokens: float) -> list[GlobalBucket]:
        return [_bucket("k:requests", 0.01, 2.0, 1.0), _bucket("k:tokens", 0.01, 100.0, tokens)]

    assert (await backend.try_acquire([], buckets(80)))[0].granted
    refused, _ = await backend.try_acquire([], buckets(50))
    assert not refused.granted and refused.reason == "rate" and "tokens" in refused.key
    # the refused call took no request: one request is still there
    assert (await backend.try_acquire([], buckets(10)))[0].granted
    no_requests, _ = await backend.try_acquire([], buckets(0))
    assert not no_requests.granted and "requests" in no_requests.key


async def test_refund_and_charge_in_the_release(backend: RedisBackend) -> None:
    def tokens(n: float) -> list[GlobalBucket]:
        return [_bucket("c:tokens", 0.01, 100.0, n)]

    _, lease = await backend.try_acquire([], tokens(80))
    assert lease is not None
    assert not (await backend.try_acquire([], tokens(85)))[0].granted
    await lease.release({"tokens": 10})  # used 10 of the 80 estimated: 70 come back
    _, second = await backend.try_acquire([], tokens(85))
    assert second is not None
    await second.release({"tokens": 185})  # used 100 more than estimated: debt
    debt, _ = await backend.try_acquire([], tokens(0))
    assert not debt.granted and debt.wait > 1000  # at 0.01 tokens/s


async def test_concurrency_leases_release_and_one_round_trip(backend: RedisBackend) -> None:
    pools = [GlobalPool("global:*", 2)]
    before = backend.statistics().round_trips
    held = [(await backend.try_acquire(pools, []))[1] for _ in range(2)]
    assert backend.statistics().round_trips - before == 2  # one round trip per acquire
    grant, _ = await backend.try_acquire(pools, [])
    assert not grant.granted and grant.reason == "concurrency"
    assert 0 < grant.wait <= backend.ttl  # upper bound: the earliest lease expiry
    lease = held[0]
    assert lease is not None
    await lease.release()
    await lease.release()  # idempotent
    assert (await backend.try_acquire(pools, []))[0].granted
    stats = backend.statistics()
    assert stats.acquired == 3 and stats.refused == 1 and stats.acquire_latency.samples == 4


async def test_expired_leases_are_purged_by_the_script(
    redis_server: RedisServer, prefix: str
) -> None:
    crashed = RedisBackend(redis_server.url, prefix=prefix, ttl=1.5)
    other = RedisBackend(redis_server.url, prefix=prefix, ttl=1.5)
    try:
        _, lease = await crashed.try_acquire([GlobalPool("global:*", 1)], [])
        assert lease is not None
        await crashed.aclose()  # no heartbeat from now on: like a crash
        assert not (await other.try_acquire([GlobalPool("global:*", 1)], []))[0].granted
        await asyncio.sleep(1.6)
        assert (await other.try_acquire([GlobalPool("global:*", 1)], []))[0].granted
    finally:
        await other.aclose()


async def test_heartbeat_keeps_long_calls_leased(redis_server: RedisServer, prefix: str) -> None:
    holder = RedisBackend(redis_server.url, prefix=prefix, ttl=1.5)
    other = RedisBackend(redis_server.url, prefix=prefix, ttl=1.5)
    try:
        _, lease = await holder.try_acquire([GlobalPool("global:*", 1)], [])
        assert lease is not None
        await asyncio.sleep(3.5)  # well past the TTL: the heartbeat extended it
        assert not (await other.try_acquire([GlobalPool("global:*", 1)], []))[0].granted
        await lease.release()
        assert (await other.try_acquire([GlobalPool("global:*", 1)], []))[0].granted
        assert holder.statistics().lost_leases == 0
    finally:
        await holder.aclose()
        await other.aclose()


async def test_pause_is_seen_by_every_process(redis_server: RedisServer, prefix: str) -> None:
    one = RedisBackend(redis_server.url, prefix=prefix)
    two = RedisBackend(redis_server.url, prefix=prefix)
    rate = [_bucket("p:requests", 100.0, 10.0, 1.0)]
    try:
        assert await one.pause("rate:openai", 0.3) == pytest.approx(0.3)
        assert await one.pause("rate:openai", 0.1) > 0.2  # the later pause is kept
        grant, _ = await two.try_acquire([], rate, ["rate:openai"])
        assert not grant.granted and grant.reason == "paused" and 0.1 < grant.wait <= 0.3
        await asyncio.sleep(grant.wait + 0.01)
        assert (await two.try_acquire([], rate, ["rate:openai"]))[0].granted
    finally:
        await one.aclose()
        await two.aclose()


# -- the interceptor --------------------------------------------------------------------


async def _ok(call: ToolCall) -> str:
    await asyncio.sleep(0.01)
    return "ok"


def _chain(limits: RedisLimits, local: int = 8) -> ToolCallChain:
    return ToolCallChain([ConcurrencyLimiter(local), limits])


async def test_interceptor_rate_deadline_and_retry_after(backend: RedisBackend) -> None:
    limits = RedisLimits(backend, rates=[Rate(2, per=1, burst=1)])
    chain = _chain(limits)
    assert await chain.run(ToolCall("t"), _ok) == "ok"
    with pytest.raises(DeadlineUnmeetable) as info:
        await chain.run(ToolCall("t", deadline=chain.now() + 0.05), _ok)
    assert info.value.retry_after is not None and 0.3 < info.value.retry_after <= 0.5
    # without a deadline the call waits for its slot, then runs
    assert await chain.run(ToolCall("t"), _ok) == "ok"

    async def rate_limited(call: ToolCall) -> dict[str, Any]:
        return {"retry_after": 0.4}

    await chain.run(ToolCall("t"), rate_limited)  # a 429 answer: pauses the key everywhere
    grant, _ = await backend.try_acquire([], [], ["rate:*"])
    assert grant.reason == "paused"


async def test_interceptor_cost_too_large_and_concurrency_timeout(backend: RedisBackend) -> None:
    limits = RedisLimits(backend, concurrency=1,
                         rates=[Rate(1000, per=1, burst=100, dimension="tokens")])
    chain = _chain(limits)
    with pytest.raises(CostTooLarge):
        await chain.run(ToolCall("t", cost={"tokens": 101}), _ok)
    release = asyncio.Event()

    async def hold(call: ToolCall) -> str:
        await release.wait()
        return "held"

    holder = asyncio.create_task(chain.run(ToolCall("t"), hold))
    await asyncio.sleep(0.05)
    with pytest.raises(WaitTimeout):
        await chain.run(ToolCall("t", deadline=chain.now() + 0.1), _ok)
    release.set()
    assert await holder == "held"
    assert await chain.run(ToolCall("t", deadline=chain.now() + 1), _ok) == "ok"


async def test_cancelled_waiters_take_nothing(backend: RedisBackend) -> None:
    limits = RedisLimits(backend, concurrency=1)
    chain = _chain(limits)
    gate = asyncio.Event()

    async def hold(call: ToolCall) -> str:
        await gate.wait()
        return "held"

    holder = asyncio.create_task(chain.run(ToolCall("t"), hold))
    await asyncio.sleep(0.05)
    waiters = [asyncio.create_task(chain.run(ToolCall("t"), _ok)) for _ in range(3)]
    await asyncio.sleep(0.05)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    gate.set()
    await holder
    await asyncio.sleep(0.05)  # background releases
    zset = backend.pool_key("global:*")
    assert await backend.client.zcard(zset) == 0


async def test_per_tool_caps_are_separate_pools(backend: RedisBackend) -> None:
    limits = RedisLimits(backend, per_tool={"search": 1}, per_tenant=5)
    pools, buckets, pauses = limits.spec(ToolCall("search", tenant="acme"))
    assert pools == [GlobalPool("tool:search", 1), GlobalPool("tenant:acme", 5)]
    assert not buckets and not pauses
    held = await limits.acquire(ToolCall("search"))
    with pytest.raises(WaitTimeout):
        await limits.acquire(ToolCall("search", deadline=asyncio.get_running_loop().time() + 0.05))
    other = await limits.acquire(ToolCall("fetch"))  # not capped per tool
    await other.release()
    await held.release()
    assert (await limits.acquire(ToolCall("search"))).pools == (backend.pool_key("tool:search"),
                                                                backend.pool_key("tenant:default"))


# -- Redis unavailable ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_unreachable_redis_follows_the_policy(policy: str) -> None:
    backend = backend_from_url(f"redis://127.0.0.1:{free_port()}/0", on_unavailable=policy,
                               op_timeout=0.5)
    assert isinstance(backend, RedisBackend)
    chain = ToolCallChain(backend.limits(concurrency=2, rates=Rate(10, per=1)))
    try:
        async with asyncio.timeout(5):
            for _ in range(3):
                if policy == "fail_open":
                    assert await chain.run(ToolCall("t"), _ok) == "ok"
                else:
                    with pytest.raises(BackendUnavailable, match="unavailable") as info:
                        await chain.run(ToolCall("t"), _ok)
                    assert info.value.retry_after == backend.recheck_s
        stats = backend.statistics()
        assert stats.unavailable == 1  # then the backend waits recheck_s before trying again
        if policy == "fail_open":
            assert stats.failed_open == 3 and stats.failed_closed == 0
        else:
            assert stats.failed_closed == 3 and stats.failed_open == 0
    finally:
        await backend.aclose()


def _raiser(error: BaseException) -> Callable[..., Awaitable[Any]]:
    async def script(**kwargs: Any) -> Any:
        raise error

    return script


@pytest.mark.parametrize(
    "error",
    [ConnectionError("refused"), TimeoutError("slow"), BusyLoadingError("loading"),
     ResponseError("ERR script"), RedisError("other"), OSError("socket")],
)
async def test_every_redis_error_is_translated_at_one_boundary(error: BaseException) -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    backend._scripts["tick"] = _raiser(error)
    try:
        with pytest.raises(BackendUnavailable) as info:
            await backend._run("tick", [], [])
        # the cause is described (redacted), not chained: its text could quote the URL
        assert type(error).__name__ in str(info.value) and info.value.sent
        assert info.value.__cause__ is None
        with pytest.raises(BackendUnavailable, match="retrying in"):
            await backend._run("tick", [], [])  # inside recheck_s: no new attempt
    finally:
        await backend.aclose()


# -- configuration ----------------------------------------------------------------------


def test_backend_from_url_validates() -> None:
    assert isinstance(backend_from_url("memory://"), MemoryBackend)
    assert isinstance(backend_from_url(), MemoryBackend)
    for bad, message in [
        ("mysql://x", "unknown backend scheme"),
        ("localhost:6379", "must look like"),
        ("redis://", "needs a host"),
        ("redis://h:99999/0", "port"),
        ("redis://h:6379/zero", "must be a number"),
        ("memory://host", "takes no host"),
    ]:
        with pytest.raises(ConfigError, match=message):
            backend_from_url(bad)
    with pytest.raises(ConfigError, match="unknown option"):
        backend_from_url("redis://h/0", ttl_s=3)
    with pytest.raises(ConfigError, match="on_unavailable"):
        backend_from_url("redis://h/0", on_unavailable="maybe")
    for name, value in [("max_pause", float("inf")), ("max_pause", -1.0),
                        ("max_pause", float("nan")), ("aging_interval", 0),
                        ("weights", {"a": 0})]:
        with pytest.raises(ConfigError, match=name):
            backend_from_url("redis://h/0", **{name: value})
    with pytest.raises(ConfigError, match="ttl"):
        backend_from_url("redis://h/0", ttl=0)
    with pytest.raises(ConfigError, match="takes no options"):
        backend_from_url("memory://", ttl=1)
    with pytest.raises(ConfigError, match="rate_key"):
        RedisLimits(RedisBackend("redis://h/0"), rate_key="model")
    with pytest.raises(ConfigError, match="concurrency"):
        RedisLimits(RedisBackend("redis://h/0"), concurrency=0)


async def test_memory_backend_builds_the_same_chain() -> None:
    chain = ToolCallChain(MemoryBackend().limits(concurrency=2, rates=Rate(100, per=1)))
    assert chain.gate is not None and len(chain.gate.parts) == 3  # + the chain's ProviderPause
    assert await chain.run(ToolCall("t"), _ok) == "ok"


def test_lua_library_ships_inside_the_package() -> None:
    from importlib import resources

    from stageflow_plus.backends.scripts import ENTRIES, LIBRARY_NAME, eval_source

    lua = resources.files("stageflow_plus.backends").joinpath("lua")
    source = lua.joinpath("library.lua").read_text("utf-8")
    for entry in ENTRIES:  # every entry point is registered, and runs as EVAL too
        assert f"redis.register_function('@LIB@_{entry}', {entry})" in source
        assert eval_source(entry).endswith(f"return {entry}(KEYS, ARGV)\n")
        assert "register_function" not in eval_source(entry)
    assert LIBRARY_NAME.startswith("sfp_") and len(LIBRARY_NAME) == 16


def test_distributed_bench_table_and_validation() -> None:
    from stageflow_plus.bench.distributed import (
        _report,
        format_distributed_table,
        run_distributed_bench,
    )

    with pytest.raises(ConfigError):
        run_distributed_bench(processes=2, backend_url="mysql://x", quick=True)
    with pytest.raises(ValueError):
        run_distributed_bench(processes=0, backend_url=None, quick=True)
    row = {"completed": 10, "http_429": 0, "efficiency": 0.98, "per_process_completed": [9, 1],
           "acquire_tries_per_grant": [1.0, 2.0]}
    extra = {
        "acquire": {"pair_p50_us": 400.0, "pair_p99_us": 900.0, "acquire_p50_us": 200.0,
                    "ping_p50_us": 90.0, "ping_p99_us": 300.0,
                    "redis_cpu_us_per_call": {"fcall": 30.0}},
        "wake_up": {"p50_us": 300.0, "p99_us": 800.0, "samples": 10},
        "fairness": {"processes": 2, "completed": {"heavy": 5, "light": 5}, "jain": 1.0},
        "priority": {"processes": 2, "high_over_low_p99": 0.2, "by_priority": {
            "0": {"p50_ms": 10.0, "p99_ms": 20.0, "calls": 5},
            "3": {"p50_ms": 1.0, "p99_ms": 4.0, "calls": 5}}},
    }
    result = _report(2, 3.0, {"shared": row, "per_process": row, "split": row}, extra)
    targets = result["targets"]
    assert targets["global_efficiency"]["met"] and targets["global_fairness"]["met"]
    assert not targets["global_priority"]["met"] and not targets["redis_acquire_p50"]["met"]
    assert targets["release_to_wake_p99"]["met"]
    table = format_distributed_table(result)
    assert "global_fairness=met" in table and "global_priority=MISSED" in table
    assert "Jain 1.0000" in table and "PING round trip p50 90 us" in table


# -- found in review: reconciliation, precision, releases after a failure ----------------


async def test_actual_cost_is_reconciled_and_a_failing_estimator_leaks_nothing(
    backend: RedisBackend,
) -> None:
    used = {"tokens": 900}
    limits = RedisLimits(backend, concurrency=1,
                         rates=[Rate(1000, per=1, burst=1000, dimension="tokens")],
                         actual_cost=lambda result: result["usage"])

    async def llm(call: ToolCall) -> dict[str, Any]:
        return {"usage": dict(used)}

    chain = _chain(limits)
    await chain.run(ToolCall("llm", cost={"tokens": 100}), llm)  # estimated 100, used 900
    grant, _ = await backend.try_acquire([], [GlobalBucket(
        limits.spec(ToolCall("llm", cost={"tokens": 200}))[1][0].key, 1000.0, 1000.0, 200.0)])
    assert not grant.granted and grant.reason == "rate"  # ~100 left: the debt is seen

    async def broken(call: ToolCall) -> dict[str, Any]:
        return {}  # no "usage": actual_cost raises KeyError after a successful call

    # issue 11.3 on Redis too: the result is kept, the estimate stands, the failure counted
    assert await chain.run(ToolCall("llm", cost={"tokens": 1}, deadline=chain.now() + 5),
                           broken) == {}
    assert limits.observer_errors == 1
    await limits.aclose()  # the release runs in the background: wait for it
    assert await backend.client.zcard(backend.pool_key("global:*")) == 0
    assert backend.statistics().held == 0


@pytest.mark.parametrize("usage", [float("inf"), float("nan"), -5.0, "900", 1e300, True])
async def test_junk_actual_costs_keep_the_result_and_every_caller_s_backend(
    backend: RedisBackend, usage: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 11.2 on Redis: a junk usage value never reaches a Lua script (an ``inf`` there
    failed the script, and ``fail_closed`` then refused every caller of the backend)."""
    limits = RedisLimits(backend, concurrency=2,
                         rates=[Rate(1000, per=1, burst=1000, dimension="tokens")],
                         actual_cost=lambda result: result["usage"])
    chain = _chain(limits)

    async def llm(call: ToolCall) -> dict[str, Any]:
        return {"usage": {"tokens": usage}}

    with caplog.at_level(logging.WARNING, logger="stageflow_plus.redis"):
        for _ in range(3):
            assert await chain.run(ToolCall("llm", cost={"tokens": 10}), llm) == {
                "usage": {"tokens": usage}}
    assert limits.observer_errors == 3
    failures = [r for r in caplog.records if "observer_failed" in r.getMessage()]
    assert len(failures) == 1  # aggregated: the first at once, the rest counted
    assert backend.statistics().unavailable == 0  # no script failed, nobody refused

    async def fine(call: ToolCall) -> dict[str, Any]:
        return {"usage": {"tokens": 5}}

    assert await chain.run(ToolCall("llm", cost={"tokens": 10}), fine)  # still usable
    await limits.aclose()
    assert await backend.client.zcard(backend.pool_key("global:*")) == 0


async def test_gcra_keeps_sub_millisecond_steps(backend: RedisBackend) -> None:
    """At 25 000/s one request moves the arrival time by 0.04 ms; stored with Lua's
    ``tostring`` (14 digits, ~0.1 ms at today's epoch) the step was lost and nothing was
    limited. Checked on the stored value, not by timing round trips."""
    key = backend.bucket_key("fast:requests")
    seconds, micros = await backend.client.time()
    tat = seconds * 1000 + micros / 1000 + 500.0  # half a second of backlog
    await backend.client.set(key, f"{tat:.6f}", px=5000)
    grant, _ = await backend.try_acquire([], [GlobalBucket("fast:requests", 25_000.0,
                                                           20_000.0, 1.0)])
    assert grant.granted
    raw = await backend.client.get(key)
    assert raw is not None
    stored = float(raw)
    assert stored - tat == pytest.approx(0.04, abs=1e-4)


async def test_releases_are_tried_even_right_after_a_failure(backend: RedisBackend) -> None:
    _, lease = await backend.try_acquire([GlobalPool("global:*", 1)], [])
    assert lease is not None
    real = backend._scripts["tick"]
    backend._scripts["tick"] = _raiser(ConnectionError("blip"))
    with pytest.raises(BackendUnavailable):
        await backend._run("tick", [], [])  # one failed command
    backend._scripts["tick"] = real
    await lease.release()  # within recheck_s: still sent
    assert await backend.client.zcard(backend.pool_key("global:*")) == 0


def test_op_timeout_must_stay_below_the_heartbeat_period() -> None:
    with pytest.raises(ConfigError, match="below ttl/3"):
        RedisBackend("redis://127.0.0.1:1/0", ttl=1.0, op_timeout=0.5)
    assert RedisBackend("redis://127.0.0.1:1/0", ttl=0.3).op_timeout == pytest.approx(0.075)


async def test_same_priority_waiters_are_served_in_arrival_order(
    backend: RedisBackend,
) -> None:
    limits = RedisLimits(backend, concurrency=1)
    held = await limits.acquire(ToolCall("t"))
    order: list[str] = []

    async def take(name: str) -> None:
        lease = await limits.acquire(ToolCall("t", deadline=asyncio.get_running_loop().time() + 5))
        order.append(name)
        await lease.release()

    first = asyncio.create_task(take("first"))
    await asyncio.sleep(0.02)  # "first" waits in the global queue now
    await held.release()  # its dispatch pass grants "first" and pushes the grant
    second = asyncio.create_task(take("second"))  # arrives as the permit frees: no barging
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert backend.statistics().woken >= 1


def test_commands_reuse_the_encoding_of_repeated_arguments_only() -> None:
    from stageflow_plus.backends.resp import encode
    from stageflow_plus.backends.scripts import LIBRARY_NAME, Library, Plan

    library = Library()
    plan = Plan(prefix="{p}:", aging_ms="", process="proc", ttl_ms=10_000,
                pools=[GlobalPool("global:*", 4)], buckets=[_bucket("r", 10.0, 5.0, 1.0)],
                pauses=[])

    def plain(entry: str, args: list[str | int]) -> bytes:
        return encode(["FCALL", f"{LIBRARY_NAME}_{entry}", "1", plan.queue_key, plan.text,
                       *args])

    calls: list[tuple[str, list[str | int]]] = [
        ("acquire", ["proc:1", "wait", "t", "1.0", "", 0, "1.0"]),
        ("acquire", ["proc:2", "wait", "t", "1.0", "", 0, "1.0"]),  # only the id differs
        ("release", ["proc:1", "0", "0"]),
        ("acquire", ["proc:3", "wait", "u", "2.0", "5.0", 3, "4.0"]),  # all differ
        ("acquire", ["proc:4", "wait", "u", "2.0", "5.0", "3", "4.0"]),  # 3 != "3"
        ("release", ["proc:2", "1", "-0.5"]),
        ("acquire", ["proc:5", "try", "t", "1.0", "", 0, "1.0"]),
    ]
    for entry, args in calls:
        assert library.command(entry, plan, args) == plain(entry, args), (entry, args)


async def test_a_retry_after_callback_that_raises_never_replaces_the_outcome(
    backend: RedisBackend, caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(outcome: Any) -> float | None:
        raise KeyError("retry-after")  # a user's finder with a bug

    limits = RedisLimits(backend, concurrency=2, rates=[Rate(1000, per=1)],
                         retry_after=broken)
    chain = _chain(limits)

    class ToolBroke(Exception):
        pass

    async def llm(call: ToolCall) -> dict[str, Any]:
        return {"status": 429, "retry_after": 5}

    async def failing(call: ToolCall) -> dict[str, Any]:
        raise ToolBroke("the tool's own error")

    with caplog.at_level(logging.WARNING, logger="stageflow_plus.redis"):
        assert await chain.run(ToolCall("llm"), llm) == {"status": 429, "retry_after": 5}
        with pytest.raises(ToolBroke):
            await chain.run(ToolCall("llm"), failing)
    assert limits.observer_errors == 2
    failures = [r.getMessage() for r in caplog.records if "observer_failed" in r.getMessage()]
    assert len(failures) == 1 and "retry_after raised" in failures[0]
    assert await backend.client.exists(f"{backend.prefix}pause:rate:*") == 0  # nothing paused
    await limits.aclose()
    assert await backend.client.zcard(backend.pool_key("global:*")) == 0
