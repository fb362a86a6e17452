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
from typing import Any

from mypy_extensions import mypyc_attr

__all__ = ["LoopClock"]


def _not_running() -> bool:
    return False


@mypyc_attr(allow_interpreted_subclasses=True)
class LoopClock:
    """The running asyncio loop's clock (``loop.time()``); the default everywhere.

    Outside a running loop (e.g. reading ``statistics()`` after ``asyncio.run``) ``now()``
    falls back to ``time.monotonic()``, which is what asyncio's own loops use. For a loop
    that keeps asyncio's ``time()`` the clock reads ``time.monotonic`` directly (the hot
    path reads the time once or twice per call); a loop with its own ``time()`` (uvloop, a
    virtual-time test loop) is always asked.
    """

    __slots__ = ("_base_loop", "_loop", "_loop_running", "_time")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_running: Callable[[], bool] = _not_running
        # the loop last seen when it keeps asyncio's own is_running() (then "running" is
        # its _thread_id being set, read without a Python call), else None
        self._base_loop: Any = None
        self._time: Callable[[], float] = time.monotonic

    def now(self) -> float:
        # The loop last seen, while it still runs, is the running loop: one loop runs per
        # thread at a time, and a limiter lives on one loop. Asking asyncio instead costs a
        # getpid() system call per read (its fork check), several per queued call.
        base = self._base_loop
        if base is not None:
            if base._thread_id is None:  # (BaseEventLoop.is_running, inlined)
                self._see(_get_running_loop())
        elif not self._loop_running():
            self._see(_get_running_loop())
        return self._time()

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop (``RuntimeError`` when none runs), as :meth:`now` finds it."""
        if not self._loop_running():
            self._see(_get_running_loop())
        loop = self._loop
        if loop is None:
            raise RuntimeError("no running event loop")
        return loop

    def _see(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._loop_running = loop.is_running if loop is not None else _not_running
        self._base_loop = (
            loop if loop is not None and type(loop).is_running is asyncio.BaseEventLoop.is_running
            else None
        )
        self._time = (
            time.monotonic
            if loop is None
            or (
                type(loop).time is asyncio.BaseEventLoop.time
                and "time" not in getattr(loop, "__dict__", {})  # not patched on the loop
            )
            else loop.time
        )

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.running_loop().call_at(when, callback)

    def __repr__(self) -> str:
        return "LoopClock()"
