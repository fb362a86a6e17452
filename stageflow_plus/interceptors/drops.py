"""Which outcomes of a call are *drops*: the provider refused or failed it for lack of room.

A drop is the hard signal of :class:`~stageflow_plus.interceptors.adaptive.
AdaptiveConcurrency` (the limit goes down at once). :func:`default_is_drop` is a single
injectable function (``AdaptiveConcurrency(is_drop=...)``): replace it with a recognizer
that knows your provider's answers.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..primitives.errors import Rejected

__all__ = ["DROP_STATUSES", "default_is_drop"]

DROP_STATUSES = frozenset({429, 503, 529})
"""HTTP statuses that mean "too much load": Too Many Requests, Service Unavailable and
Anthropic's 529 Overloaded."""

_PLAIN = frozenset({str, bytes, int, float, bool, list, tuple})


def _drop_status(value: object) -> bool:
    return type(value) is int and value in DROP_STATUSES


def _timeout_class(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or any(
        "Timeout" in kind.__name__ for kind in type(error).__mro__
    )


def default_is_drop(outcome: Any) -> bool:
    """Whether a call's result or exception is a drop (the provider had no room for it).

    Drops: ``TimeoutError`` (``asyncio.TimeoutError`` too) and exceptions whose class or a
    base class has ``Timeout`` in its name (``httpx.ReadTimeout``, ``openai.APITimeoutError``);
    anything with ``status_code`` (or ``response.status_code``, as ``openai`` / ``anthropic``
    / ``httpx`` errors carry) in :data:`DROP_STATUSES`; anything with a ``retry_after`` that is
    not ``None`` (Stageflow's ``RateLimitError``); a mapping — or a result's ``data`` mapping,
    as in a Stageflow ``ToolOutput`` — with ``retry_after``, or ``status`` / ``status_code``
    in :data:`DROP_STATUSES`.

    Never drops: our own refusals (:class:`~stageflow_plus.primitives.errors.Rejected`, from
    this chain or an inner one), plain values (``str``, numbers, lists, dicts without the
    keys above) and results with ``success`` set to ``True``.
    """
    kind = type(outcome)
    if outcome is None or kind in _PLAIN:
        return False
    if isinstance(outcome, BaseException):
        if isinstance(outcome, Rejected):
            return False
        if _timeout_class(outcome):
            return True
    elif getattr(outcome, "success", None) is True:
        return False
    status = getattr(outcome, "status_code", None)
    if status is None:
        response = getattr(outcome, "response", None)
        if response is not None:
            status = getattr(response, "status_code", None)
    if _drop_status(status) or getattr(outcome, "retry_after", None) is not None:
        return True
    data = outcome if isinstance(outcome, Mapping) else getattr(outcome, "data", None)
    if isinstance(data, Mapping):
        return (
            data.get("retry_after") is not None
            or _drop_status(data.get("status"))
            or _drop_status(data.get("status_code"))
        )
    return False
