"""Wake-ups without polling: the mailbox reader and the dispatch timer of one process.

A call that cannot be granted at once waits in the global queue in Redis (see
:file:`lua/prelude.lua`). Whoever frees capacity — a release, a cancellation, an expiry —
runs the dispatch pass in the same script, and the pass pushes the id of every waiter it
granted onto the mailbox list of that waiter's process (``{prefix}:wake:<process>``).
:class:`Mailbox` reads that list with a blocking ``BLPOP`` on a connection of its own and
resolves the waiter's future: one server push per grant, no poll loop.

Waits that no release ends — a bucket refilling, a provider pause running out, a crashed
holder's lease expiring — are ended by :class:`DispatchTimer`: every script answers the
earliest time the pass could grant more, and the process runs ``tick.lua`` then. The
heartbeat (every ``ttl / 3``) also asks for the state of every waiter of the process: the
fallback for a mailbox message lost with a connection.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from .base import BackendUnavailable

__all__ = ["DispatchTimer", "Mailbox"]

_log = logging.getLogger("stageflow_plus.redis")


class Mailbox:
    """Reads this process's mailbox list and resolves the futures of granted waiters.

    :param client: a client whose connections may block (no socket timeout).
    :param key: the mailbox list.
    :param poll_s: seconds one ``BLPOP`` blocks before it is sent again.
    :param stall_s: extra seconds after which a ``BLPOP`` that did not answer means the
        server stalled.
    :param describe: turns an exception into text with no secret in it.
    :param reachable: asked when the mailbox connection fails: whether Redis itself still
        answers (it runs a heartbeat, which also wakes waiters granted meanwhile); only if
        not are the waiters handed to the unavailability policy.
    """

    __slots__ = ("_client", "_closed", "_describe", "_key", "_poll_s", "_reachable",
                 "_stall_s", "_task", "waiters", "woken")

    def __init__(self, client: Any, key: str, *, poll_s: float, stall_s: float,
                 describe: Callable[[BaseException], str],
                 reachable: Callable[[], Awaitable[bool]]) -> None:
        self._client = client
        self._reachable = reachable
        self._key = key
        self._poll_s = poll_s
        self._stall_s = stall_s
        self._describe = describe
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.waiters: dict[str, asyncio.Future[float]] = {}  # id -> grant time (server ms)
        self.woken = 0

    def expect(self, member: str) -> asyncio.Future[float]:
        """Register a waiter *before* its acquire is sent (its grant may arrive first); call
        :meth:`listen` once it is queued."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a waiter that gave up never reads its error
        self.waiters[member] = future
        return future

    def forget(self, member: str) -> None:
        """Stop expecting ``member`` (granted at once, refused, or abandoned)."""
        self.waiters.pop(member, None)

    def grant(self, member: str, at_ms: float) -> None:
        """``member`` was granted at server time ``at_ms`` (0: unknown) — a mailbox message,
        or the heartbeat's fallback."""
        future = self.waiters.pop(member, None)
        if future is not None and not future.done():
            future.set_result(at_ms)

    def fail_all(self, error: BackendUnavailable) -> None:
        """Redis became unreachable: every waiter gets ``error`` (its policy decides)."""
        waiters, self.waiters = self.waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(BackendUnavailable(str(error), limiter="redis",
                                                        retry_after=error.retry_after))

    def listen(self) -> None:
        """Make sure the mailbox is being read (a waiter of this process is queued)."""
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._closed:
            return
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.get_running_loop().create_task(
                self._read(), name="stageflow_plus.redis.mailbox")

    async def _read(self) -> None:
        while self.waiters and not self._closed:
            try:
                async with asyncio.timeout(self._poll_s + self._stall_s):
                    item = await self._client.blpop([self._key], timeout=self._poll_s)
            except (RedisError, OSError, TimeoutError) as exc:
                text = self._describe(exc)
                with contextlib.suppress(Exception):
                    await self._client.connection_pool.disconnect()
                if await self._reachable():  # a hiccup of this connection only: read again
                    _log.debug("redis mailbox read failed (%s); Redis answers: reading again",
                               text)
                    continue
                _log.warning("redis mailbox unavailable: %s; %d waiters fall back to the "
                             "unavailability policy", text, len(self.waiters))
                self.fail_all(BackendUnavailable(f"Redis mailbox unavailable: {text}",
                                                 limiter="redis"))
                return
            if item is not None:
                text = item[1].decode() if isinstance(item[1], bytes) else str(item[1])
                member, _, at = text.partition("@")
                if member in self.waiters:
                    self.woken += 1
                # (an unknown id was abandoned: its cancel script released the grant)
                self.grant(member, float(at) if at else 0.0)

    async def aclose(self) -> None:
        """Stop reading (waiters left are failed as unavailable)."""
        self._closed = True
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.wait([task], timeout=self._poll_s + self._stall_s)
        self.fail_all(BackendUnavailable("the Redis backend was closed", limiter="redis"))


def _retrieved(future: asyncio.Future[float]) -> None:
    if not future.cancelled():
        future.exception()


class DispatchTimer:
    """One loop timer per process: runs the dispatch pass when a blocked waiter may go.

    The pass is due at the time a script answered; the process of the waiter it is for runs
    it then, every other process with waiters only :data:`FALLBACK_S` later (if that process
    died meanwhile): one pass per refill, not one per process.

    :param run_tick: sends ``tick.lua`` and returns ``(wake-at ms, now ms, process)``.
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
