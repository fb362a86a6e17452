"""Wake-ups without polling: each process reads the grants pushed to its mailbox list.

A call that cannot be granted at once waits in the global queue in Redis (see
:file:`lua/library.lua`). Whoever frees capacity — a release, a cancellation, an expiry —
runs the dispatch pass in the same script, and the pass pushes ``id@grant-ms`` of every
waiter it granted onto the mailbox list of that waiter's process
(``{prefix}:wake:<process>``). The process reads the list with a blocking ``BLPOP`` and
resolves the waiter's future: one server push per grant, no poll loop.

* :class:`LeanMailbox` reads on a lean connection of its own (:mod:`.resp`): the reply is
  handled in the protocol callback — the waiter's future is resolved and the next
  ``BLPOP`` written in the same step, with no task in between.
* :class:`ClientMailbox` reads through a redis-py client (Redis Cluster, a client given by
  the caller).

A grant that arrives before its waiter is registered (the acquire's own answer is still
on its way on the other connection) is kept briefly and handed over on registration.
When the mailbox connection fails, Redis itself is asked (one heartbeat, which also
reports waiters granted meanwhile); only if it does not answer are the waiters handed to
the unavailability policy.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from ..primitives.errors import BackendUnavailable
from .resp import Connection, encode

__all__ = ["ClientMailbox", "LeanMailbox", "Mailbox"]

_log = logging.getLogger("stageflow_plus.redis")

EARLY_KEPT = 256
"""Grants kept for waiters not registered yet (the oldest are dropped first)."""


class Mailbox:
    """The waiters of one process and their grants (the reading is the subclasses').

    :param key: the mailbox list.
    :param poll_s: seconds one ``BLPOP`` blocks before it is sent again.
    :param stall_s: extra seconds after which an unanswered ``BLPOP`` means a stall.
    :param describe: turns an exception into text with no secret in it.
    :param reachable: asked when the mailbox connection fails: whether Redis still
        answers (it runs a heartbeat, which also wakes waiters granted meanwhile).
    """

    def __init__(self, key: str, *, poll_s: float, stall_s: float,
                 describe: Callable[[BaseException], str],
                 reachable: Callable[[], Awaitable[bool]]) -> None:
        self._key = key
        self._poll_s = poll_s
        self._stall_s = stall_s
        self._describe = describe
        self._reachable = reachable
        self._closed = False
        self._early: OrderedDict[str, float] = OrderedDict()
        self._recovering: asyncio.Task[None] | None = None
        self.waiters: dict[str, asyncio.Future[float]] = {}  # id -> grant time (server ms)
        self.woken = 0

    def expect(self, member: str) -> asyncio.Future[float]:
        """Register a queued waiter; its future gets the grant time (server ms)."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a waiter that gave up never reads its error
        at = self._early.pop(member, None)
        if at is not None:
            self.woken += 1
            future.set_result(at)
        else:
            self.waiters[member] = future
        self.listen()
        return future

    def forget(self, member: str) -> None:
        """Stop expecting ``member`` (granted, refused, or abandoned)."""
        self.waiters.pop(member, None)

    def grant(self, member: str, at_ms: float, *, pushed: bool = True) -> None:
        """``member`` was granted at server time ``at_ms`` (0: unknown) — a mailbox
        message (``pushed``), or the heartbeat's fallback."""
        future = self.waiters.pop(member, None)
        if future is None:
            if pushed:  # its waiter may not be registered yet
                self._early[member] = at_ms
                if len(self._early) > EARLY_KEPT:
                    self._early.popitem(last=False)
            return
        if not future.done():
            if pushed:
                self.woken += 1
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

    def _parse(self, item: Any) -> None:
        text = item.decode() if isinstance(item, bytes) else str(item)
        member, _, at = text.partition("@")
        self.grant(member, float(at) if at else 0.0)

    def _failed(self, exc: BaseException) -> None:
        """The read failed: recover in a task (one at a time)."""
        if self._closed or (self._recovering is not None and not self._recovering.done()):
            return
        self._recovering = asyncio.get_running_loop().create_task(
            self._recover(exc), name="stageflow_plus.redis.mailbox")

    async def _recover(self, exc: BaseException) -> None:
        text = self._describe(exc)
        await self._reset()
        if await self._reachable():  # a hiccup of this connection only: read again
            _log.debug("redis mailbox read failed (%s); Redis answers: reading again", text)
            self.listen()
            return
        _log.warning("redis mailbox unavailable: %s; %d waiters fall back to the "
                     "unavailability policy", text, len(self.waiters))
        self.fail_all(BackendUnavailable(f"Redis mailbox unavailable: {text}",
                                         limiter="redis"))

    async def _reset(self) -> None:
        """Drop the broken connection."""

    async def aclose(self) -> None:
        """Stop reading (waiters left are failed as unavailable)."""
        self._closed = True
        if self._recovering is not None:
            self._recovering.cancel()
        self.fail_all(BackendUnavailable("the Redis backend was closed", limiter="redis"))


class LeanMailbox(Mailbox):
    """Reads the mailbox on a lean connection of its own (see the module docstring)."""

    def __init__(self, url: str, key: str, *, connect_timeout: float, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self._conn = Connection(url, connect_timeout=connect_timeout,
                                op_timeout=self._poll_s + self._stall_s)
        self._command = encode(["BLPOP", key, repr(self._poll_s)])
        self._reading = False
        self._connecting: asyncio.Task[None] | None = None

    def listen(self) -> None:
        if self._closed or self._reading or not self.waiters:
            return
        if not self._conn.ready:
            if self._connecting is None or self._connecting.done():
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        self._reading = True
        self._conn.send_nowait(self._command, self._on_item)

    async def _connect(self) -> None:
        try:
            await self._conn.connect()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self.listen()

    def _on_item(self, value: Any) -> None:
        self._reading = False
        if isinstance(value, BaseException):
            self._failed(value)
            return
        if value is not None:
            self._parse(value[1])
        self.listen()

    async def _reset(self) -> None:
        self._reading = False
        self._conn.close()

    async def aclose(self) -> None:
        await super().aclose()
        if self._connecting is not None:
            self._connecting.cancel()
        self._conn.close()


class ClientMailbox(Mailbox):
    """Reads the mailbox through a redis-py client whose connections may block."""

    def __init__(self, client: Any, key: str, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self._client = client
        self._task: asyncio.Task[None] | None = None

    def listen(self) -> None:
        if self._closed or not self.waiters:
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
                self._failed(exc)
                return
            if item is not None:
                self._parse(item[1])

    async def _reset(self) -> None:
        with contextlib.suppress(Exception):  # (a broken pool may raise anything)
            await self._client.connection_pool.disconnect()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.gather(task, return_exceptions=True)
        await super().aclose()


def _retrieved(future: asyncio.Future[float]) -> None:
    if not future.cancelled():
        future.exception()
