"""The default clock: the running asyncio loop's own time.

Kept in a module of its own because it is on the hot path (read once or twice per call) and
is compiled in the accelerated build; :mod:`~stageflow_plus.primitives.clock` re-exports it.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import time
from asyncio.events import _get_running_loop
from collections.abc import Callable

from mypy_extensions import mypyc_attr

__all__ = ["LoopClock"]


@mypyc_attr(allow_interpreted_subclasses=True)
class LoopClock:
    """The running asyncio loop's clock (``loop.time()``); the default everywhere.

    Outside a running loop (e.g. reading ``statistics()`` after ``asyncio.run``) ``now()``
    falls back to ``time.monotonic()``, which is what asyncio's own loops use. For a loop
    that keeps asyncio's ``time()`` the clock reads ``time.monotonic`` directly (the hot
    path reads the time once or twice per call); a loop with its own ``time()`` (uvloop, a
    virtual-time test loop) is always asked.
    """

    __slots__ = ("_loop", "_time")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._time: Callable[[], float] = time.monotonic

    def now(self) -> float:
        loop = _get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._time = (
                time.monotonic
                if loop is None
                or (
                    type(loop).time is asyncio.BaseEventLoop.time
                    and "time" not in getattr(loop, "__dict__", {})  # not patched on the loop
                )
                else loop.time
            )
        return self._time()

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback)

    def __repr__(self) -> str:
        return "LoopClock()"
