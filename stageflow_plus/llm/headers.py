"""Parsing what providers say about their limits in HTTP headers. Never raises.

Understood (names compared in lower case):

* ``retry-after`` — seconds (``"2"``, ``"0.125"``) or an HTTP-date (RFC 9110);
  ``retry-after-ms`` — milliseconds (OpenAI), preferred when both are present.
* OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; a reset is a Go-style
  duration (``"1s"``, ``"6m0s"``, ``"12ms"``) meaning *until the bucket is full again*.
* Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
  remaining,reset}``; a reset is an RFC 3339 time at which the bucket is full again.
* IETF ``RateLimit`` / ``RateLimit-Policy`` (draft-ietf-httpapi-ratelimit-headers): the
  structured-field form (``"default";r=50;t=30`` and ``"default";q=100;w=60``), the older
  ``limit=100, remaining=50, reset=30`` form and ``RateLimit-Limit/-Remaining/-Reset``.

Every parser takes hostile input: garbage, ``nan``, ``inf``, negative or absurdly large
values are ignored or clamped to :data:`MAX_COUNT` / :data:`MAX_SECONDS`, so a result is
always finite and non-negative. Times that need the wall clock (an HTTP-date, an RFC 3339
reset) take ``now`` (POSIX seconds) from the caller.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

__all__ = [
    "DIMENSIONS",
    "MAX_COUNT",
    "MAX_SECONDS",
    "LimitState",
    "RateLimitHeaders",
    "lower_headers",
    "parse_duration",
    "parse_number",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "parse_rfc3339",
]

MAX_COUNT = 1e15
"""Largest limit or remaining count kept (larger values are clamped)."""
MAX_SECONDS = 86_400.0 * 366
"""Longest duration kept (a year; larger values are clamped). Pauses have their own cap."""

DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")
"""The dimensions a provider publishes, as cost dimension names."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class LimitState:
    """One dimension's published state.

    :ivar limit: units allowed per ``period`` seconds (``None``: not published).
    :ivar remaining: units left now.
    :ivar reset: seconds until the bucket is full again (OpenAI, Anthropic) or the window
        resets (IETF).
    :ivar period: the seconds ``limit`` is per (60 for OpenAI and Anthropic per-minute limits;
        the IETF policy's window).
    """

    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None
    period: float = 60.0


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """Everything a response's headers say about rate limits.

    :ivar dimensions: ``"requests"``, ``"tokens"``, ``"input_tokens"``, ``"output_tokens"``
        → :class:`LimitState` (only those published).
    :ivar retry_after: seconds to wait, from ``retry-after-ms`` or ``retry-after``.
    :ivar source: ``"openai"``, ``"anthropic"``, ``"ietf"`` or ``""`` (none recognised).
    :ivar invalid: header values that were present but unusable (``name: value``), for logs.
    """

    dimensions: Mapping[str, LimitState] = field(default_factory=lambda: _EMPTY)
    retry_after: float | None = None
    source: str = ""
    invalid: tuple[str, ...] = ()


def lower_headers(headers: Any) -> dict[str, str]:
    """A plain ``{lowercase name: value}`` dict from any header mapping; ``{}`` for junk."""
    if headers is None:
        return {}
    try:
        items = headers.items() if hasattr(headers, "items") else iter(headers)
        out: dict[str, str] = {}
        for name, value in items:
            if isinstance(name, bytes):
                name = name.decode("latin-1")
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            out.setdefault(str(name).strip().lower(), str(value))
        return out
    except Exception:  # a hostile mapping: nothing usable
        return {}


def parse_number(text: str | None, *, limit: float = MAX_COUNT) -> float | None:
    """A finite number ``>= 0`` clamped to ``limit``; ``None`` for garbage, nan, inf or < 0."""
    if text is None:
        return None
    try:
        value = float(str(text).strip())
    except (ValueError, TypeError, OverflowError):
        return None
    if math.isnan(value) or math.isinf(value) or value < 0:
        return None
    return min(value, limit)


