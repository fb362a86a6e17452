"""From a provider's published limits to limiter settings, and learning from its headers.

* :func:`limits_from_provider` turns what a provider publishes (requests and tokens per
  minute, concurrent requests, typical latency) into :class:`Rate` s and a concurrency cap:
  the rates keep a safety margin; the cap comes from Little's law, ``L = λ·W`` — the calls in
  flight needed to sustain ``λ`` calls per second when each takes ``W`` seconds — times a
  margin for latency spread, never above the provider's own cap.
* :class:`RateLimitHeaderLearner` reads OpenAI-style ``x-ratelimit-limit-requests`` /
  ``-tokens`` headers from answers and re-sets a :class:`TokenBucketRateLimiter`'s rates
  when the published limits change (a plan upgrade, a new model); ``remaining-requests: 0``
  pauses the key until one request refills. A ``Retry-After`` is *not* handled here: the
  rate limiter's own ``retry_after`` hook already pauses the key for every caller.

Use it as an interceptor inside the limits (it only looks at results)::

    settings = limits_from_provider(rpm=3500, tpm=90_000, max_concurrent=50, latency_s=1.2)
    rate = TokenBucketRateLimiter(settings.rates, key="global")
    chain = ToolCallChain([PriorityFairQueue(), rate, ConcurrencyLimiter(settings.concurrency),
                           RateLimitHeaderLearner(rate)])

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..primitives.errors import ConfigError
from ..primitives.resources import Rate
from .call import Proceed, ToolCall
from .rate import TokenBucketRateLimiter

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


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in ``"1s"``, ``"6m0s"``, ``"250ms"``, ``"1h2m"`` or a bare number; else ``None``."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 and not math.isnan(number) and not math.isinf(number) else None


def default_headers_of(outcome: Any) -> Mapping[str, str] | None:
    """Headers of a tool outcome: ``.headers`` (an HTTP response) or ``data["headers"]``."""
    headers = getattr(outcome, "headers", None)
    if headers is None:
        data = getattr(outcome, "data", None)
        if isinstance(data, Mapping):
            headers = data.get("headers")
    if headers is None or not hasattr(headers, "get"):
        return None
    return {str(k).lower(): str(v) for k, v in headers.items()}


class RateLimitHeaderLearner:
    """Keeps a :class:`TokenBucketRateLimiter` in step with a provider's rate-limit headers.

    :param limiter: the rate limiter to adjust (its rate dimensions: ``requests`` and/or
        ``tokens``).
    :param safety: fraction of published limits to use, as in :func:`limits_from_provider`.
    :param burst_s: bucket size in seconds of rate, as in :func:`limits_from_provider`.
    :param headers_of: finds the headers in a tool result (default
        :func:`default_headers_of`).
    :param pause_on_empty: pause the key when ``remaining-requests`` reaches 0 (for
        ``min(reset, 60 / limit)`` seconds). Turn off when the limiter already runs at the
        provider's rate, where the provider's bucket is often momentarily empty.

    As an interceptor it must stand *after* the limiter interceptors (it reads results);
    :meth:`observe` can also be called directly with any header mapping.
    """

    __slots__ = (
        "_burst_s",
        "_headers_of",
        "_limiter",
        "_pause_on_empty",
        "_published",
        "_safety",
        "updates",
    )

    def __init__(
        self,
        limiter: TokenBucketRateLimiter,
        *,
        safety: float = 0.9,
        burst_s: float = 1.0,
        headers_of: Callable[[Any], Mapping[str, str] | None] = default_headers_of,
        pause_on_empty: bool = True,
    ) -> None:
        if not (isinstance(safety, (int, float)) and 0 < safety <= 1):
            raise ConfigError(f"RateLimitHeaderLearner: safety must be in (0, 1], got {safety!r}")
        self._limiter = limiter
        self._safety = float(safety)
        self._burst_s = float(burst_s)
        self._headers_of = headers_of
        self._pause_on_empty = pause_on_empty
        self._published: dict[str | None, dict[str, float]] = {}
        #: how many times rates were re-set (for tests and statistics)
        self.updates = 0

    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        result = await proceed(call)
        headers = self._headers_of(result)
        if headers:
            self.observe(headers, key=self._limiter.key_of(call))
        return result

    def observe(self, headers: Mapping[str, str], *, key: str | None = None) -> None:
        """Learn from one answer's headers (names compared in lower case).

        :param key: the rate limiter's key the answer belongs to; ``None`` changes the
            default rates of every key.
        """
        lowered = {str(k).lower(): str(v) for k, v in headers.items()}
        published = dict(self._published.get(key, {}))
        for dimension in ("requests", "tokens"):
            limit = _number(lowered, f"x-ratelimit-limit-{dimension}")
            if limit is not None and limit > 0:
                published[dimension] = limit
        if published and published != self._published.get(key):
            self._published[key] = published
            rates = [
                _rate(published[d] * self._safety, d, self._burst_s)
                for d in ("requests", "tokens")
                if d in published
            ]
            self._limiter.set_rates(rates, key=key)
            self.updates += 1
        remaining = _number(lowered, "x-ratelimit-remaining-requests")
        if self._pause_on_empty and remaining is not None and remaining < 1 and key is not None:
            limit = published.get("requests")
            reset = parse_duration(lowered.get("x-ratelimit-reset-requests", ""))
            one = 60.0 / limit if limit else None
            pause = min(x for x in (reset, one) if x is not None) if (reset or one) else None
            if pause:
                self._limiter.pause(key, pause)

    def __repr__(self) -> str:
        return f"RateLimitHeaderLearner({self._limiter!r}, safety={self._safety})"
