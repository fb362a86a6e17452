"""Injectable time.

Limiters read the time and schedule wake-ups only through a :class:`Clock`. Production code
uses :class:`LoopClock` (the running event loop's monotonic clock); tests drive a
:class:`ManualClock` and advance it explicitly, so rates, aging and deadlines are exact and no
test depends on how fast the machine is.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

from .loop_clock import LoopClock

__all__ = ["CallableClock", "Clock", "LoopClock", "ManualClock", "TimerHandle", "as_clock"]


class TimerHandle(Protocol):
    """What :meth:`Clock.call_at` returns: something that can be cancelled."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """A monotonic clock in seconds that can schedule one callback at a given time."""

    def now(self) -> float:
        """The current time in seconds (monotonic, arbitrary origin)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback()`` once, on the event loop, when ``now() >= when``."""
        ...


class CallableClock:
    """Adapts a plain ``Callable[[], float]`` (e.g. ``time.monotonic``) to :class:`Clock`.

    Wake-ups are scheduled on the running loop with ``call_later(when - fn())``.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], float]) -> None:
        self._fn = fn

    def now(self) -> float:
        return self._fn()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        delay = max(0.0, when - self._fn())
        return asyncio.get_running_loop().call_later(delay, callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to: the test clock.

    ``advance(seconds)`` moves time forward and runs, in time order, every callback that
    became due (each sees ``now()`` equal to its own due time). Waiters woken by those
    callbacks run when the test next yields to the loop, e.g. with
    ``await anyio.wait_all_tasks_blocked()``.
    """

    __slots__ = ("_now", "_seq", "_timers")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    @property
    def pending_timers(self) -> int:
        """How many scheduled, not cancelled callbacks are waiting to fire."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def next_due(self) -> float | None:
        """The due time of the earliest pending callback, or ``None``."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0), firing due callbacks in order."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance: seconds must be >= 0, got {seconds!r}")
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when``, firing due callbacks in order."""
        if when < self._now:
            raise ValueError(f"ManualClock.advance_to: {when!r} is before now ({self._now!r})")
        while self._timers and self._timers[0][0] <= when:
            due, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, due)
            timer.callback()
        self._now = when

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r}, pending={self.pending_timers})"


def as_clock(clock: Clock | Callable[[], float] | None) -> Clock:
    """Normalise the ``clock=`` argument every limiter accepts.

    ``None`` gives :class:`LoopClock`; a :class:`Clock` is returned as is; a bare callable
    returning seconds is wrapped in :class:`CallableClock`.
    """
    if clock is None:
        return LoopClock()
    if hasattr(clock, "call_at") and hasattr(clock, "now"):
        return clock
    if callable(clock):
        return CallableClock(clock)
    raise TypeError(f"clock must be a Clock or a Callable[[], float], not {type(clock).__name__}")