_DURATION = re.compile(r"(\d{1,20}(?:\.\d{0,20})?|\.\d{1,20})(ns|us|µs|ms|s|m|h|d)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
          "d": 86_400.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``"1s"``, ``"6m0s"``, ``"12ms"``, ``"1h2m"``) or a
    bare number of seconds; ``None`` for garbage. Clamped to :data:`MAX_SECONDS`."""
    if text is None:
        return None
    text = str(text).strip()
    if not text or len(text) > 200:
        return None
    bare = parse_number(text, limit=MAX_SECONDS)
    if bare is not None:
        return bare
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or math.isnan(total) or math.isinf(total):
        return None
    return min(total, MAX_SECONDS)


def parse_rfc3339(text: str | None, now: float) -> float | None:
    """Seconds from ``now`` (POSIX) until an RFC 3339 time; 0 if past; ``None`` for garbage."""
    if text is None:
        return None
    raw = str(text).strip()
    if not raw or len(raw) > 64:
        return None
    try:
        moment = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1:] in "zZ" else raw)
        if moment.tzinfo is None:
            return None  # RFC 3339 requires an offset: no guessing the time zone
        seconds = moment.timestamp() - now
    except (ValueError, TypeError, OverflowError, OSError):
        return None
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_SECONDS)


def parse_retry_after(headers: Mapping[str, str], now: float) -> tuple[float | None, list[str]]:
    """``(seconds, invalid)`` from ``retry-after-ms`` / ``retry-after`` (lower-case names).

    ``retry-after`` may be seconds or an HTTP-date (a date in the past means 0). Values that
    are present but unusable (garbage, nan, inf, negative) are listed in ``invalid`` as
    ``"name: value"`` and ignored.
    """
    invalid: list[str] = []
    millis = headers.get("retry-after-ms")
    if millis is not None:
        value = parse_number(millis, limit=MAX_SECONDS * 1000.0)
        if value is not None:
            return value / 1000.0, invalid
        invalid.append(f"retry-after-ms: {str(millis)[:64]}")
    raw = headers.get("retry-after")
    if raw is None:
        return None, invalid
    seconds = parse_number(raw, limit=MAX_SECONDS)
    if seconds is not None:
        return seconds, invalid
    text = str(raw).strip()
    if text and not text[0].isdigit() and text[0] not in "+-." and len(text) <= 64:
        try:
            moment = email.utils.parsedate_to_datetime(text)
            if moment is not None and moment.tzinfo is not None:
                delta = moment.timestamp() - now
                if not math.isnan(delta):
                    return min(max(0.0, delta), MAX_SECONDS), invalid
        except (ValueError, TypeError, IndexError, OverflowError, OSError):
            pass
    invalid.append(f"retry-after: {text[:64]}")
    return None, invalid


def _openai(headers: Mapping[str, str]) -> dict[str, LimitState]:
    out: dict[str, LimitState] = {}
    for dimension in ("requests", "tokens"):
        limit = parse_number(headers.get(f"x-ratelimit-limit-{dimension}"))
        remaining = parse_number(headers.get(f"x-ratelimit-remaining-{dimension}"))
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{dimension}"))
        if limit is not None or remaining is not None or reset is not None:
            out[dimension] = LimitState(limit, remaining, reset)
    return out


def _anthropic(headers: Mapping[str, str], now: float) -> dict[str, LimitState]:
    out: dict[str, LimitState] = {}
    for dimension in DIMENSIONS:
        prefix = "anthropic-ratelimit-" + dimension.replace("_", "-")
        limit = parse_number(headers.get(prefix + "-limit"))
        remaining = parse_number(headers.get(prefix + "-remaining"))
        reset = parse_rfc3339(headers.get(prefix + "-reset"), now)
        if limit is not None or remaining is not None or reset is not None:
            out[dimension] = LimitState(limit, remaining, reset)
    return out


_PARAM = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]{0,30})\s*=\s*\"?([^\";,]{0,64})\"?\s*$")


def _params(item: str) -> dict[str, str]:
    """``q=100;w=60`` (or ``limit=100``) parameters of one structured-field item."""
    out: dict[str, str] = {}
    for part in item.split(";"):
        match = _PARAM.match(part)
        if match:
            out.setdefault(match.group(1).lower(), match.group(2).strip())
    return out


def _ietf(headers: Mapping[str, str]) -> dict[str, LimitState]:
    limit = remaining = reset = None
    period = 60.0
    unit = "requests"
    policy = headers.get("ratelimit-policy")
    if policy:
        first = _params(str(policy)[:512].split(",")[0])
        limit = parse_number(first.get("q"))
        window = parse_number(first.get("w"), limit=MAX_SECONDS)
        if limit is None:  # the older form: "100;w=60"
            head = str(policy).split(",")[0].split(";")[0]
            limit = parse_number(head)
        if window:
            period = window
        if first.get("qu") in ("tokens", "content-bytes", "concurrent-requests"):
            unit = "tokens" if first["qu"] == "tokens" else ""
    field_value = headers.get("ratelimit")
    if field_value:
        text = str(field_value)[:512]
        first = _params(text.split(",")[0])
        if "r" in first or "t" in first:  # structured: "default";r=50;t=30
            remaining = parse_number(first.get("r"))
            reset = parse_duration(first.get("t"))
        else:  # older: limit=100, remaining=50, reset=30
            flat: dict[str, str] = {}
            for piece in text.split(","):
                flat.update(_params(piece))
            limit = parse_number(flat.get("limit")) if limit is None else limit
            remaining = parse_number(flat.get("remaining"))
            reset = parse_duration(flat.get("reset"))
    if limit is None:
        limit = parse_number(headers.get("ratelimit-limit"))
    if remaining is None:
        remaining = parse_number(headers.get("ratelimit-remaining"))
    if reset is None:
        reset = parse_duration(headers.get("ratelimit-reset"))
    if not unit or (limit is None and remaining is None and reset is None):
        return {}
    return {unit: LimitState(limit, remaining, reset, period)}


def parse_rate_limit_headers(headers: Any, now: float) -> RateLimitHeaders:
    """Read every rate-limit header of a response (any mapping; never raises).

    :param headers: the response's headers (any case; ``httpx.Headers``, a dict, ...).
    :param now: the wall clock in POSIX seconds (for HTTP-dates and RFC 3339 resets).
    """
    try:
        lowered = lower_headers(headers)
        if not lowered:
            return RateLimitHeaders()
        retry_after, invalid = parse_retry_after(lowered, now)
        source = ""
        dimensions: dict[str, LimitState] = {}
        if any(k.startswith("anthropic-ratelimit-") for k in lowered):
            dimensions, source = _anthropic(lowered, now), "anthropic"
        elif any(k.startswith("x-ratelimit-") for k in lowered):
            dimensions, source = _openai(lowered), "openai"
        elif any(k.startswith("ratelimit") for k in lowered):
            dimensions, source = _ietf(lowered), "ietf"
        if not dimensions:
            source = ""
        return RateLimitHeaders(MappingProxyType(dimensions), retry_after, source,
                                tuple(invalid))
    except Exception:  # defence in depth: a parser must never take a call down
        return RateLimitHeaders()
