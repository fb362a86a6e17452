"""A strict LLM-style provider on loopback: real HTTP, real 429s, OpenAI-style headers.

:class:`ProviderSimulator` is an aiohttp server enforcing three limits at once — calls in
flight, requests per minute and tokens per minute — the way hosted model APIs do: a request
that would exceed any of them is *refused* with ``429 Too Many Requests`` (never queued), with
``Retry-After`` and ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers. An
admitted request sleeps one latency sample and answers ``200 {"tokens": used}``.

Accounting is a token bucket per dimension refilling at ``rpm / 60`` (``tpm / 60``) per
second and holding ``burst_s`` seconds' worth (a minute's quota is not available at once, as
with providers that also enforce shorter windows). ``Retry-After`` is in seconds with
millisecond precision (``"0.125"``), since the benchmark's waits are sub-second;
``retry-after-ms`` carries the same value in milliseconds.

Counters live server-side (``GET /stats``), so several client processes can share one
provider::

    python -m stageflow_plus.bench.provider --port 8811 --rpm 1200 --tpm 600000 \\
        --max-concurrent 8 --latency-ms 100

prints the URL on stdout once listening and serves until interrupted.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import sys
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from .capacity import CapacityModel

__all__ = ["ProviderLimits", "ProviderSimulator", "format_duration", "main"]


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """What a provider publishes and enforces.

    :ivar rpm: requests per minute.
    :ivar tpm: tokens per minute.
    :ivar max_concurrent: requests in flight at once.
    :ivar latency_ms: mean service time of an admitted request.
    :ivar latency_jitter_ms: service times are uniform in ``latency_ms ± latency_jitter_ms``.
    :ivar burst_s: each bucket holds this many seconds of its rate.
    """

    rpm: float
    tpm: float
    max_concurrent: int
    latency_ms: float
    latency_jitter_ms: float = 0.0
    burst_s: float = 1.0

    def __post_init__(self) -> None:
        if not (self.rpm > 0 and self.tpm > 0 and self.max_concurrent >= 1):
            raise ValueError(f"provider limits must be positive, got {self!r}")
        if not 0 <= self.latency_jitter_ms <= self.latency_ms or self.burst_s <= 0:
            raise ValueError(f"need 0 <= jitter <= latency and burst_s > 0, got {self!r}")

    @property
    def request_burst(self) -> float:
        """Capacity of the requests bucket."""
        return max(1.0, self.rpm / 60.0 * self.burst_s)

    @property
    def token_burst(self) -> float:
        """Capacity of the tokens bucket (the largest call the provider accepts)."""
        return self.tpm / 60.0 * self.burst_s

    def max_calls_per_second(self, mean_tokens: float) -> float:
        """Sustainable throughput: the tightest of RPM, TPM and ``max_concurrent / latency``."""
        by_tokens = self.tpm / 60.0 / mean_tokens if mean_tokens > 0 else math.inf
        return min(self.rpm / 60.0, by_tokens, self.max_concurrent / (self.latency_ms / 1000.0))

    def max_calls_in(self, seconds: float, mean_tokens: float) -> float:
        """Most calls the provider can complete in ``seconds`` from full buckets."""
        by_requests = self.request_burst + self.rpm / 60.0 * seconds
        by_tokens = (
            (self.token_burst + self.tpm / 60.0 * seconds) / mean_tokens
            if mean_tokens > 0
            else math.inf
        )
        by_slots = self.max_concurrent * max(seconds, 0.0) / (self.latency_ms / 1000.0)
        return min(by_requests, by_tokens, by_slots)


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"250ms"``, ``"1.5s"``, ``"2m0.5s"``."""
    if seconds < 1.0:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"


class _Bucket:
    """A strict token bucket: take all or nothing, report when ``amount`` will fit."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (0 when it fits now)."""
        self.refill(now)
        return max(0.0, (amount - self.level) / self.rate)

    def until_full(self) -> float:
        return (self.capacity - self.level) / self.rate


