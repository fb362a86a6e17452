"""A strict LLM provider on loopback: real HTTP, real 429s, OpenAI and Anthropic shapes.

:class:`ProviderSimulator` is an aiohttp server enforcing its limits at once — calls in
flight, requests per minute and tokens per minute — the way hosted model APIs do: a request
that would exceed any of them is *refused* with ``429 Too Many Requests`` (never queued). An
admitted request sleeps one latency sample, then answers. It serves three APIs:

* ``POST /v1/chat/completions`` — OpenAI's shape (:mod:`~stageflow_plus.bench.llm_api`).
  **Provider model (OpenAI's documented one):** TPM is charged at admission as the prompt's
  tokens plus ``max_tokens`` (× ``n``), and unused ``max_tokens`` are **not** refunded
  (``ProviderLimits(refund_unused=True)`` models an OpenAI-compatible server that does).
* ``POST /v1/messages`` — Anthropic's shape. **Provider model (Anthropic's documented one):**
  requests, input tokens (``input_tpm``; cache reads excluded) and output tokens (``tpm``)
  are separate buckets; output tokens are charged as ``max_tokens`` at admission and
  **reconciled to the real output at the end of the request** (the unused part refunded).
  This is the provider the ``tpm_reconciled`` benchmark target is measured against.
* ``POST /v1/call`` — the original benchmark API: ``{"tokens": n}`` charged to the TPM
  bucket, answered ``200 {"tokens": n}``.

Accounting is a token bucket per dimension refilling at ``limit / 60`` per second and holding
``burst_s`` seconds' worth; with ``quantum_s`` set, each limit is enforced in fixed windows
of ``quantum_s`` seconds instead (OpenAI may enforce 60 000 RPM as 1 000 per second: bursts
can 429 below the per-minute limit). Output tokens used per request: the
``x-simulator-output-tokens`` request header, else ``output_fraction`` of ``max_tokens``.
:meth:`ProviderSimulator.script` makes the next answers scripted (e.g. a 429 with any
headers), for tests of each 429 shape.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from aiohttp import web

from .capacity import CapacityModel
from .limits_model import ProviderLimits, StrictBucket, format_duration
from .llm_api import (
    LlmRequest,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
    parse_anthropic,
    parse_openai,
    rfc3339_in,
)

__all__ = ["ProviderLimits", "ProviderSimulator", "format_duration", "main"]

LOG_CAP = 200_000
"""Most per-request entries kept in the simulator's logs (``ok_log``, ``log_429``)."""


