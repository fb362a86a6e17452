"""A provider whose capacity moves: queueing past capacity, 429/503 on overload.

:class:`CapacityModel` serves requests the way a model server does: ``capacity`` requests
at once, each taking one latency sample (``latency_ms`` ± ``jitter``); the next ones wait in
a FIFO queue, so past capacity the round trip grows with the load (queueing); a request
finding the queue full (``queue_factor · capacity`` waiting) is refused at once with ``429``
and ``Retry-After``; when capacity drops, queued requests beyond the new bound are answered
``503`` (as is any request queued longer than ``queue_timeout_s``, if set). Capacity and
latency follow a schedule of :class:`CapacityPhase` s (e.g. halve, then double back).

It runs on the event loop's clock (``asyncio.sleep``, ``loop.time()``), so the same model
serves real HTTP inside :class:`~stageflow_plus.bench.provider.ProviderSimulator`
(``ProviderSimulator(limits, model=CapacityModel(...))``) and virtual-time tests
(:func:`~stageflow_plus.testing.run_virtual`) through :meth:`CapacityModel.serve`.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CapacityModel", "CapacityPhase", "CapacityProfile"]


@dataclass(frozen=True, slots=True)
class CapacityPhase:
    """From ``at`` seconds after :meth:`CapacityModel.start`: how the provider serves.

    :ivar at: start of the phase, seconds (the first phase starts at 0).
    :ivar capacity: requests served at once (>= 1).
    :ivar latency_ms: mean service time of one request (> 0).
    """

    at: float
    capacity: int
    latency_ms: float

    def __post_init__(self) -> None:
        if not (self.at >= 0 and self.capacity >= 1 and self.latency_ms > 0):
            raise ValueError(f"need at >= 0, capacity >= 1, latency_ms > 0, got {self!r}")


@dataclass(frozen=True, slots=True)
class CapacityProfile:
    """The schedule and the overload behaviour of a :class:`CapacityModel`.

    :ivar phases: the schedule, ordered by ``at``, the first at 0.
    :ivar jitter: service times are uniform in ``latency · (1 ± jitter)`` (in ``[0, 1)``).
    :ivar queue_factor: at most ``ceil(queue_factor · capacity)`` requests wait (>= 0).
    :ivar retry_after_s: the ``Retry-After`` of a 429 or 503, seconds (> 0).
    :ivar queue_timeout_s: a request waiting longer is answered 503 (``None``: never).
    """

    phases: tuple[CapacityPhase, ...]
    jitter: float = 0.1
    queue_factor: float = 1.0
    retry_after_s: float = 0.5
    queue_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not self.phases or self.phases[0].at != 0:
            raise ValueError("a capacity profile needs phases, the first at 0")
        if any(b.at <= a.at for a, b in zip(self.phases, self.phases[1:], strict=False)):
            raise ValueError("capacity phases must be in increasing order of `at`")
        if not (0 <= self.jitter < 1 and self.queue_factor >= 0 and self.retry_after_s > 0):
            raise ValueError(f"need 0 <= jitter < 1, queue_factor >= 0, retry_after_s > 0: "
                             f"{self!r}")
        if self.queue_timeout_s is not None and not self.queue_timeout_s > 0:
            raise ValueError(f"queue_timeout_s must be > 0 or None, got {self.queue_timeout_s}")

    @classmethod
    def steady(cls, capacity: int, latency_ms: float, **options: Any) -> CapacityProfile:
        """One phase for ever."""
        return cls((CapacityPhase(0.0, capacity, latency_ms),), **options)

    def phase_at(self, t: float) -> CapacityPhase:
        """The phase in force ``t`` seconds after the start."""
        current = self.phases[0]
        for phase in self.phases:
            if phase.at > t:
                break
            current = phase
        return current

    def queue_bound(self, capacity: int) -> int:
        """How many requests may wait at ``capacity``."""
        return math.ceil(self.queue_factor * capacity)


class CapacityModel:
    """Serves requests under a :class:`CapacityProfile` (see the module docstring).

    :param profile: the schedule and overload behaviour.
    :param seed: seeds the service-time samples.

    Call :meth:`start` when the workload starts (phases count from there; the first request
    starts it otherwise), then :meth:`serve` per request.
    """

    def __init__(self, profile: CapacityProfile, *, seed: int = 0) -> None:
        self.profile = profile
        self._random = random.Random(seed)
        self._t0: float | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.in_service = 0  # invariant: <= capacity, except right after a decrease
        self._queue: deque[asyncio.Future[bool]] = deque()
        self.counters: dict[str, int] = {
            "requests": 0, "ok": 0, "http_429": 0, "http_503": 0,
            "max_in_service": 0, "max_queued": 0,
        }

    # the schedule -------------------------------------------------------------------------
    def start(self, at: float | None = None) -> None:
        """Phases count from ``at`` (loop time; default now); changes apply on time (timers)."""
        loop = asyncio.get_running_loop()
        for timer in self._timers:
            timer.cancel()
        self._t0 = loop.time() if at is None else at
        self._timers = [loop.call_at(self._t0 + p.at, self._changed)
                        for p in self.profile.phases[1:]]

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        now = asyncio.get_running_loop().time()
        if self._t0 is None:
            self.start()
        assert self._t0 is not None
        return now - self._t0

    def phase(self) -> CapacityPhase:
        """The phase in force now."""
        return self.profile.phase_at(self.elapsed())

    def stop(self) -> None:
        """Cancel the phase timers; requests still queued are answered 503."""
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        while self._queue:
            future = self._queue.pop()
            if not future.done():
                future.set_result(False)

    # serving ------------------------------------------------------------------------------
    async def serve(self, tokens: int = 0) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Serve one request: ``(status, headers, body)`` — 200, 429 or 503."""
        counters = self.counters
        counters["requests"] += 1
        phase = self.phase()
        if self.in_service < phase.capacity and not self._queue:
            self.in_service += 1
        else:
            if len(self._queue) >= self.profile.queue_bound(phase.capacity):
                return self._refuse(429, "rate_limit_exceeded")
            if not await self._wait():
                return self._refuse(503, "overloaded")
            phase = self.phase()  # (served under the phase in force when it starts)
        counters["max_in_service"] = max(counters["max_in_service"], self.in_service)
        try:
            jitter = self.profile.jitter
            latency = phase.latency_ms * (1.0 + self._random.uniform(-jitter, jitter))
            await asyncio.sleep(latency / 1000.0)
        finally:
            self.in_service -= 1
            self._admit()
        counters["ok"] += 1
        return 200, {}, {"tokens": tokens}

    async def _wait(self) -> bool:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queue.append(future)
        self.counters["max_queued"] = max(self.counters["max_queued"], len(self._queue))
        timeout = self.profile.queue_timeout_s
        timer = loop.call_later(timeout, self._expire, future) if timeout is not None else None
        try:
            return await future  # True: a slot was reserved for it (in_service counts it)
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self.in_service -= 1  # granted as it was cancelled: give the slot back
                self._admit()
            else:
                self._discard(future)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _refuse(self, status: int, kind: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        self.counters["http_429" if status == 429 else "http_503"] += 1
        seconds = self.profile.retry_after_s
        headers = {"retry-after": f"{seconds:.3f}",
                   "retry-after-ms": str(math.ceil(seconds * 1000))}
        return status, headers, {"error": {"type": kind, "retry_after": seconds}}

    def _admit(self) -> None:
        """Start queued requests while there is room (on a completion or a change)."""
        capacity = self.phase().capacity
        while self._queue and self.in_service < capacity:
            future = self._queue.popleft()
            if not future.done():
                self.in_service += 1
                future.set_result(True)

    def _changed(self) -> None:
        """A new phase: evict the queue beyond its new bound (503), then admit."""
        bound = self.profile.queue_bound(self.phase().capacity)
        while len(self._queue) > bound:
            future = self._queue.pop()  # the newest go first
            if not future.done():
                future.set_result(False)
        self._admit()

    def _expire(self, future: asyncio.Future[bool]) -> None:
        if not future.done():
            self._discard(future)
            future.set_result(False)

    def _discard(self, future: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(future)

    def queued(self) -> int:
        """Requests waiting now."""
        return len(self._queue)

    def stats(self) -> dict[str, Any]:
        """Counters (JSON-ready) and the current phase."""
        phase = self.phase() if self._t0 is not None else self.profile.phases[0]
        return {**self.counters, "in_service": self.in_service, "queued": len(self._queue),
                "capacity": phase.capacity, "latency_ms": phase.latency_ms}

    @staticmethod
    def schedule(capacities: Sequence[tuple[float, int]], latency_ms: float,
                 **options: Any) -> CapacityModel:
        """A model from ``[(at, capacity), ...]`` at one latency (e.g. halve, then double)."""
        phases = tuple(CapacityPhase(at, cap, latency_ms) for at, cap in capacities)
        return CapacityModel(CapacityProfile(phases, **options))
