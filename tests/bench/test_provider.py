"""The loopback provider enforces its limits over real HTTP and says so in its headers."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from stageflow_plus.bench.provider import ProviderLimits, ProviderSimulator, format_duration

pytestmark = pytest.mark.anyio


async def _call(client: httpx.AsyncClient, url: str, tokens: int = 10) -> httpx.Response:
    return await client.post(f"{url}/v1/call", json={"tokens": tokens, "tenant": "t",
                                                     "priority": 0})


async def test_concurrency_cap_refuses_with_429_and_retry_after() -> None:
    limits = ProviderLimits(rpm=60_000, tpm=10_000_000, max_concurrent=2, latency_ms=300)
    async with ProviderSimulator(limits) as sim, httpx.AsyncClient() as client:
        responses = await asyncio.gather(*(_call(client, sim.url) for _ in range(5)))
        stats = (await client.get(f"{sim.url}/stats")).json()
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429, 429, 429]
    refused = [r for r in responses if r.status_code == 429]
    assert all(float(r.headers["retry-after"]) > 0 for r in refused)
    assert all(r.json()["error"]["reason"] == "concurrency" for r in refused)
    assert stats["max_concurrent_observed"] == 2
    assert stats["http_429_by_reason"]["concurrency"] == 3
    assert stats["requests"] == 5 and stats["ok"] == 2 and stats["tokens"] == 20


async def test_requests_per_minute_and_openai_style_headers() -> None:
    limits = ProviderLimits(rpm=120, tpm=1_000_000, max_concurrent=10, latency_ms=1)
    async with ProviderSimulator(limits) as sim, httpx.AsyncClient() as client:
        first = await _call(client, sim.url)
        second = await _call(client, sim.url)
        third = await _call(client, sim.url)
        stats = sim.stats()
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.json() == {"tokens": 10}
    assert first.headers["x-ratelimit-limit-requests"] == "120"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "1e+06"
    assert "x-ratelimit-reset-requests" in first.headers
    assert "x-ratelimit-remaining-tokens" in first.headers
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    # 2 requests/s: the next one fits in at most half a second
    assert 0 < float(third.headers["retry-after"]) <= 0.5
    assert int(third.headers["retry-after-ms"]) <= 500
    assert third.json()["error"]["reason"] == "requests"
    assert stats["http_429_by_reason"] == {"concurrency": 0, "requests": 1, "tokens": 0,
                                           "input_tokens": 0}


async def test_tokens_per_minute_and_oversized_calls() -> None:
    limits = ProviderLimits(rpm=60_000, tpm=60_000, max_concurrent=10, latency_ms=1)
    async with ProviderSimulator(limits) as sim, httpx.AsyncClient() as client:
        big = await _call(client, sim.url, tokens=800)  # bucket holds 1000 tokens
        refused = await _call(client, sim.url, tokens=300)
        small = await _call(client, sim.url, tokens=150)
        too_big = await _call(client, sim.url, tokens=5000)
        bad = await client.post(f"{sim.url}/v1/call", json={"tokens": "many"})
    assert big.status_code == 200 and small.status_code == 200
    assert refused.status_code == 429 and refused.json()["error"]["reason"] == "tokens"
    assert float(refused.headers["retry-after"]) == pytest.approx(0.1, abs=0.02)
    assert too_big.status_code == 400 and bad.status_code == 400
    assert sim.stats()["tokens"] == 950


def test_format_duration() -> None:
    assert format_duration(0.25) == "250ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(90.0) == "1m30s"


def test_limits_are_validated_and_give_the_tightest_throughput() -> None:
    limits = ProviderLimits(rpm=1800, tpm=1_200_000, max_concurrent=6, latency_ms=150)
    assert limits.max_calls_per_second(mean_tokens=500) == pytest.approx(30.0)
    assert limits.max_calls_per_second(mean_tokens=1000) == pytest.approx(20.0)
    assert ProviderLimits(6000, 1e9, 2, 100).max_calls_per_second(1) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        ProviderLimits(rpm=0, tpm=1, max_concurrent=1, latency_ms=1)
    with pytest.raises(ValueError):
        ProviderLimits(rpm=1, tpm=1, max_concurrent=1, latency_ms=1, latency_jitter_ms=2)


def test_subprocess_mode_prints_its_url_and_serves_stats() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stageflow_plus.bench.provider", "--port", "0", "--rpm", "600",
         "--tpm", "60000", "--max-concurrent", "3", "--latency-ms", "5"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        ok = httpx.post(f"{url}/v1/call", json={"tokens": 5, "tenant": "a", "priority": 1})
        assert ok.status_code == 200
        stats = httpx.get(f"{url}/stats").json()
        assert stats["requests"] == 1 and stats["limits"]["max_concurrent"] == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_openai_and_anthropic_shapes_usage_headers_and_reconciliation() -> None:
    limits = ProviderLimits(rpm=60_000, tpm=60_000, max_concurrent=10, latency_ms=1,
                            input_tpm=60_000)
    messages = [{"role": "user", "content": "x" * 40}]
    async with ProviderSimulator(limits, output_fraction=0.5) as sim, \
            httpx.AsyncClient() as client:
        chat = await client.post(f"{sim.url}/v1/chat/completions",
                                 json={"model": "m", "messages": messages, "max_tokens": 100})
        message = await client.post(f"{sim.url}/v1/messages",
                                    json={"model": "m", "messages": messages, "max_tokens": 100},
                                    headers={"x-simulator-output-tokens": "7"})
        bad = await client.post(f"{sim.url}/v1/messages", json={"messages": messages})
        stats = sim.stats()
    assert chat.status_code == 200 and message.status_code == 200 and bad.status_code == 400
    assert chat.json()["usage"] == {"prompt_tokens": 10, "completion_tokens": 50,
                                    "total_tokens": 60}
    assert chat.json()["object"] == "chat.completion"
    assert chat.headers["x-ratelimit-remaining-tokens"] == str(1000 - 110)  # not refunded
    usage = message.json()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (10, 7)
    assert message.headers["anthropic-ratelimit-output-tokens-limit"] == "60000"
    assert message.headers["anthropic-ratelimit-output-tokens-reset"].endswith("Z")
    assert stats["refunded_tokens"] == 93  # Anthropic reconciles its output tokens


async def test_quantised_windows_and_scripted_answers() -> None:
    limits = ProviderLimits(rpm=600, tpm=1e9, max_concurrent=100, latency_ms=1, quantum_s=1.0)
    async with ProviderSimulator(limits) as sim, httpx.AsyncClient() as client:
        sim.script(429, {"retry-after": "7"}, {"error": {"type": "scripted"}})
        scripted = await _call(client, sim.url)
        codes = [(await _call(client, sim.url)).status_code for _ in range(12)]
    assert scripted.status_code == 429 and scripted.headers["retry-after"] == "7"
    assert sim.counters["scripted"] == 1
    assert codes.count(200) in (10, 11, 12) and codes.count(429) >= 0  # 10 per window
    assert codes[:10] == [200] * 10 or codes.count(200) > 10  # a window edge may pass
