"""Listeners that turn limiter events into log lines: stdlib logging (default) or structlog.

The listener protocol (:class:`~stageflow_plus.primitives.lease.LimiterListener`):
``on_queued``, ``on_admitted``, ``on_rejected``, ``on_released``, plus two optional methods
looked up with ``getattr`` — ``on_paused(key, retry_after)`` (a provider's Retry-After paused
a key for every caller) and ``on_limit_changed(key, old, new, reason)`` (a limit was changed
at run time, e.g. by an adaptive controller; call :func:`notify_limit_changed`).

:class:`LoggingListener` is every chain's default. Logger ``stageflow_plus.limiter``:

=========  ==============================================================================
DEBUG      per call: ``queued``, ``admitted`` (after a wait), ``released``, ``refused``;
           built only when DEBUG is enabled for the logger
WARNING    refusals, aggregated: the first on a key at once, then at most one line per key
           per ``interval`` ("412 more calls refused on tool:search in the last 10.0s
           (queue_full: 400, wait_timeout: 12)"); provider pauses, aggregated the same way
INFO       limit changes, aggregated the same way
=========  ==============================================================================

Records carry the call's fields as attributes (``tool``, ``call_id``, ``run_id``,
``tenant``, ``priority``, ``cost``, and ``limiter_event`` such as ``"tool_call.queued"``)
for structured formatters. :class:`StructlogListener` (opt-in, needs ``structlog``) emits
the same events as structlog events.

.. versionadded:: 0.1.0
.. versionchanged:: 0.2.0
   :class:`LoggingListener` (stdlib) replaces :class:`StructlogListener` as the default;
   per-call events are DEBUG and refusals are aggregated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .._logging import Emit, LogDigest, get_logger, record_extra, stdlib_emit
from ..primitives.clock import Clock
from ..primitives.errors import ConfigError, Rejected
from ..primitives.lease import LimiterListener

__all__ = [
    "LoggingListener",
    "MultiListener",
    "StructlogListener",
    "call_fields",
    "notify_limit_changed",
]

DEBUG = logging.DEBUG


def call_fields(info: Any) -> dict[str, Any]:
    """Event fields of a call (a ToolCall, or anything with ``log_fields()``)."""
    fields = getattr(info, "log_fields", None)
    return fields() if callable(fields) else {}


def _describe(fields: dict[str, Any]) -> str:
    if not fields:
        return "call"
    return (f"{fields.get('tool')} call #{fields.get('call_id')} (run {fields.get('run_id')}, "
            f"tenant {fields.get('tenant')}, priority {fields.get('priority')})")


def notify_limit_changed(
    listener: LimiterListener | None, key: str, old: float, new: float, reason: str
) -> None:
    """Tell ``listener`` (e.g. ``chain.gate.limiter.listener``) that a limit changed, if it
    listens for that (``on_limit_changed`` is optional)."""
    on_limit_changed = getattr(listener, "on_limit_changed", None)
    if on_limit_changed is not None:
        on_limit_changed(key, old, new, reason)


class _Events:
    """What both log listeners share: the digests and the per-call fields."""

    __slots__ = ("_changes", "_pauses", "_refusals")

    def __init__(self, emit: Emit, interval: float, clock: Clock | Callable[[], float] | None,
                 max_keys: int) -> None:
        self._refusals = LogDigest(emit, interval=interval, clock=clock, max_keys=max_keys)
        self._pauses = LogDigest(emit, interval=interval, clock=clock, max_keys=max_keys)
        self._changes = LogDigest(emit, interval=interval, clock=clock, max_keys=max_keys)

    def refused(self, info: Any, error: Rejected) -> None:
        key = error.key or error.limiter or "-"

        def first() -> tuple[str, str, dict[str, Any]]:
            fields = call_fields(info)
            return ("tool_call.rejected",
                    f"stageflow-plus: {_describe(fields)} refused ({error.reason}, key {key}): "
                    f"{error}",
                    {**fields, **error.to_dict()})

        self._refusals.note(logging.WARNING, key, error.reason, what="calls refused",
                            event="tool_call.refusals", first=first)

    def paused(self, key: str, retry_after: float) -> None:
        def first() -> tuple[str, str, dict[str, Any]]:
            return ("tool_call.paused",
                    f"stageflow-plus: provider asked to wait {retry_after:g}s: key {key} paused "
                    "for every caller",
                    {"key": key, "retry_after": retry_after})

        self._pauses.note(logging.WARNING, key, "retry_after", what="provider pauses",
                          event="tool_call.pauses", first=first)

    def changed(self, key: str, old: float, new: float, reason: str) -> None:
        def first() -> tuple[str, str, dict[str, Any]]:
            return ("tool_call.limit_changed",
                    f"stageflow-plus: limit {key} changed from {old:g} to {new:g} ({reason})",
                    {"key": key, "old": old, "new": new, "reason": reason})

        self._changes.note(logging.INFO, key, reason, what="limit changes",
                           event="tool_call.limit_changes", first=first)

    def flush(self) -> None:
        for digest in (self._refusals, self._pauses, self._changes):
            digest.flush()


class LoggingListener:
    """Limiter events through the standard library's :mod:`logging` (the chain's default).

    See the module docstring for levels and fields. Nothing is written unless the host's
    logging configuration lets it through (the package logger has only a ``NullHandler``).

    :param logger: default ``logging.getLogger("stageflow_plus.limiter")``.
    :param admissions: also send the DEBUG events of calls admitted without waiting (their
        admission and release). Off by default: the uncontended path then pays for no event.
    :param interval: seconds between two aggregated lines on one key.
    :param clock: the clock of the aggregation windows (the chain passes its own).
    :param max_keys: keys aggregated separately at once; the rest share one line.
    """

    __slots__ = ("_events", "_log", "immediate_events")

    def __init__(
        self,
        *,
        logger: logging.Logger | None = None,
        admissions: bool = False,
        interval: float = 10.0,
        clock: Clock | Callable[[], float] | None = None,
        max_keys: int = 256,
    ) -> None:
        self._log = logger if logger is not None else get_logger("limiter")
        self._events = _Events(stdlib_emit(self._log), interval, clock, max_keys)
        self.immediate_events = bool(admissions)

    def _debug(self, event: str, info: Any, text: str, **more: Any) -> None:
        fields = call_fields(info)
        self._log.debug("stageflow-plus: %s %s", _describe(fields), text,
                        extra=record_extra({"limiter_event": event, **fields, **more}))

    def on_queued(self, info: Any, depth: int) -> None:
        if self._log.isEnabledFor(DEBUG):
            self._debug("tool_call.queued", info, f"queued ({depth} waiting)", depth=depth)

    def on_admitted(self, info: Any, wait: float) -> None:
        if self._log.isEnabledFor(DEBUG):
            self._debug("tool_call.admitted", info, f"admitted after {wait * 1000:.1f} ms",
                        wait_ms=round(wait * 1000, 3))

    def on_rejected(self, info: Any, error: Rejected) -> None:
        if self._log.isEnabledFor(DEBUG):
            self._debug("tool_call.rejected", info, f"refused: {error}", **error.to_dict())
        self._events.refused(info, error)

    def on_released(self, info: Any, held: float) -> None:
        if self._log.isEnabledFor(DEBUG):
            self._debug("tool_call.released", info, f"released after {held * 1000:.1f} ms",
                        held_ms=round(held * 1000, 3))

    def on_paused(self, key: str, retry_after: float) -> None:
        self._events.paused(key, retry_after)

    def on_limit_changed(self, key: str, old: float, new: float, reason: str) -> None:
        self._events.changed(key, old, new, reason)

    def flush(self) -> None:
        """Write the pending aggregated lines now (e.g. at shutdown)."""
        self._events.flush()


class StructlogListener:
    """Limiter events as structlog events (opt-in; needs ``stageflow-plus[structlog]``).

    Event names ``tool_call.queued / admitted / released / rejected`` (debug, per call, with
    ``wait_ms``, ``held_ms``, ``depth`` or the refusal's fields) and the aggregated
    ``tool_call.rejected`` (first on a key) / ``tool_call.refusals`` (warning),
    ``tool_call.paused`` / ``tool_call.pauses`` (warning), ``tool_call.limit_changed`` /
    ``tool_call.limit_changes`` (info), like :class:`LoggingListener`.

    :param admissions: also log calls admitted without waiting (debug).
    :param logger: a structlog logger (default ``structlog.get_logger("stageflow_plus")``).
    :param interval: seconds between two aggregated events on one key.
    :param clock: the clock of the aggregation windows.
    :param max_keys: keys aggregated separately at once.
    :raises ConfigError: structlog is not installed.
    """

    __slots__ = ("_admissions", "_events", "_log", "immediate_events")

    def __init__(
        self,
        *,
        admissions: bool = False,
        logger: Any = None,
        interval: float = 10.0,
        clock: Clock | Callable[[], float] | None = None,
        max_keys: int = 256,
    ) -> None:
        if logger is None:
            try:
                import structlog
            except ModuleNotFoundError as error:
                raise ConfigError(
                    "StructlogListener needs structlog: pip install 'stageflow-plus[structlog]'"
                    " (or use the default LoggingListener)"
                ) from error
            logger = structlog.get_logger("stageflow_plus")
        self._log = logger
        self._admissions = admissions
        self._events = _Events(self._emit, interval, clock, max_keys)
        self.immediate_events = bool(admissions)  # nothing to log for an immediate admission

    def _emit(self, level: int, event: str, message: str, fields: dict[str, Any]) -> None:
        self._log.log(level, event, **fields)

    def on_queued(self, info: Any, depth: int) -> None:
        self._log.debug("tool_call.queued", depth=depth, **call_fields(info))

    def on_admitted(self, info: Any, wait: float) -> None:
        if self._admissions or wait > 0:
            self._log.debug(
                "tool_call.admitted", wait_ms=round(wait * 1000, 3), **call_fields(info)
            )

    def on_rejected(self, info: Any, error: Rejected) -> None:
        self._log.debug("tool_call.rejected", error=str(error), **error.to_dict(),
                        **call_fields(info))
        self._events.refused(info, error)

    def on_released(self, info: Any, held: float) -> None:
        if self._admissions:
            self._log.debug(
                "tool_call.released", held_ms=round(held * 1000, 3), **call_fields(info)
            )

    def on_paused(self, key: str, retry_after: float) -> None:
        self._events.paused(key, retry_after)

    def on_limit_changed(self, key: str, old: float, new: float, reason: str) -> None:
        self._events.changed(key, old, new, reason)

    def flush(self) -> None:
        """Emit the pending aggregated events now (e.g. at shutdown)."""
        self._events.flush()


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

    def on_limit_changed(self, key: str, old: float, new: float, reason: str) -> None:
        for listener in self.listeners:
            notify_limit_changed(listener, key, old, new, reason)
