"""The capacity model: queueing past capacity, 429/503 on overload, capacity over time — on
virtual time, and over real HTTP through the provider simulator."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from stageflow_plus import default_is_drop
from stageflow_plus.bench.capacity import CapacityModel, CapacityPhase, CapacityProfile
from stageflow_plus.bench.provider import ProviderLimits, ProviderSimulator
from stageflow_plus.testing import run_virtual


def model(*phases: tuple[float, int], latency_ms: float = 100.0,
          **options: object) -> CapacityModel:
    return CapacityModel(CapacityProfile(
        tuple(CapacityPhase(at, cap, latency_ms) for at, cap in phases),
        jitter=0.0, **options))  # type: ignore[arg-type]


async def timed(m: CapacityModel) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, _, _ = await m.serve()
    return status, round(loop.time() - start, 6)


def test_latency_grows_with_load_past_capacity() -> None:
    async def main() -> list[tuple[int, float]]:
        m = model((0.0, 4), queue_factor=2.0)
        m.start()
        return list(await asyncio.gather(*(timed(m) for _ in range(12))))

    results = run_virtual(main())
    assert sorted(results) == [(200, 0.1)] * 4 + [(200, 0.2)] * 4 + [(200, 0.3)] * 4


def test_a_full_queue_answers_429_at_once_with_retry_after() -> None:
    async def main() -> tuple[list[tuple[int, float]], dict[str, str], dict[str, int]]:
        m = model((0.0, 2), queue_factor=1.0, retry_after_s=0.25)
        m.start()
        results = await asyncio.gather(*(timed(m) for _ in range(6)))
        m2 = model((0.0, 1), queue_factor=0.0, retry_after_s=0.25)
        m2.start()
        first = asyncio.ensure_future(m2.serve())
        await asyncio.sleep(0)
        _, headers, _ = await m2.serve()
        await first
        return list(results), headers, m.counters

    results, headers, counters = run_virtual(main())
    assert sorted(results) == [(200, 0.1)] * 2 + [(200, 0.2)] * 2 + [(429, 0.0)] * 2
    assert headers == {"retry-after": "0.250", "retry-after-ms": "250"}
    assert counters["http_429"] == 2 and counters["max_queued"] == 2


def test_capacity_halves_then_doubles_on_schedule() -> None:
    async def main() -> list[tuple[int, float]]:
        m = model((0.0, 4), (1.0, 2), (2.0, 4), queue_factor=1.0)
        m.start()
        await asyncio.sleep(0.95)
        # at 0.95: 4 start now and end at 1.05; 4 queue. At 1.0 the capacity halves: the
        # queue bound becomes 2, so the 2 newest queued get 503 at once
        batch = await asyncio.gather(*(timed(m) for _ in range(8)))
        return list(batch)

    results = run_virtual(main())
    assert sorted(results) == sorted(
        [(503, 0.05)] * 2 + [(200, 0.1)] * 4 + [(200, 0.2)] * 2  # 2 queued start at 1.05
    )


def test_capacity_raised_admits_the_queue_at_the_change() -> None:
    async def main() -> list[tuple[int, float]]:
        m = model((0.0, 1), (0.5, 3), queue_factor=4.0, latency_ms=1000.0)
        m.start()
        return list(await asyncio.gather(*(timed(m) for _ in range(3))))

    # one served from 0 to 1; the two queued start at 0.5, when the capacity rises to 3
    assert sorted(run_virtual(main())) == [(200, 1.0), (200, 1.5), (200, 1.5)]


def test_a_request_queued_too_long_gets_503_and_a_cancelled_one_leaves_the_queue() -> None:
    async def main() -> tuple[list[tuple[int, float]], int, int]:
        m = model((0.0, 1), queue_factor=5.0, queue_timeout_s=0.15)
        m.start()
        results = await asyncio.gather(*(timed(m) for _ in range(3)))
        cancelled = asyncio.ensure_future(m.serve())
        holder = asyncio.ensure_future(m.serve())
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.sleep(0)
        queued_after_cancel = m.queued()
        await holder
        return list(results), queued_after_cancel, m.in_service

    results, queued, in_service = run_virtual(main())
    assert sorted(results) == [(200, 0.1), (200, 0.2), (503, 0.15)]
    assert queued <= 1 and in_service == 0


def test_profiles_are_validated() -> None:
    with pytest.raises(ValueError, match="first at 0"):
        CapacityProfile((CapacityPhase(1.0, 2, 10.0),))
    with pytest.raises(ValueError, match="increasing"):
        CapacityProfile((CapacityPhase(0.0, 2, 10.0), CapacityPhase(0.0, 3, 10.0)))
    with pytest.raises(ValueError, match="capacity >= 1"):
        CapacityPhase(0.0, 0, 10.0)
    with pytest.raises(ValueError, match="jitter"):
        CapacityProfile.steady(2, 10.0, jitter=1.5)
    with pytest.raises(ValueError, match="queue_timeout_s"):
        CapacityProfile.steady(2, 10.0, queue_timeout_s=0)


@pytest.mark.anyio
async def test_the_provider_simulator_answers_through_the_model_over_http() -> None:
    limits = ProviderLimits(rpm=1e9, tpm=1e12, max_concurrent=1_000, latency_ms=1.0)
    capacity = CapacityModel(CapacityProfile.steady(2, 50.0, queue_factor=0.5,
                                                    retry_after_s=0.3))
    async with ProviderSimulator(limits, model=capacity) as sim, httpx.AsyncClient() as client:
        capacity.start()
        answers = await asyncio.gather(*(client.post(sim.url + "/v1/call", json={"tokens": 7})
                                         for _ in range(4)))
        stats = (await client.get(sim.url + "/stats")).json()
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 200, 429]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "0.300" and default_is_drop(refused)
    assert next(a for a in answers if a.status_code == 200).json() == {"tokens": 7}
    assert stats["model"]["http_429"] == 1 and stats["model"]["ok"] == 3
