"""The hot path of the Redis backend: acquiring and releasing global permits.

An acquire is one ``acquire`` call of the library (:mod:`.scripts`) with the call's
:class:`~stageflow_plus.backends.scripts.Plan`: granted at once (the answer is the grant
time), refused, or queued — then the call waits for its grant to be pushed to this
process's mailbox (:mod:`.mailbox`), or for its timeout. A release is pipelined: written
behind the last command, its answer handled in the background (:mod:`.giveback`).

On the lean connection (:mod:`.resp`) every await point of an acquire is accounted for
when the caller gives up: before the request is written nothing happened; after, the
answer is handed to :meth:`~stageflow_plus.backends.giveback.GiveBack.orphaned` in order;
while queued, the cancel is written at once behind the acquire. Through redis-py (Cluster,
a caller's client) the answer of a call given up is unknown: a blind cancel with a
tombstone covers it.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ..primitives.errors import BackendUnavailable, DeadlineUnmeetable, WaitTimeout
from .lease import RedisLease
from .records import GlobalBucket, GlobalPool, Grant

if TYPE_CHECKING:
    from .redis import RedisBackend
    from .scripts import Plan

__all__ = ["Permits", "ms", "text"]


def ms(value: Any) -> float | None:
    """A script's time or wait (ms, as text) as a float; ``None`` for ``''``."""
    if isinstance(value, (int, float)):
        return float(value)
    raw = value.decode() if isinstance(value, bytes) else str(value)
    return float(raw) if raw else None


