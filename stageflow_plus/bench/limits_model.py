"""What the simulated provider enforces: its published limits and its strict buckets.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ProviderLimits", "StrictBucket", "format_duration"]


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """What a provider publishes and enforces.

    :ivar rpm: requests per minute.
    :ivar tpm: tokens per minute (OpenAI: prompt + ``max_tokens``; Anthropic: output tokens).
    :ivar max_concurrent: requests in flight at once.
    :ivar latency_ms: mean service time of an admitted request.
    :ivar latency_jitter_ms: service times are uniform in ``latency_ms ± latency_jitter_ms``.
    :ivar burst_s: each bucket holds this many seconds of its rate (Anthropic's real buckets
        hold a whole minute: ``burst_s=60``).
    :ivar input_tpm: Anthropic's input tokens per minute (``None``: not limited).
    :ivar quantum_s: enforce each limit in fixed windows of this many seconds instead of a
        bucket (``None``: buckets).
    :ivar refund_unused: the OpenAI endpoint refunds unused ``max_tokens`` at the end of a
        request (OpenAI documents no such refund: off by default).
    """

    rpm: float
    tpm: float
    max_concurrent: int
    latency_ms: float
    latency_jitter_ms: float = 0.0
    burst_s: float = 1.0
    input_tpm: float | None = None
    quantum_s: float | None = None
    refund_unused: bool = False

    def __post_init__(self) -> None:
        if not (self.rpm > 0 and self.tpm > 0 and self.max_concurrent >= 1):
            raise ValueError(f"provider limits must be positive, got {self!r}")
        if not 0 <= self.latency_jitter_ms <= self.latency_ms or self.burst_s <= 0:
            raise ValueError(f"need 0 <= jitter <= latency and burst_s > 0, got {self!r}")
        if (self.input_tpm is not None and not self.input_tpm > 0) or (
            self.quantum_s is not None and not self.quantum_s > 0
        ):
            raise ValueError(f"input_tpm and quantum_s must be > 0 when given, got {self!r}")

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


class StrictBucket:
    """A strict bucket: take all or nothing, report when ``amount`` will fit. With
    ``quantum`` it is a fixed window of ``rate · quantum`` units instead."""

    __slots__ = ("capacity", "level", "quantum", "rate", "updated", "window")

    def __init__(self, per_minute: float, burst_s: float, now: float,
                 quantum: float | None = None, *, at_least_one: bool = False) -> None:
        self.rate = per_minute / 60.0
        self.quantum = quantum
        seconds = quantum if quantum is not None else burst_s
        self.capacity = max(1.0, self.rate * seconds) if at_least_one else self.rate * seconds
        self.level = self.capacity
        self.updated = now
        self.window = math.floor(now / quantum) if quantum else 0

    def refill(self, now: float) -> None:
        if self.quantum is not None:
            window = math.floor(now / self.quantum)
            if window != self.window:
                self.window, self.level = window, self.capacity
        else:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (0 when it fits now)."""
        self.refill(now)
        if self.level >= amount:
            return 0.0
        if self.quantum is not None:
            return (self.window + 1) * self.quantum - now
        return (amount - self.level) / self.rate

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def until_full(self) -> float:
        if self.quantum is not None:
            return (self.window + 1) * self.quantum - self.updated
        return (self.capacity - self.level) / self.rate
