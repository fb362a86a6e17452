"""From a provider's published limits to limiter settings, and learning from its headers.

* :func:`limits_from_provider` turns what a provider publishes (requests and tokens per
  minute, concurrent requests, typical latency) into :class:`Rate` s and a concurrency cap:
  the rates keep a safety margin; the cap comes from Little's law, ``L = λ·W`` — the calls in
  flight needed to sustain ``λ`` calls per second when each takes ``W`` seconds — times a
  margin for latency spread, never above the provider's own cap.
* :class:`~stageflow_plus.interceptors.learner.RateLimitHeaderLearner` (in its own module,
  re-exported here) keeps a rate limiter in step with the provider's headers, or learns its
  limits from nothing; a ``Retry-After`` pauses the key through the chain's
  :class:`~stageflow_plus.interceptors.pause.ProviderPause`.

Use it as an interceptor inside the limits (it only looks at results)::

    settings = limits_from_provider(rpm=3500, tpm=90_000, max_concurrent=50, latency_s=1.2)
    rate = TokenBucketRateLimiter(settings.rates, key="global")
    chain = ToolCallChain([PriorityFairQueue(), rate, ConcurrencyLimiter(settings.concurrency),
                           RateLimitHeaderLearner(rate)])

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..llm.headers import parse_duration
from ..primitives.errors import ConfigError
from ..primitives.resources import Rate
from .learner import RateLimitHeaderLearner, default_headers_of

__all__ = [
    "ProviderSettings",
    "RateLimitHeaderLearner",
    "default_headers_of",
    "limits_from_provider",
    "parse_duration",
]


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Limiter settings derived from a provider's published limits.

    :ivar rates: the request (and token) :class:`Rate` s, per minute, with margin.
    :ivar concurrency: the concurrency cap (Little's law with margin, ≤ the provider's cap).
    :ivar calls_per_second: the throughput the settings aim at (``λ``).
    """

    rates: tuple[Rate, ...]
    concurrency: int
    calls_per_second: float


def _positive(name: str, value: float | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"limits_from_provider: {name} must be a number > 0, got {value!r}")
    if math.isinf(value):
        raise ConfigError(f"limits_from_provider: {name} must be finite, got {value!r}")


def limits_from_provider(
    *,
    rpm: float,
    tpm: float | None = None,
    max_concurrent: int | None = None,
    latency_s: float = 1.0,
    safety: float = 0.9,
    mean_tokens: float | None = None,
    burst_s: float = 1.0,
    margin: float = 1.5,
) -> ProviderSettings:
    """Rates and a concurrency cap that stay inside a provider's published limits.

    :param rpm: requests per minute the provider allows.
    :param tpm: tokens per minute (``None``: no token limit).
    :param max_concurrent: the provider's cap on requests in flight (``None``: none).
    :param latency_s: typical service time ``W`` of one call.
    :param safety: fraction of the published rates to use (``0 < safety ≤ 1``).
    :param mean_tokens: average tokens per call; with ``tpm`` it can lower ``λ``.
    :param burst_s: each bucket holds ``burst_s`` seconds of its rate (providers enforce
        sub-minute windows too; a minute's quota at once would be refused). A call larger
        than the token burst is refused with ``CostTooLarge``: raise ``burst_s`` for it.
    :param margin: Little's-law headroom for latency spread (``≥ 1``).

    ``λ = safety · min(rpm/60, tpm/60/mean_tokens)`` and
    ``concurrency = min(max_concurrent, max(1, ceil(λ · latency_s · margin)))``.
    """
    _positive("rpm", rpm)
    _positive("tpm", tpm, optional=True)
    _positive("latency_s", latency_s)
    _positive("mean_tokens", mean_tokens, optional=True)
    _positive("burst_s", burst_s)
    if isinstance(max_concurrent, bool) or (
        max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1)
    ):
        raise ConfigError(
            f"limits_from_provider: max_concurrent must be an int >= 1, got {max_concurrent!r}"
        )
    if not (isinstance(safety, (int, float)) and 0 < safety <= 1):
        raise ConfigError(f"limits_from_provider: safety must be in (0, 1], got {safety!r}")
    if not (isinstance(margin, (int, float)) and margin >= 1):
        raise ConfigError(f"limits_from_provider: margin must be >= 1, got {margin!r}")
    rates = [_rate(rpm * safety, "requests", burst_s)]
    per_second = rpm / 60.0
    if tpm is not None:
        rates.append(_rate(tpm * safety, "tokens", burst_s))
        if mean_tokens is not None:
            per_second = min(per_second, tpm / 60.0 / mean_tokens)
    lam = per_second * safety
    concurrency = max(1, math.ceil(lam * latency_s * margin - 1e-9))
    if max_concurrent is not None:
        concurrency = min(concurrency, max_concurrent)
    return ProviderSettings(tuple(rates), concurrency, lam)


def _rate(per_minute: float, dimension: str, burst_s: float) -> Rate:
    burst = max(1.0, per_minute / 60.0 * burst_s) if dimension == "requests" else (
        per_minute / 60.0 * burst_s
    )
    return Rate(per_minute, per=60.0, burst=burst, dimension=dimension)
