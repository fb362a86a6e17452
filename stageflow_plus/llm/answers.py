"""Recognising a provider's answer — status, headers, Retry-After — in a tool's outcome.

A tool call ends with a result or an exception, in whatever shape the tool's client library
gives. :func:`read_answer` finds the provider's answer in all the common ones, by duck
typing (no client library is imported):

==================================  ========================================================
outcome                             where the answer is
==================================  ========================================================
``openai`` / ``anthropic`` errors   ``.status_code`` and ``.response`` (an HTTP response)
``httpx.HTTPStatusError``           ``.response``
``httpx.Response`` (and alikes)     ``.status_code`` and ``.headers``
``aiohttp.ClientResponseError``     ``.status`` and ``.headers``
Stageflow ``RateLimitError``        ``.retry_after`` (seconds; a rate-limit answer: 429)
a ``ToolOutput`` / ``StageOutput``  ``.data``: ``status``, ``retry_after``,
                                    ``retry_after_ms``, ``headers`` (or a raw response
                                    under ``response``)
a mapping                           the same keys
==================================  ========================================================

An exception that wraps another (``raise ToolError(...) from exc``, Stageflow's
``ToolExecutionError``) is followed through ``__cause__`` / ``.cause`` (three levels).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .headers import (
    MAX_SECONDS,
    RateLimitHeaders,
    lower_headers,
    parse_number,
    parse_rate_limit_headers,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "ProviderAnswer",
    "default_retry_after",
    "read_answer",
]

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
"""Statuses the official clients retry (529: Anthropic's "overloaded")."""

_PLAIN = frozenset({str, bytes, int, float, bool, list, tuple, dict, type(None)})
_EMPTY: Mapping[str, str] = MappingProxyType({})
_DATA_ONLY: set[type] = set()
"""Result types (exactly these, not subclasses) whose provider answer can only be in their
``data`` mapping: they have no ``response``, ``headers``, ``status_code``, ``status`` or
``retry_after`` attribute. Stageflow's ``ToolOutput`` classes (``stageflow_plus.stageflow.
tools`` adds them: this module imports no Stageflow module)."""


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """What a provider said, as found in a tool's outcome.

    :ivar status: the HTTP status (429 for a bare ``retry_after``), or ``None``.
    :ivar headers: the response's headers, names in lower case (empty when none were found).
    :ivar limits: the rate-limit headers, parsed.
    :ivar retry_after: seconds to wait (a header, or a ``retry_after`` value), or ``None``.
    :ivar invalid: values that were present but unusable (``"name: value"``), for logs.
    """

    status: int | None
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    limits: RateLimitHeaders = field(default_factory=RateLimitHeaders)
    retry_after: float | None = None
    invalid: tuple[str, ...] = ()

    @property
    def rate_limited(self) -> bool:
        """A 429, or an answer that asks to wait (a Retry-After with a 503/529 too)."""
        return self.status == 429 or (
            self.retry_after is not None and self.status in (None, 503, 529)
        )

    @property
    def should_retry(self) -> bool | None:
        """The provider's ``x-should-retry`` header: ``True``, ``False`` or ``None``."""
        value = self.headers.get("x-should-retry", "").strip().lower()
        return True if value == "true" else False if value == "false" else None


def _status(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 100 <= value <= 999:
        return value
    status_value = getattr(value, "value", None)  # an HTTPStatus-like enum
    return status_value if isinstance(status_value, int) and 100 <= status_value <= 999 else None


def _seconds(value: Any, scale: float = 1.0) -> tuple[float | None, str | None]:
    """A ``retry_after`` value in seconds; ``(None, note)`` when present but unusable."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        return None, f"retry_after: {value!r}"
    if isinstance(value, (int, float)):
        number = float(value)
        if math.isnan(number) or math.isinf(number) or number < 0:
            return None, f"retry_after: {value!r}"
        return min(number * scale, MAX_SECONDS), None
    if isinstance(value, (str, bytes)):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        parsed = parse_number(text, limit=MAX_SECONDS / scale)
        if parsed is None:
            return None, f"retry_after: {text[:64]}"
        return parsed * scale, None
    return None, f"retry_after: {type(value).__name__}"


def _from_response(response: Any, status: Any, now: float) -> ProviderAnswer | None:
    code = _status(status) if status is not None else _status(
        getattr(response, "status_code", None) or getattr(response, "status", None)
    )
    headers = lower_headers(getattr(response, "headers", None))
    if code is None and not headers:
        return None
    limits = parse_rate_limit_headers(headers, now)
    return ProviderAnswer(code, MappingProxyType(headers), limits, limits.retry_after,
                          limits.invalid)


_KEYS = frozenset({"status", "status_code", "headers", "retry_after", "retry_after_ms",
                   "response"})


def _from_data(data: Mapping[str, Any], now: float) -> ProviderAnswer | None:
    try:
        if _KEYS.isdisjoint(data.keys()):
            return None  # nothing a provider said
    except Exception:  # a hostile mapping
        return None
    response = data.get("response") if "headers" not in data else None
    if response is not None and hasattr(response, "headers") and (
        hasattr(response, "status_code") or hasattr(response, "status")
    ):  # a ToolOutput carrying a raw response (e.g. an SDK's with_raw_response)
        return _from_response(response, None, now)
    try:
        status = _status(data.get("status", data.get("status_code")))
        headers = lower_headers(data.get("headers"))
        limits = parse_rate_limit_headers(headers, now) if headers else RateLimitHeaders()
        invalid = list(limits.invalid)
        retry_after, note = _seconds(data.get("retry_after"))
        if note:
            invalid.append(note)
        if retry_after is None:
            retry_after, note = _seconds(data.get("retry_after_ms"), 0.001)
            if note:
                invalid.append(note.replace("retry_after", "retry_after_ms"))
        if retry_after is None:
            retry_after = limits.retry_after
    except Exception:  # a hostile mapping
        return None
    if status is None and retry_after is None and not headers and not invalid:
        return None
    if status is None and retry_after is not None:
        status = 429
    return ProviderAnswer(status, MappingProxyType(headers), limits, retry_after, tuple(invalid))


def _read_one(outcome: Any, now: float) -> ProviderAnswer | None:
    if isinstance(outcome, Mapping):
        return _from_data(outcome, now)
    response = getattr(outcome, "response", None)
    if response is not None and (
        hasattr(response, "headers") or hasattr(response, "status_code")
    ):  # an openai/anthropic APIStatusError, an httpx.HTTPStatusError
        return _from_response(response, getattr(outcome, "status_code", None), now)
    if hasattr(outcome, "headers") and (
        hasattr(outcome, "status_code") or hasattr(outcome, "status")
    ):  # an httpx.Response, an aiohttp.ClientResponseError / ClientResponse
        return _from_response(outcome, None, now)
    if hasattr(outcome, "retry_after"):  # Stageflow's RateLimitError, ProviderRateLimited
        retry_after, note = _seconds(getattr(outcome, "retry_after", None))
        status = _status(getattr(outcome, "status_code", None)) or 429
        if retry_after is None and note is None:
            return None
        return ProviderAnswer(status, retry_after=retry_after,
                              invalid=(note,) if note else ())
    data = getattr(outcome, "data", None)
    if isinstance(data, Mapping):  # a ToolOutput, a StageOutput
        return _from_data(data, now)
    return None


def read_answer(outcome: Any, *, now: float | None = None) -> ProviderAnswer | None:
    """The provider's answer in a tool's result or exception, or ``None`` (never raises).

    :param now: wall-clock POSIX seconds for HTTP-date values (default ``time.time()``).
    """
    if type(outcome) in _PLAIN:
        return _from_data(outcome, time.time() if now is None else now) if isinstance(
            outcome, dict) else None
    wall = time.time() if now is None else now
    seen = 0
    current: Any = outcome
    try:
        while current is not None and seen < 4:
            answer = _read_one(current, wall)
            if answer is not None:
                return answer
            if not isinstance(current, BaseException):
                return None
            current = current.__cause__ or getattr(current, "cause", None)
            seen += 1
    except Exception:  # a hostile object (a property that raises): no answer
        return None
    return None


def _headerless(outcome: Any) -> bool:
    """``True`` when ``outcome`` surely carries no rate-limit headers: a dict, or a result of
    a :data:`_DATA_ONLY` type, whose data holds neither ``headers`` nor a raw ``response``
    (or that has no data). Then ``read_answer(outcome)`` finds no limits (``None``, or an
    answer with empty ``limits``) and need not run. ``False`` means: read the answer.

    The learner's fast path: most answers carry no headers, and reading one builds a
    :class:`ProviderAnswer` for nothing.
    """
    kind = type(outcome)
    if kind is dict:
        data: Any = outcome
    elif kind in _DATA_ONLY:
        data = outcome.data
        if data is None:
            return True
    else:
        return outcome is None
    return type(data) is dict and "headers" not in data and "response" not in data


def default_retry_after(outcome: Any) -> float | None:
    """Seconds a provider asked to wait, found in a result or exception (see
    :func:`read_answer`), or ``None`` when the outcome is not a rate-limit answer.

    A 429/503/529 with ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP-date), an
    object with a numeric ``retry_after`` (Stageflow's ``RateLimitError``), or a result whose
    ``data`` holds ``retry_after`` / ``retry_after_ms``. A successful answer's headers never
    pause anything.
    """
    answer = read_answer(outcome)
    if answer is None or answer.retry_after is None:
        return None
    if answer.status is not None and answer.status < 400:
        return None
    return answer.retry_after


RetryAfterFinder = Callable[[Any], float | None]
