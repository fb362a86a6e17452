"""The waiting primitive: one queue, all-or-nothing acquisition across many resources.

A :class:`Limiter` grants a call all of its demands — ``(resource, amount)`` pairs over
:class:`~stageflow_plus.primitives.resources.ConcurrencyPool` and
:class:`~stageflow_plus.primitives.resources.TokenBucket` — at once, or none of them: a
waiter never holds one permit while sleeping on another, so hierarchical limits (global ⊃ run
⊃ tool ⊃ tenant, requests and tokens) cannot deadlock.

Dispatch walks the queue best-first (the :mod:`~stageflow_plus.primitives.ordering` policy
decides "best"), with reservations, so a large call is never starved by a stream of small
ones on the same bucket (aiolimiter's failure): see :mod:`~stageflow_plus.primitives.dispatch`.
How a call joins the queue (bounds, shedding, deadlines) is in
:mod:`~stageflow_plus.primitives.queueing`. Permits are handed to the woken waiter before it
runs; ``try_acquire`` and ``take`` refuse while anyone waits, so nobody barges.

Time comes from an injected :class:`~stageflow_plus.primitives.clock.Clock`; the limiter
keeps one timer (the earliest of: a bucket refilling for a blocked waiter, a waiter's
deadline), never one per waiter.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

from .admission import AdmissionPolicy
from .clock import Clock, as_clock
from .dispatch import GRANTED
from .errors import WouldBlock
from .lease import Lease, LimiterListener
from .ordering import FifoOrdering, Ordering
from .queueing import Queueing
from .stats import LimiterStatistics, WaitRecorder
from .waiter import WAITING, Demand, Waiter

__all__ = ["Limiter"]


class Limiter(Queueing):
    """One wait queue granting sets of demands all-or-nothing, best-first.

    :param name: shown in errors, events and statistics.
    :param ordering: the waiting order (default :class:`FifoOrdering`).
    :param admission: queue bounds, shedding and deadline rules (default: unbounded).
    :param clock: a :class:`Clock` or ``Callable[[], float]`` (default: the loop's clock).
    :param listener: receives queued/admitted/rejected/released events.
    """

    __slots__ = (
        "_immediate_events",
        "_waits",
    )

    def __init__(
        self,
        *,
        name: str = "limiter",
        ordering: Ordering | None = None,
        admission: AdmissionPolicy | None = None,
        clock: Clock | Callable[[], float] | None = None,
        listener: LimiterListener | None = None,
    ) -> None:
        # Each attribute is declared (slot and annotation) in exactly one class of the
        # hierarchy Dispatcher -> Queueing -> Limiter, and assigned here without annotation:
        # mypyc builds a class's GC traverse from the attributes of every class in its MRO,
        # so a re-declaration here would be visited twice, and the collector would then
        # clear live objects (e.g. a loop timer) as garbage. tests/primitives/test_gc_safety.
        self._name = name
        self._ordering = ordering if ordering is not None else FifoOrdering()
        self._adopt(admission if admission is not None else AdmissionPolicy())
        self._clock = as_clock(clock)
        self._now = self._clock.now
        self._listener = None
        self._immediate_events = False
        self.listener = listener
        self._seq = 0
        self._deadlines = []  # heap of (deadline, seq, waiter); stale entries skipped
        self._timer = None
        self._timer_at = math.inf  # due time of _timer; inf when no timer
        self._dispatching = False
        self._sweep_pending = False
        self._closed = False
        self._in_flight = 0  # invariant: granted leases not yet released
        self._waiting = 0  # invariant: == len(self._ordering), read on the hot path
        self._admitted = 0
        self._cancelled = 0
        self._rejected = {}
        self._waits = WaitRecorder()
        self._record_wait = self._waits.add

    # -- properties --------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def ordering(self) -> Ordering:
        return self._ordering

    @property
    def admission(self) -> AdmissionPolicy:
        return self._admission

    @admission.setter
    def admission(self, policy: AdmissionPolicy) -> None:
        """Replace the admission policy; applies to calls that queue from now on."""
        self._adopt(policy)

    @property
    def listener(self) -> LimiterListener | None:
        return self._listener

    @listener.setter
    def listener(self, listener: LimiterListener | None) -> None:
        self._listener = listener
        # a listener may opt out of the events of calls admitted without waiting
        self._immediate_events = listener is not None and bool(
            getattr(listener, "immediate_events", True)
        )

    def __len__(self) -> int:
        """Calls waiting now."""
        return len(self._ordering)

    # -- acquiring ---------------------------------------------------------------------
    def try_acquire(
        self,
        demands: Sequence[Demand],
        *,
        info: Any = None,
    ) -> Lease:
        """Grant at once or refuse; never waits.

        Refuses (a falsy :class:`Lease` with ``retry_after``) when any demand is unavailable
        *or anyone is already waiting* — nowait callers never jump the queue. A negative or
        NaN amount raises :class:`ConfigError`.
        """
        if self._closed:
            return Lease(self, demands, 0.0, 0.0, info, error=self._closed_error())
        now = self._clock.now()
        lease = self.take(demands, now, info)
        if lease is not None:
            return lease
        self._check_values(demands, 0.0, None, None)  # a bad amount raises ConfigError
        retry = 0.0
        for resource, amount in demands:
            if not resource.available(amount, now):
                retry = max(retry, resource.ready_at(amount, now) - now)
        error = WouldBlock(
            f"{self._name}: no capacity right now"
            + (f" ({len(self._ordering)} calls waiting)" if len(self._ordering) else ""),
            key=self._blocking_key(demands, now),
            limiter=self._name,
            queue_depth=len(self._ordering),
            retry_after=retry if 0 < retry < math.inf else None,
        )
        self._count_rejection(error, info)
        return Lease(self, demands, now, 0.0, info, error=error)

    def acquire_nowait(self, demands: Sequence[Demand], *, info: Any = None) -> Lease:
        """Like :meth:`try_acquire` but raises :class:`WouldBlock` on refusal."""
        lease = self.try_acquire(demands, info=info)
        if lease.error is not None:
            raise lease.error
        return lease

    async def acquire(
        self,
        demands: Sequence[Demand],
        *,
        priority: int = 0,
        tenant: str = "",
        cost: float = 1.0,
        deadline: float | None = None,
        timeout: float | None = None,
        info: Any = None,
    ) -> Lease:
        """Wait until every demand can be granted together, then grant them all.

        :param priority: higher is more urgent (used by priority orderings).
        :param tenant: the fair-share owner (used by fair orderings).
        :param cost: fair-share cost charged to the tenant when granted.
        :param deadline: absolute time (on this limiter's clock) by which the call must start;
            once passed, the call is refused even where capacity is free.
        :param timeout: seconds the call may wait; combined with ``deadline`` (earliest wins).
        :raises ConfigError: an amount or ``cost`` is negative, NaN or infinite (``inf``
            amounts: ``CostTooLarge``), or ``deadline`` / ``timeout`` is NaN.
        :raises CostTooLarge: a demand exceeds what its resource can ever grant.
        :raises DeadlineUnmeetable: the deadline has passed or the estimated wait exceeds it.
        :raises QueueFull: a queue bound is reached and shedding refused this call.
        :raises WaitTimeout: the call was still waiting at its deadline.
        :raises Evicted: the call was shed to make room for a more urgent one.
        :raises LimiterClosed: the limiter was closed.

        Cancellation: a call cancelled while waiting leaves the queue at once and takes
        nothing; if it was granted in the same instant, its permits are returned before the
        ``CancelledError`` propagates. Either way the next waiter is considered immediately.
        """
        now = self._now()
        if (deadline is None or deadline >= now) and (timeout is None or timeout >= 0):
            lease = self.take(demands, now, info)
            if lease is not None:
                return lease
        # (a passed deadline is refused by _enqueue even where capacity is free)
        # the wait happens in this frame (no inner coroutine): a queued call costs one frame
        # (few locals here: each costs every queued call 8 bytes of frame)
        waiter = self._enqueue(demands, priority, tenant, cost, deadline, timeout, info, now)
        try:
            return await waiter.future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            self.abandon(waiter)
            raise

    def enqueue(
        self,
        demands: Sequence[Demand],
        now: float,
        *,
        priority: int = 0,
        tenant: str = "",
        cost: float = 1.0,
        deadline: float | None = None,
        info: Any = None,
    ) -> Waiter:
        """The queueing half of :meth:`acquire`, for a caller that waits in its own frame.

        Queues the call (or raises its refusal, as :meth:`acquire` does) and returns its
        :class:`Waiter`: ``await waiter.future`` gives the :class:`Lease` or raises the
        refusal. A caller cancelled during that wait **must** call :meth:`abandon` before
        re-raising, or the call's place (or its grant) is lost. Call it after :meth:`take`
        returned ``None``, with the same ``now``.
        """
        return self._enqueue(demands, priority, tenant, cost, deadline, None, info, now)

    def abandon(self, waiter: Waiter) -> None:
        """The caller of a queued ``waiter`` was cancelled: it leaves the queue, or gives back
        what it was granted in the same instant; the next waiter is considered at once."""
        if waiter.state is GRANTED:
            waiter.future.result().release_unused()
        elif waiter.state is WAITING:
            self._leave(waiter, None)
            self._cancelled += 1
            if not self._sweep_pending:  # (else a deferred pass is on its way: it covers us)
                self._dispatch()
        elif waiter.future.done() and not waiter.future.cancelled():
            waiter.future.exception()  # refused, then cancelled: mark the error retrieved

    def take(self, demands: Sequence[Demand], now: float, info: Any = None) -> Lease | None:
        """The synchronous fast path of :meth:`acquire`: a lease if nobody waits and every
        demand is available at ``now`` (read from this limiter's clock), else ``None`` with
        nothing taken and nothing counted — then call :meth:`acquire`."""
        if self._waiting or self._closed:
            return None
        for taken, (resource, amount) in enumerate(demands):
            # (a negative or NaN amount is never taken: the queue refuses it, ConfigError)
            if not amount >= 0.0 or not resource.try_take(amount, now):
                for undo, undo_amount in demands[:taken]:  # all or nothing
                    undo.refund(undo_amount, now)
                    undo.holders -= 1
                return None
            resource.holders += 1
        self._admitted += 1
        self._in_flight += 1
        self._record_wait(0.0)
        if self._immediate_events:
            self._listener.on_admitted(info, 0.0)  # type: ignore[union-attr]
        return Lease(self, demands, now, 0.0, info)

    # -- control -----------------------------------------------------------------------
    def dispatch(self) -> None:
        """Re-examine the whole queue now — call it after changing a capacity, a rate or a
        burst: waiters that can never fit any more are refused with :class:`CostTooLarge`,
        then whoever can go is granted. O(waiters)."""
        if not self._dispatching:  # (a listener calling back mid-pass: the pass goes on)
            self._fail_oversized(list(self._ordering.waiting()), self._now())
        self._dispatch()

    def close(self) -> None:
        """Refuse everything from now on; every waiter gets :class:`LimiterClosed`."""
        self._closed = True
        for waiter in list(self._ordering.waiting()):
            self._leave(waiter, self._closed_error())
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot of the queue and counters."""
        by_priority: dict[int, int] = {}
        by_tenant: dict[str, int] = {}
        for waiter in self._ordering.waiting():
            by_priority[waiter.priority] = by_priority.get(waiter.priority, 0) + 1
            by_tenant[waiter.tenant] = by_tenant.get(waiter.tenant, 0) + 1
        return LimiterStatistics(
            name=self._name,
            in_flight=self._in_flight,
            tasks_waiting=len(self._ordering),
            waiting_by_priority=tuple(sorted(by_priority.items())),
            waiting_by_tenant=tuple(sorted(by_tenant.items())),
            admitted=self._admitted,
            rejected=tuple(sorted(self._rejected.items())),
            cancelled=self._cancelled,
            waits=self._waits.percentiles(),
        )

    def __repr__(self) -> str:
        return (
            f"<Limiter {self._name!r} {self._in_flight} in flight, {len(self._ordering)} waiting>"
        )

    # -- internals ---------------------------------------------------------------------
    def _release(self, lease: Lease, refund: bool) -> None:
        now = self._now()
        held = now - lease.acquired_at
        for resource, amount in lease.demands:
            if refund:
                resource.refund(amount, now)
            else:
                resource.release(amount, now, held)
            resource.holders -= 1
        self._in_flight -= 1
        if self._immediate_events or (self._listener is not None and lease.queued):
            self._listener.on_released(lease.info, held)  # type: ignore[union-attr]
        if self._waiting:
            self._dispatch_at(now)

