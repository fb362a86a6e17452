"""The dispatch timer of one process: waits that no release ends.

Releases wake waiters through their mailboxes (:mod:`.mailbox`). Waits that no release
ends — a bucket refilling, a provider pause running out, a crashed holder's lease
expiring — are ended by :class:`DispatchTimer`: every script answers the earliest time the
pass could grant more, and the process runs the ``tick`` entry point then. The
heartbeat (every ``ttl / 3``) also asks for the state of every waiter of the process: the
fallback for a mailbox message lost with a connection.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from ..primitives.errors import BackendUnavailable

__all__ = ["DispatchTimer"]


class DispatchTimer:
    """One loop timer per process: runs the dispatch pass when a blocked waiter may go.

    The pass is due at the time a script answered; the process of the waiter it is for runs
    it then, every other process with waiters only :data:`FALLBACK_S` later (if that process
    died meanwhile): one pass per refill, not one per process.

    :param run_tick: runs the ``tick`` entry point and returns ``(wake-at ms, now ms, process)``.
    :param active: whether this process still has waiters (no waiter, no tick).
    :param process: this process's id in the queue.
    """

    __slots__ = ("_active", "_at", "_handle", "_process", "_run_tick", "_running")

    FALLBACK_S = 0.05

    def __init__(self, run_tick: Callable[[], Awaitable[tuple[float | None, float, str]]],
                 active: Callable[[], bool], process: str = "") -> None:
        self._run_tick = run_tick
        self._active = active
        self._process = process
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._running: asyncio.Task[None] | None = None

    def schedule(self, wake_at_ms: float | None, now_ms: float, owner: str = "") -> None:
        """Run a pass at server time ``wake_at_ms`` (answered with ``now_ms``) — later by
        :data:`FALLBACK_S` when the pass is for another process's waiter — unless one is
        already due earlier."""
        if wake_at_ms is None or not self._active():
            return
        loop = asyncio.get_running_loop()
        # a little after the server's due time: the pass then finds the bucket refilled
        at = loop.time() + max(0.0, wake_at_ms - now_ms) / 1000 + 0.0002
        if owner and owner != self._process:
            at += self.FALLBACK_S
        if self._handle is not None:
            if self._at <= at:
                return
            self._handle.cancel()
        self._at = at
        self._handle = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle, self._at = None, math.inf
        if self._running is not None and not self._running.done():
            return  # a pass is on its way; its answer reschedules
        self._running = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        try:
            wake_at, now, owner = await self._run_tick()
        except BackendUnavailable:
            return  # the heartbeat and the next acquire try again
        self.schedule(wake_at, now, owner)

    def cancel(self) -> None:
        """Drop the pending timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle, self._at = None, math.inf
        if self._running is not None:
            self._running.cancel()