class ProviderSimulator:
    """The provider as an aiohttp server on ``host:port`` (``port=0`` picks a free one).

    Use ``async with ProviderSimulator(limits) as sim:`` and call ``sim.url + "/v1/call"``;
    or :meth:`start` / :meth:`stop`. :meth:`stats` returns the same JSON as ``GET /stats``.

    :param limits: what the provider enforces.
    :param seed: seeds the latency samples (runs are reproducible).
    :param model: a :class:`~stageflow_plus.bench.capacity.CapacityModel` that answers
        ``/v1/call`` instead of the fixed limits (capacity over time, queueing, 429/503).
    """

    def __init__(
        self, limits: ProviderLimits, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0,
        model: CapacityModel | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self.host = host
        self.port = port
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._requests: _Bucket | None = None
        self._tokens: _Bucket | None = None
        self.in_flight = 0
        self.counters: dict[str, Any] = {}
        self.reset()

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Zero the counters and refill both buckets."""
        self.counters = {
            "requests": 0,
            "ok": 0,
            "http_429": 0,
            "http_429_by_reason": {"concurrency": 0, "requests": 0, "tokens": 0},
            "max_concurrent_observed": 0,
            "tokens": 0,
            "bad_requests": 0,
        }
        self._requests = self._tokens = None  # created full on the next request

    def stats(self) -> dict[str, Any]:
        """Counters, the limits and the calls in flight now (JSON-ready)."""
        return {
            **self.counters,
            "http_429_by_reason": dict(self.counters["http_429_by_reason"]),
            "in_flight": self.in_flight,
            "limits": asdict(self.limits),
            **({"model": self.model.stats()} if self.model is not None else {}),
        }

    async def start(self) -> None:
        """Start listening; afterwards :attr:`url` has the real port."""
        app = web.Application()
        app.router.add_post("/v1/call", self._call)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/reset", self._reset)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and close connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ProviderSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # handlers -------------------------------------------------------------------------------
    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    def _headers(self, now: float) -> dict[str, str]:
        assert self._requests is not None and self._tokens is not None
        lim = self.limits
        return {
            "x-ratelimit-limit-requests": f"{lim.rpm:g}",
            "x-ratelimit-remaining-requests": str(max(0, math.floor(self._requests.level))),
            "x-ratelimit-reset-requests": format_duration(self._requests.until_full()),
            "x-ratelimit-limit-tokens": f"{lim.tpm:g}",
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(self._tokens.level))),
            "x-ratelimit-reset-tokens": format_duration(self._tokens.until_full()),
        }

    def _refuse(self, reason: str, retry_after: float, now: float) -> web.Response:
        counters = self.counters
        counters["http_429"] += 1
        counters["http_429_by_reason"][reason] += 1
        headers = self._headers(now)
        seconds = max(0.001, retry_after)
        headers["retry-after"] = f"{seconds:.3f}"
        headers["retry-after-ms"] = str(math.ceil(seconds * 1000))
        body = {"error": {"type": "rate_limit_exceeded", "reason": reason,
                          "retry_after": round(seconds, 3)}}
        return web.json_response(body, status=429, headers=headers)

    async def _call(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        try:
            body = await request.json()
            tokens = int(body.get("tokens", 0))
            if tokens < 0:
                raise ValueError(tokens)
        except (ValueError, TypeError, AttributeError, json.JSONDecodeError):
            self.counters["bad_requests"] += 1
            return web.json_response({"error": {"type": "invalid_request"}}, status=400)
        if self.model is not None:  # capacity over time, queueing, 429/503 on overload
            status, model_headers, answer = await self.model.serve(tokens)
            return web.json_response(answer, status=status, headers=model_headers)
        now = loop.time()
        lim = self.limits
        if self._requests is None or self._tokens is None:
            self._requests = _Bucket(lim.request_burst, lim.rpm / 60.0, now)
            self._tokens = _Bucket(lim.token_burst, lim.tpm / 60.0, now)
        counters = self.counters
        counters["requests"] += 1
        if tokens > lim.token_burst:
            counters["bad_requests"] += 1
            return web.json_response(
                {"error": {"type": "context_length_exceeded", "max_tokens": lim.token_burst}},
                status=400,
            )
        if self.in_flight >= lim.max_concurrent:
            return self._refuse("concurrency", lim.latency_ms / 1000.0 / 2, now)
        wait_requests = self._requests.wait_for(1.0, now)
        wait_tokens = self._tokens.wait_for(float(tokens), now)
        if wait_requests > 0 or wait_tokens > 0:
            reason = "requests" if wait_requests >= wait_tokens else "tokens"
            return self._refuse(reason, max(wait_requests, wait_tokens), now)
        self._requests.level -= 1.0
        self._tokens.level -= tokens
        headers = self._headers(now)
        self.in_flight += 1
        counters["max_concurrent_observed"] = max(
            counters["max_concurrent_observed"], self.in_flight
        )
        try:
            jitter = lim.latency_jitter_ms
            latency = lim.latency_ms + (self._random.uniform(-jitter, jitter) if jitter else 0.0)
            await asyncio.sleep(latency / 1000.0)
        finally:
            self.in_flight -= 1  # before the answer is written: the client sees a free slot
        counters["ok"] += 1
        counters["tokens"] += tokens
        return web.json_response({"tokens": tokens}, headers=headers)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stageflow_plus.bench.provider",
                                     description="A strict rate-limited provider on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rpm", type=float, default=1200.0)
    parser.add_argument("--tpm", type=float, default=600_000.0)
    parser.add_argument("--max-concurrent", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0)
    parser.add_argument("--burst-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    limits = ProviderLimits(args.rpm, args.tpm, args.max_concurrent, args.latency_ms,
                            args.latency_jitter_ms, args.burst_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with ProviderSimulator(limits, host=args.host, port=args.port, seed=args.seed) as sim:
        print(sim.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve a provider until SIGINT/SIGTERM; prints its URL on stdout once listening."""
    asyncio.run(_serve(_parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