def text(value: Any) -> str:
    """A script's string answer as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Permits:
    """Acquires and releases the global permits of one backend."""

    __slots__ = ("_b",)

    def __init__(self, backend: RedisBackend) -> None:
        self._b = backend

    async def try_acquire(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                          pauses: Sequence[str]) -> tuple[Grant, RedisLease | None]:
        """See :meth:`RedisBackend.try_acquire`."""
        b = self._b
        plan = b.plan(pools, buckets, pauses)
        amounts = [repr(float(x.amount)) for x in buckets]
        member = b._member()
        reply = await self._send(plan, member, amounts, "try", "", 1.0, None, 0)
        if not isinstance(reply, list):
            return Grant(True, 0.0, "", ""), self._granted(member, plan, amounts, reply, 0.0)
        b._counts["refused"] += 1
        return Grant(False, (ms(reply[1]) or 0.0) / 1000, text(reply[2]),
                     text(reply[3])), None

    async def acquire(self, plan: Plan, amounts: Sequence[str], *, priority: int,
                      tenant: str, cost: float, timeout: float | None) -> RedisLease:
        """See :meth:`RedisBackend.acquire`."""
        b = self._b
        member = b._member()
        started = time.monotonic()
        reply = await self._send(plan, member, amounts, "wait", tenant, cost, timeout,
                                 priority)
        if not isinstance(reply, list):  # granted at once: the answer is the grant time
            return self._granted(member, plan, amounts, reply, 0.0)
        status = int(reply[0])
        if status == 1:
            return self._granted(member, plan, amounts, reply[4], 0.0)
        if status != 2:
            b._counts["refused"] += 1
            wait = (ms(reply[1]) or 0.0) / 1000
            if status == 4:  # (only a cancel of this very call writes the tombstone)
                raise BackendUnavailable("redis: the acquire ran after its own cancel",
                                         limiter="redis")
            raise DeadlineUnmeetable(
                f"redis: {text(reply[2])} on {text(reply[3])!r} needs {wait:.3f} s, more "
                f"than the {max(0.0, timeout or 0.0):.3f} s the call may wait",
                key=text(reply[3]), limiter="redis", retry_after=wait or None)
        future = b.mailbox.expect(member)
        b._schedule([reply[5], reply[4], reply[6]])
        b._heartbeat.ensure()
        try:
            async with asyncio.timeout(timeout):
                at_ms = await future
        except TimeoutError:
            if future.done() and not future.cancelled() and future.exception() is None:
                return self._granted(member, plan, amounts, future.result(),
                                     time.monotonic() - started, via_mailbox=True)
            b._giveback.cancel(member, plan)
            raise WaitTimeout(f"redis: still waiting in the global queue ({text(reply[2])} on "
                              f"{text(reply[3])!r}) after {timeout:.3f} s", key=text(reply[3]),
                              limiter="redis") from None
        except BaseException:  # cancelled, or Redis lost (the policy decides)
            if future.done() and not future.cancelled() and future.exception() is None:
                b._giveback.unused(plan, member, amounts, via_mailbox=True)
            else:
                b._giveback.cancel(member, plan)
            raise
        return self._granted(member, plan, amounts, at_ms, time.monotonic() - started,
                             via_mailbox=True)

    async def _send(self, plan: Plan, member: str, amounts: Sequence[str], mode: str,
                    tenant: str, cost: float, timeout: float | None, priority: int) -> Any:
        b = self._b
        if b._outage.due and b.available:
            await b._outage.restore()
        args: list[str | int] = [member, mode, tenant, repr(cost / b.weights.get(tenant, 1.0)),
                                 "" if timeout is None else repr(timeout * 1000),
                                 int(priority), *amounts]
        started = time.perf_counter()
        conn = b._conn
        if conn is None:  # redis-py: the answer of a call given up is unknown
            try:
                reply = await b._run("acquire", [plan.queue_key], [plan.text, *args])
            except asyncio.CancelledError:
                b._giveback.abandon(member, plan.pool_keys)
                raise
            except BackendUnavailable as exc:
                if exc.sent:
                    b._giveback.abandon(member, plan.pool_keys)
                raise
        else:
            b._check(False)
            try:
                if not conn.ready:
                    await conn.connect()  # (cancelled here: nothing was sent)
                future = conn.send(b._library.command("acquire", plan, args), on_orphan=
                                   functools.partial(b._giveback.orphaned, plan, member,
                                                     amounts))
            except (RedisError, OSError) as exc:
                raise b._unavailable(exc, sent=False) from None
            try:
                reply = await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # answered, never to be read
                    b._giveback.orphaned(plan, member, amounts,
                                         future.exception() or future.result())
                raise
            except (RedisError, OSError) as exc:
                b._giveback.abandon(member, plan.pool_keys)
                raise b._unavailable(exc, sent=True) from None
        b._latency.add(time.perf_counter() - started)
        return reply

    def _granted(self, member: str, plan: Plan, amounts: Sequence[str], at: Any,
                 waited: float, *, via_mailbox: bool = False) -> RedisLease:
        b = self._b
        b._counts["acquired"] += 1
        lease = RedisLease(b, member, plan, amounts=amounts, granted_at=(ms(at) or 0.0) / 1000,
                           waited=waited, via_mailbox=via_mailbox)
        if plan.pool_keys:
            b._held[member] = lease
        b._heartbeat.ensure()
        return lease

    # -- releasing ---------------------------------------------------------------------
    def _release_args(self, lease: RedisLease, actual: Mapping[str, float]) -> list[Any] | None:
        b = self._b
        b._held.pop(lease.member, None)
        b.share.lease_ended(lease.member)
        plan = lease.plan
        assert plan is not None
        deltas: list[str] = []
        for dimension, amount in zip(plan.dimensions, lease.amounts, strict=False):
            value = actual.get(dimension)
            delta = 0.0 if value is None else float(value) - float(amount)
            deltas.append(repr(delta) if delta else "0")
        if not plan.pool_keys and all(d == "0" for d in deltas):
            return None  # nothing to give back: no round trip
        return [lease.member, "1" if lease.via_mailbox else "0", *deltas]

    def release_nowait(self, lease: RedisLease, actual: Mapping[str, float]) -> None:
        """See :meth:`RedisLease.release_nowait`."""
        args = self._release_args(lease, actual)
        if args is not None and lease.plan is not None:
            if self._b._conn is None:
                self._b._giveback.release_later(lease.plan, args)
            else:
                self._b._giveback.send_release(lease.plan, args)

    async def release(self, lease: RedisLease, actual: Mapping[str, float]) -> None:
        """See :meth:`RedisLease.release`."""
        b = self._b
        args = self._release_args(lease, actual)
        plan = lease.plan
        if args is None or plan is None:
            return
        try:
            conn = b._conn
            if conn is not None and conn.ready:
                b._counts["round_trips"] += 1
                reply = await conn.send(b._library.command("release", plan, args))
            else:
                reply = await b._run("release", [plan.queue_key], [plan.text, *args],
                                     force=True)
        except (BackendUnavailable, RedisError, OSError):
            b._giveback.release_later(plan, args)  # retried until Redis answers
            return
        if isinstance(reply, list):
            b._schedule(reply[1:])