class ProviderSimulator:
    """The provider as an aiohttp server on ``host:port`` (``port=0`` picks a free one).

    Use ``async with ProviderSimulator(limits) as sim:`` and call ``sim.url + "/v1/..."``
    (point a client's ``base_url`` at ``sim.url + "/v1"``); or :meth:`start` / :meth:`stop`.
    :meth:`stats` returns the same JSON as ``GET /stats``.

    :param limits: what the provider enforces.
    :param seed: seeds the latency samples (runs are reproducible).
    :param output_fraction: output tokens used, as a fraction of ``max_tokens``, when a
        request does not say (``x-simulator-output-tokens``).
    :param wall_clock: POSIX time for RFC 3339 resets (default ``time.time``).
    :param model: a :class:`~stageflow_plus.bench.capacity.CapacityModel` that answers
        ``/v1/call`` instead of the fixed limits (capacity over time, queueing, 429/503).
    """

    def __init__(
        self, limits: ProviderLimits, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0,
        output_fraction: float = 1.0, wall_clock: Callable[[], float] = time.time,
        model: CapacityModel | None = None,
    ) -> None:
        self.model = model
        if not 0 <= output_fraction <= 1:
            raise ValueError(f"output_fraction must be in [0, 1], got {output_fraction!r}")
        self.limits = limits
        self.host = host
        self.port = port
        self.output_fraction = output_fraction
        self._wall = wall_clock
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._buckets: dict[str, StrictBucket] = {}
        self._script: list[tuple[int, dict[str, str], Any]] = []
        self._t0 = 0.0
        self.in_flight = 0
        self.counters: dict[str, Any] = {}
        #: per admitted request: (seconds since reset, input tokens billed, output billed)
        self.ok_log: list[tuple[float, int, int]] = []
        #: per 429 answered: seconds since reset
        self.log_429: list[float] = []
        self.reset()

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Zero the counters and logs, refill every bucket, restart the clock of the logs."""
        self.counters = {
            "requests": 0,
            "ok": 0,
            "http_429": 0,
            "http_429_by_reason": {"concurrency": 0, "requests": 0, "tokens": 0,
                                   "input_tokens": 0},
            "max_concurrent_observed": 0,
            "tokens": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "charged_tokens": 0,
            "refunded_tokens": 0,
            "scripted": 0,
            "bad_requests": 0,
        }
        self._buckets = {}  # created full on the next request
        self.ok_log, self.log_429 = [], []
        with contextlib.suppress(RuntimeError):
            self._t0 = asyncio.get_running_loop().time()

    def script(self, status: int, headers: Mapping[str, str] | None = None, body: Any = None,
               *, count: int = 1) -> None:
        """Answer the next ``count`` requests (any endpoint) with ``status``, ``headers`` and
        a JSON ``body``, before any limit is checked — e.g. a 429 in a particular shape."""
        self._script.extend([(status, dict(headers or {}), body)] * count)

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
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/reset", self._reset)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        self._t0 = asyncio.get_running_loop().time()

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

    # accounting ---------------------------------------------------------------------------
    def _bucket(self, name: str, now: float) -> StrictBucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            lim = self.limits
            per_minute = {"requests": lim.rpm, "tokens": lim.tpm,
                          "input_tokens": lim.input_tpm or 0.0}[name]
            bucket = self._buckets[name] = StrictBucket(per_minute, lim.burst_s, now, lim.quantum_s,
                                                   at_least_one=name == "requests")
        return bucket

    def _admit(self, needs: dict[str, float], now: float) -> tuple[str, float] | None:
        """Take every need, or none: ``(reason, wait)`` when refused."""
        if self.in_flight >= self.limits.max_concurrent:
            return "concurrency", self.limits.latency_ms / 1000.0 / 2
        waits = {name: self._bucket(name, now).wait_for(amount, now)
                 for name, amount in needs.items()}
        worst = max(waits, key=lambda n: waits[n])
        if waits[worst] > 0:
            return worst, waits[worst]
        for name, amount in needs.items():
            self._buckets[name].level -= amount
        return None

    def _refused(self, reason: str, now: float) -> None:
        self.counters["http_429"] += 1
        self.counters["http_429_by_reason"][reason] += 1
        if len(self.log_429) < LOG_CAP:
            self.log_429.append(now - self._t0)

    async def _serve(self) -> None:
        self.in_flight += 1
        counters = self.counters
        counters["max_concurrent_observed"] = max(counters["max_concurrent_observed"],
                                                  self.in_flight)
        try:
            lim = self.limits
            jitter = lim.latency_jitter_ms
            latency = lim.latency_ms + (self._random.uniform(-jitter, jitter) if jitter else 0.0)
            await asyncio.sleep(latency / 1000.0)
        finally:
            self.in_flight -= 1  # before the answer is written: the client sees a free slot

    def _scripted(self) -> web.Response | None:
        if not self._script:
            return None
        status, headers, body = self._script.pop(0)
        self.counters["requests"] += 1
        self.counters["scripted"] += 1
        return web.json_response(body if body is not None else {}, status=status,
                                 headers=headers)

    def _output_tokens(self, request: web.Request, max_tokens: int) -> int:
        raw = request.headers.get("x-simulator-output-tokens")
        if raw is not None and raw.isdigit():
            return min(max_tokens, int(raw))
        return min(max_tokens, round(max_tokens * self.output_fraction))

    def _log_ok(self, now: float, input_tokens: int, output_tokens: int) -> None:
        counters = self.counters
        counters["ok"] += 1
        counters["input_tokens"] += input_tokens
        counters["output_tokens"] += output_tokens
        counters["tokens"] += input_tokens + output_tokens
        if len(self.ok_log) < LOG_CAP:
            self.ok_log.append((now - self._t0, input_tokens, output_tokens))

    # handlers ---------------------------------------------------------------------------
    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    def _openai_headers(self) -> dict[str, str]:
        lim = self.limits
        requests, tokens = self._buckets["requests"], self._buckets["tokens"]
        return {
            "x-ratelimit-limit-requests": f"{lim.rpm:g}",
            "x-ratelimit-remaining-requests": str(max(0, math.floor(requests.level))),
            "x-ratelimit-reset-requests": format_duration(requests.until_full()),
            "x-ratelimit-limit-tokens": f"{lim.tpm:g}",
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(tokens.level))),
            "x-ratelimit-reset-tokens": format_duration(tokens.until_full()),
        }

    def _anthropic_headers(self) -> dict[str, str]:
        lim, wall = self.limits, self._wall()
        headers: dict[str, str] = {}
        for name, label, limit in (("requests", "requests", lim.rpm),
                                   ("tokens", "output-tokens", lim.tpm),
                                   ("input_tokens", "input-tokens", lim.input_tpm)):
            bucket = self._buckets.get(name)
            if bucket is None or limit is None:
                continue
            prefix = f"anthropic-ratelimit-{label}"
            headers[prefix + "-limit"] = f"{limit:.0f}"
            headers[prefix + "-remaining"] = str(max(0, math.floor(bucket.level)))
            headers[prefix + "-reset"] = rfc3339_in(bucket.until_full(), wall)
        return headers

    async def _call(self, request: web.Request) -> web.Response:
        scripted = self._scripted()
        if scripted is not None:
            return scripted
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
        now = asyncio.get_running_loop().time()
        self.counters["requests"] += 1
        if tokens > self.limits.token_burst:
            self.counters["bad_requests"] += 1
            return web.json_response(
                {"error": {"type": "context_length_exceeded",
                           "max_tokens": self.limits.token_burst}}, status=400)
        refused = self._admit({"requests": 1.0, "tokens": float(tokens)}, now)
        if refused is not None:
            reason, wait = refused
            self._refused(reason, now)
            headers = self._openai_headers() if "tokens" in self._buckets else {}
            seconds = max(0.001, wait)
            headers["retry-after"] = f"{seconds:.3f}"
            headers["retry-after-ms"] = str(math.ceil(seconds * 1000))
            body = {"error": {"type": "rate_limit_exceeded", "reason": reason,
                              "retry_after": round(seconds, 3)}}
            return web.json_response(body, status=429, headers=headers)
        headers = self._openai_headers()
        await self._serve()
        self._log_ok(now, 0, tokens)
        return web.json_response({"tokens": tokens}, headers=headers)

    async def _chat(self, request: web.Request) -> web.Response:
        scripted = self._scripted()
        if scripted is not None:
            return scripted
        try:
            llm = parse_openai(await request.json())
        except (ValueError, TypeError, json.JSONDecodeError) as error:
            self.counters["bad_requests"] += 1
            return web.json_response({"error": {"message": str(error), "type":
                                                "invalid_request_error", "param": None,
                                                "code": None}}, status=400)
        now = asyncio.get_running_loop().time()
        self.counters["requests"] += 1
        charge = llm.prompt_tokens + llm.max_tokens
        if charge > self.limits.token_burst:
            self.counters["bad_requests"] += 1
            return web.json_response(openai_error("tokens", self.limits.tpm, 0.0), status=400)
        refused = self._admit({"requests": 1.0, "tokens": float(charge)}, now)
        if refused is not None:
            reason, wait = refused
            self._refused(reason, now)
            headers = self._openai_headers()
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            limit = {"requests": self.limits.rpm, "tokens": self.limits.tpm}.get(
                reason, float(self.limits.max_concurrent))
            return web.json_response(openai_error(reason, limit, wait), status=429,
                                     headers=headers)
        headers = self._openai_headers()
        self.counters["charged_tokens"] += charge
        await self._serve()
        output = self._output_tokens(request, llm.max_tokens)
        if self.limits.refund_unused:
            self._refund("tokens", charge - llm.prompt_tokens - output)
        self._log_ok(now, llm.prompt_tokens, output)
        return web.json_response(openai_completion(llm, output, int(self._wall())),
                                 headers=headers)

    def _refund(self, bucket: str, amount: float) -> None:
        if amount > 0:
            self._buckets[bucket].give_back(amount)
            self.counters["refunded_tokens"] += amount

    async def _messages(self, request: web.Request) -> web.Response:
        scripted = self._scripted()
        if scripted is not None:
            return scripted
        try:
            llm: LlmRequest = parse_anthropic(await request.json())
        except (ValueError, TypeError, json.JSONDecodeError) as error:
            self.counters["bad_requests"] += 1
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": str(error)}}, status=400)
        now = asyncio.get_running_loop().time()
        self.counters["requests"] += 1
        needs = {"requests": 1.0, "tokens": float(llm.max_tokens)}
        if self.limits.input_tpm is not None:
            needs["input_tokens"] = float(llm.prompt_tokens)
        if llm.max_tokens > self.limits.token_burst:
            self.counters["bad_requests"] += 1
            return web.json_response(anthropic_error("output tokens per minute"), status=400)
        refused = self._admit(needs, now)
        if refused is not None:
            reason, wait = refused
            self._refused(reason, now)
            headers = self._anthropic_headers()
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            return web.json_response(anthropic_error(reason.replace("_", " ")), status=429,
                                     headers=headers)
        self.counters["charged_tokens"] += llm.max_tokens
        await self._serve()
        output = self._output_tokens(request, llm.max_tokens)
        self._refund("tokens", llm.max_tokens - output)  # reconciled at the end of the request
        headers = self._anthropic_headers()
        self._log_ok(now, llm.prompt_tokens, output)
        return web.json_response(anthropic_message(llm, output), headers=headers)


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
