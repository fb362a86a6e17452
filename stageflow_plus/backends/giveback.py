"""Giving permits back when nobody will use them — never leaving one to its TTL.

A caller can give up at any await point of an acquire: before the request is written,
while its answer is on the way, while it waits in the global queue, or after its grant
was pushed but before it resumed. :class:`GiveBack` makes each of these end with nothing
held:

* **the answer arrives for nobody** (cancelled or timed out while the acquire was in
  flight): the lean connection hands the answer to :meth:`GiveBack.orphaned`, in order on
  the same connection — a grant is released (its tokens refunded), a queued call is
  cancelled, a refusal needs nothing;
* **queued, then gave up**: :meth:`GiveBack.cancel` writes the cancel right away, behind the
  acquire on the same connection (the script leaves the queue, or gives back a grant that
  raced the cancellation — atomically, exactly one of the two);
* **the answer is lost** (the connection broke, a stall, redis-py's own connections): the
  order is unknown, so :meth:`GiveBack.abandon` sends a *blind* cancel that also leaves a
  tombstone: an acquire that reaches the server after it takes nothing. Blind cancels and
  releases that fail are retried every ``recheck_s`` until Redis answers or the backend
  closes (:meth:`GiveBack.drain` flushes them then).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ..primitives.errors import BackendUnavailable

if TYPE_CHECKING:
    from .redis import RedisBackend
    from .scripts import Plan

__all__ = ["GiveBack"]


class GiveBack:
    """The background side of a backend: orphaned answers, cancels, retried releases."""

    __slots__ = ("_backend", "_tasks")

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Cancels and releases still being retried."""
        return len(self._tasks)

    def orphaned(self, plan: Plan, member: str, amounts: Sequence[str], value: Any) -> None:
        """The answer to an acquire nobody waits for any more (see the module docstring)."""
        if isinstance(value, BaseException):
            self.abandon(member, plan.pool_keys)
            return
        status = int(value[0]) if isinstance(value, list) else 1  # (else: the grant time)
        if status == 1:
            self.unused(plan, member, amounts, via_mailbox=False)
        elif status == 2:  # queued: leave the queue (or give back a grant racing it)
            self.cancel(member, plan)

    def unused(self, plan: Plan, member: str, amounts: Sequence[str], *,
               via_mailbox: bool) -> None:
        """A grant its caller never used: give everything back, its tokens included."""
        self._backend.mailbox.forget(member)
        deltas = [repr(-float(a)) if _nonzero(a) else "0" for a in amounts]
        self.send_release(plan, [member, "1" if via_mailbox else "0", *deltas])

    def cancel(self, member: str, plan: Plan) -> None:
        """A queued call gave up: cancel it now, ordered behind its acquire."""
        b = self._backend
        b.mailbox.forget(member)
        conn = b._conn
        if conn is not None and conn.ready:
            args = [b.prefix, b.aging_ms, member, b.tombstone_ms]
            with contextlib.suppress(RedisError):  # (closed meanwhile: abandon below)
                conn.send_nowait(b._library.call("cancel", [plan.queue_key, *plan.pool_keys],
                                                 args), self._cancelled(member, plan))
                return
        self.abandon(member, plan.pool_keys)

    def _cancelled(self, member: str, plan: Plan) -> Any:
        def answered(reply: Any) -> None:
            if isinstance(reply, BaseException):
                self.abandon(member, plan.pool_keys)
            else:
                self._backend._schedule(reply[1:])

        return answered

    def send_release(self, plan: Plan, args: Sequence[Any]) -> None:
        """Write a release now if the connection is up (its answer is handled in the
        background), else retry it in a task."""
        b = self._backend
        conn = b._conn
        if conn is not None and conn.ready:
            try:
                conn.send_nowait(b._library.command("release", plan, args),
                                 functools.partial(self._released, plan, args))
            except RedisError:  # (closed meanwhile: retried below)
                pass
            else:
                b._counts["round_trips"] += 1
                return
        self.release_later(plan, args)

    def _released(self, plan: Plan, args: Sequence[Any], reply: Any) -> None:
        """The answer of a release written by :meth:`send_release`."""
        if isinstance(reply, BaseException):
            self.release_later(plan, args)
        elif isinstance(reply, list):
            self._backend._schedule(reply[1:])

    def abandon(self, member: str, pool_keys: Sequence[str]) -> None:
        """A blind cancel (with tombstone), retried until it lands."""
        b = self._backend
        b.mailbox.forget(member)
        keys = [f"{b.prefix}q:wait", *pool_keys]
        self._retry("cancel", keys, [b.prefix, b.aging_ms, member, b.tombstone_ms])

    def release_later(self, plan: Plan, args: Sequence[Any]) -> None:
        """A release whose first attempt failed, retried until it lands."""
        if not plan.pool_keys and not any(_nonzero(a) for a in args[2:]):
            return  # nothing to give back
        self._retry("release", [plan.queue_key], [plan.text, *args])

    def _retry(self, entry: str, keys: list[str], args: list[Any]) -> None:
        b = self._backend

        async def attempts() -> None:
            while True:
                try:
                    reply = await b._run(entry, keys, args, force=True)
                except BackendUnavailable:
                    await asyncio.sleep(max(b.recheck_s, 0.01))
                    continue
                if isinstance(reply, list):
                    b._schedule(reply[1:])
                return

        task = asyncio.get_running_loop().create_task(attempts())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for the retried cancels and releases, then stop
        retrying: what is left lapses by TTL."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _nonzero(text: Any) -> bool:
    """Whether an amount or delta (as sent) is not zero."""
    try:
        return float(text) != 0.0
    except (TypeError, ValueError):
        return True
