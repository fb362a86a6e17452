"""The package's logging: stdlib loggers under ``stageflow_plus``, quiet by default.

Every module logs through :func:`get_logger` (``"stageflow_plus"`` or a child such as
``"stageflow_plus.limiter"``). The package logger carries a :class:`logging.NullHandler` and
nothing else, so the host's logging configuration decides what is shown: with
``logging.basicConfig(level=logging.WARNING)`` nothing below WARNING appears, and a library
user who configures nothing sees nothing (not even Python's "last resort" stderr handler).

Events that may repeat per call (refusals, provider pauses, limit changes) go through a
:class:`LogDigest`: the first one on a key is logged at once, the ones that follow within
``interval`` seconds are counted and logged as **one** summary line when the interval ends,
so a refusal storm costs one line per key per interval, never one per call.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .primitives.clock import Clock, TimerHandle, as_clock
from .primitives.errors import ConfigError

__all__ = ["LOGGER_NAME", "Emit", "LogDigest", "get_logger", "record_extra", "stdlib_emit"]

LOGGER_NAME = "stageflow_plus"
"""The root of the package's loggers; configure this one to see (or silence) them all."""

_root = logging.getLogger(LOGGER_NAME)
if not any(isinstance(h, logging.NullHandler) for h in _root.handlers):
    _root.addHandler(logging.NullHandler())

OTHER_KEYS = "(other keys)"
"""The digest key events are counted under once ``max_keys`` keys are being tracked."""


def get_logger(child: str | None = None) -> logging.Logger:
    """The package logger, or its child ``stageflow_plus.<child>``."""
    return _root if not child else logging.getLogger(f"{LOGGER_NAME}.{child}")


@dataclass(slots=True)
class _Window:
    """Events on one key since ``start`` that were counted instead of logged."""

    start: float
    level: int
    what: str
    event: str
    count: int = 0
    labels: dict[str, int] = field(default_factory=dict)


Emit = Callable[[int, str, str, dict[str, Any]], None]
"""``emit(level, event, message, fields)``: writes one line (see :func:`stdlib_emit`)."""


_RESERVED = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime"}


def record_extra(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as ``extra=`` of a log call: names a ``LogRecord`` already has (e.g.
    ``message``) get a ``field_`` prefix instead of raising ``KeyError``."""
    if _RESERVED.isdisjoint(fields):
        return fields
    return {(f"field_{k}" if k in _RESERVED else k): v for k, v in fields.items()}


def stdlib_emit(logger: logging.Logger) -> Emit:
    """An :data:`Emit` writing ``message`` to ``logger`` with ``fields`` (and the event name
    as ``limiter_event``) as attributes of the record, for structured formatters."""

    def emit(level: int, event: str, message: str, fields: dict[str, Any]) -> None:
        if logger.isEnabledFor(level):
            logger.log(level, "%s", message,
                       extra=record_extra({"limiter_event": event, **fields}))

    return emit


class LogDigest:
    """At most one log line per key per ``interval`` seconds for a repeating event.

    :meth:`note` logs the first event on a key at once and opens a window of ``interval``
    seconds on it; events on that key inside the window are only counted (per label, e.g.
    the refusal reason). When the window ends, one summary line says how many there were
    (``"stageflow-plus: 412 more calls refused on tool:search in the last 10.0s
    (queue_full: 400, wait_timeout: 12)"``) and a new window opens; a window that ends with
    nothing counted closes, and the key's next event is logged at once again.

    Windows end on a timer scheduled on ``clock`` (one timer for the whole digest, none
    while nothing is pending); without a running event loop they end at the next
    :meth:`note` or :meth:`flush`. At most ``max_keys`` keys are tracked at once; events on
    further keys are counted under ``"(other keys)"``, so hostile keys cannot grow it.

    :param emit: writes a line (:func:`stdlib_emit`, or a structlog adapter).
    :param interval: seconds of a window (> 0).
    :param clock: a :class:`~stageflow_plus.primitives.clock.Clock` or ``Callable[[],
        float]`` (default: the running loop's clock).
    :param max_keys: keys tracked at once (>= 1).
    """

    __slots__ = ("_clock", "_due", "_emit", "_timer", "_windows", "interval", "max_keys")

    def __init__(
        self,
        emit: Emit,
        *,
        interval: float = 10.0,
        clock: Clock | Callable[[], float] | None = None,
        max_keys: int = 256,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
            0 < interval < math.inf
        ):
            raise ConfigError(f"LogDigest: interval must be a number of seconds > 0, "
                              f"got {interval!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigError(f"LogDigest: max_keys must be an int >= 1, got {max_keys!r}")
        self._emit = emit
        self.interval = float(interval)
        self.max_keys = max_keys
        self._clock = as_clock(clock)
        self._windows: dict[str, _Window] = {}
        self._due = math.inf  # earliest end of an open window
        self._timer: TimerHandle | None = None

    def note(
        self,
        level: int,
        key: str,
        label: str,
        *,
        what: str,
        event: str,
        first: Callable[[], tuple[str, str, dict[str, Any]]],
    ) -> None:
        """One event on ``key``: written now, or counted under ``label`` for the summary.

        :param what: the events in the summary's words (``"calls refused"``).
        :param event: the summary's event name (``"tool_call.refusals"``).
        :param first: builds ``(event, message, fields)`` of a line written now; called
            only then (a counted event costs no formatting).
        """
        now = self._clock.now()
        if now >= self._due:
            self._close_due(now)
        window = self._windows.get(key)
        if window is None and len(self._windows) >= self.max_keys:
            key = OTHER_KEYS
            window = self._windows.get(key)
        if window is not None:
            window.count += 1
            window.labels[label] = window.labels.get(label, 0) + 1
            return
        self._windows[key] = _Window(now, level, what, event)
        self._emit(level, *first())
        self._arm(now + self.interval)

    def flush(self) -> None:
        """Write every pending summary now and close every window."""
        now = self._clock.now()
        for key, window in list(self._windows.items()):
            self._summarize(key, window, now)
        self._windows.clear()
        self._due = math.inf
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def pending(self) -> int:
        """Events counted and not yet written in a summary."""
        return sum(w.count for w in self._windows.values())

    def _close_due(self, now: float) -> None:
        due = math.inf
        for key, window in list(self._windows.items()):
            end = window.start + self.interval
            if end > now:
                due = min(due, end)
            elif window.count:
                self._summarize(key, window, now)
                # keep counting for one more window: at most one line per interval
                self._windows[key] = _Window(now, window.level, window.what, window.event)
                due = min(due, now + self.interval)
            else:
                del self._windows[key]
        self._due = due

    def _summarize(self, key: str, window: _Window, now: float) -> None:
        if not window.count:
            return
        labels = ", ".join(f"{name}: {n}" for name, n in
                           sorted(window.labels.items(), key=lambda item: (-item[1], item[0])))
        elapsed = now - window.start
        self._emit(
            window.level,
            window.event,
            f"stageflow-plus: {window.count} more {window.what} on {key} in the last "
            f"{elapsed:.1f}s ({labels})",
            {"key": key, "count": window.count, "labels": dict(window.labels),
             "window_s": round(elapsed, 3)},
        )

    def _arm(self, when: float) -> None:
        if when >= self._due:
            return
        self._due = when
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self._timer = self._clock.call_at(when, self._on_timer)
        except RuntimeError:  # no running event loop: windows end at the next note()/flush()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock.now()
        self._close_due(now)
        if self._due < math.inf:
            due, self._due = self._due, math.inf
            self._arm(due)
