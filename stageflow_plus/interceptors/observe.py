"""Listeners that turn limiter events into structlog events.

Event names: ``tool_call.queued`` (info), ``tool_call.admitted`` (debug),
``tool_call.rejected`` (warning), ``tool_call.released`` (debug), ``tool_call.paused``
(warning, a provider's Retry-After). Each carries tool, call_id, run_id, tenant, priority
and cost, plus ``wait_ms``, ``held_ms``, ``depth``, ``reason``, ``key`` or ``retry_after``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from ..primitives.errors import Rejected
from ..primitives.lease import LimiterListener

__all__ = ["MultiListener", "StructlogListener", "call_fields"]


def call_fields(info: Any) -> dict[str, Any]:
    """Event fields of a call (a ToolCall, or anything with ``log_fields()``)."""
    fields = getattr(info, "log_fields", None)
    return fields() if callable(fields) else {}


class StructlogListener:
    """Logs limiter events through structlog (logger name ``stageflow_plus``).

    :param admissions: also log every admission and release at debug level. Off by default:
        with structlog's default configuration debug events are rendered, which would cost
        far more than the limiter itself on the uncontended path.
    """

    __slots__ = ("_admissions", "_log", "immediate_events")

    def __init__(self, *, admissions: bool = False, logger: Any = None) -> None:
        self._log = logger if logger is not None else structlog.get_logger("stageflow_plus")
        self._admissions = admissions
        self.immediate_events = bool(admissions)  # nothing to log for an immediate admission

    def on_queued(self, info: Any, depth: int) -> None:
        self._log.info("tool_call.queued", depth=depth, **call_fields(info))

    def on_admitted(self, info: Any, wait: float) -> None:
        if self._admissions or wait > 0:
            self._log.debug(
                "tool_call.admitted", wait_ms=round(wait * 1000, 3), **call_fields(info)
            )

    def on_rejected(self, info: Any, error: Rejected) -> None:
        self._log.warning(
            "tool_call.rejected",
            reason=error.reason,
            key=error.key,
            queue_depth=error.queue_depth,
            retry_after=error.retry_after,
            error=str(error),
            **call_fields(info),
        )

    def on_released(self, info: Any, held: float) -> None:
        if self._admissions:
            self._log.debug(
                "tool_call.released", held_ms=round(held * 1000, 3), **call_fields(info)
            )

    def on_paused(self, key: str, retry_after: float) -> None:
        self._log.warning("tool_call.paused", key=key, retry_after=retry_after)


class MultiListener:
    """Fans events out to several listeners, in order."""

    __slots__ = ("immediate_events", "listeners")

    def __init__(self, listeners: Sequence[LimiterListener]) -> None:
        self.listeners = tuple(listeners)
        self.immediate_events = any(getattr(x, "immediate_events", True) for x in self.listeners)

    def on_queued(self, info: Any, depth: int) -> None:
        for listener in self.listeners:
            listener.on_queued(info, depth)

    def on_admitted(self, info: Any, wait: float) -> None:
        for listener in self.listeners:
            listener.on_admitted(info, wait)

    def on_rejected(self, info: Any, error: Rejected) -> None:
        for listener in self.listeners:
            listener.on_rejected(info, error)

    def on_released(self, info: Any, held: float) -> None:
        for listener in self.listeners:
            listener.on_released(info, held)

    def on_paused(self, key: str, retry_after: float) -> None:
        for listener in self.listeners:
            on_paused = getattr(listener, "on_paused", None)
            if on_paused is not None:
                on_paused(key, retry_after)

    def on_observer_error(self, info: Any, hook: str, error: Exception) -> None:
        for listener in self.listeners:
            handler = getattr(listener, "on_observer_error", None)
            if handler is not None:
                handler(info, hook, error)
