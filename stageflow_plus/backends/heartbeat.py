"""The heartbeat of one process on a Redis backend (every ``ttl / 3``, one script).

It keeps what the process owns alive — the expiry of every lease it holds and of every
call it has queued is pushed to ``now + ttl`` — so a process that dies (SIGKILL, a lost
host) blocks nobody for longer than ``ttl``: its leases and queued calls lapse and the next
dispatch pass skips them. It also registers the process as live (the ``degrade`` policy
divides each limit by the number of live processes), runs a dispatch pass, and is the
fallback for a lost mailbox message: each queued call's state is reported, a call found
granted is woken, one found gone is handed to the unavailability policy.

Stopping it is a flag, then a cancellation: the loop checks the flag before every beat,
so even a beat that is in flight ends the loop when it returns.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..primitives.errors import BackendUnavailable

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["Heartbeat"]

_log = logging.getLogger("stageflow_plus.redis")


class Heartbeat:
    """Runs while the backend holds leases, has queued calls, or was used within ``ttl``."""

    __slots__ = ("_backend", "_last_used", "_stopped", "_task")

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._task: asyncio.Task[None] | None = None
        self._last_used = -float("inf")
        self._stopped = False

    def ensure(self) -> None:
        """Note a use of the backend; start beating if not running."""
        self._last_used = time.monotonic()
        if self._stopped:
            return
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="stageflow_plus.redis.heartbeat")

    def _busy(self) -> bool:
        b = self._backend
        return not self._stopped and bool(b._held or b.mailbox.waiters
                                          or time.monotonic() - self._last_used < b.ttl)

    async def _run(self) -> None:
        while self._busy():
            await asyncio.sleep(self._backend.ttl / 3)
            if self._stopped:
                return
            await self.beat()

    async def beat(self) -> None:
        """One heartbeat round trip (failures are counted by the backend and skipped)."""
        b = self._backend
        held = list(b._held.values())
        keys = [k for lease in held for k in lease.pools]
        members = [lease.member for lease in held for _ in lease.pools]
        waiting = list(b.mailbox.waiters)
        args = [b.prefix, b.aging_ms, b._proc, round(b.ttl * 1000), *members, *waiting]
        try:
            reply = await b._run("extend", [b._queue_key, *keys], args)
        except BackendUnavailable:
            return
        lost, statuses, live = reply[0], reply[1], int(reply[2])
        b.share.live = max(1, live)
        for index in lost:
            member = members[int(index) - 1]
            if b._held.pop(member, None) is not None:  # counted once, not re-extended
                b._counts["lost_leases"] += 1
                _log.warning("lease %s on %s was lost (expired or lost in a restart)", member,
                             keys[int(index) - 1])
        for member, status in zip(waiting, statuses, strict=False):
            if int(status) == 2:
                b.mailbox.grant(member, 0.0, pushed=False)  # its message was lost or is late
            elif int(status) == 0:
                future = b.mailbox.waiters.pop(member, None)
                if future is not None and not future.done():
                    future.set_exception(BackendUnavailable(
                        "redis: the queued call lapsed from the global queue (its process "
                        "missed heartbeats)", limiter="redis"))
        b._schedule(reply[3:])

    async def stop(self) -> None:
        """Stop beating (held leases then expire by TTL) and wait for the loop to end."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.gather(task, return_exceptions=True)
