"""The waiting primitive: one queue, all-or-nothing acquisition across many resources.

A :class:`Limiter` grants a call all of its demands — ``(resource, amount)`` pairs over
:class:`~stageflow_plus.primitives.resources.ConcurrencyPool` and
:class:`~stageflow_plus.primitives.resources.TokenBucket` — at once, or none of them: a
waiter never holds one permit while sleeping on another, so hierarchical limits (global ⊃ run
⊃ tool ⊃ tenant, requests and tokens) cannot deadlock.

Dispatch walks the queue best-first (the :mod:`~stageflow_plus.primitives.ordering` policy
decides "best"). A waiter whose demands are all available is granted. A waiter that cannot
be granted *reserves* the resources it is blocked on: nobody behind it may take from them in
this pass. So a large call is never starved by a stream of small ones on the same bucket
(aiolimiter's failure), while a call for an idle tool still passes a queue blocked on a busy
tool. Permits are handed to the woken waiter before it runs; ``try_acquire`` refuses while
anyone waits, so nobody barges.

Time comes from an injected :class:`~stageflow_plus.primitives.clock.Clock`; the limiter
keeps one timer (the earliest of: a bucket refilling for a blocked waiter, a waiter's
deadline), never one per waiter.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from .admission import AdmissionPolicy, Shedding
from .clock import Clock, TimerHandle, as_clock
from .errors import (
    CostTooLarge,
    DeadlineUnmeetable,
    Evicted,
    LimiterClosed,
    QueueFull,
    Rejected,
    WaitTimeout,
    WouldBlock,
)
from .lease import Lease, LimiterListener
from .ordering import FifoOrdering, Ordering
from .resources import Resource
from .stats import LimiterStatistics, WaitRecorder
from .waiter import WAITING, Demand, Waiter, WaiterState

__all__ = ["Limiter"]

GRANTED = WaiterState.GRANTED
_ANY = 1e-9  # "any amount at all": a resource refusing this can grant nobody
LEFT = WaiterState.LEFT


class Limiter:
    """One wait queue granting sets of demands all-or-nothing, best-first.

    :param name: shown in errors, events and statistics.
    :param ordering: the waiting order (default :class:`FifoOrdering`).
    :param admission: queue bounds, shedding and deadline rules (default: unbounded).
    :param clock: a :class:`Clock` or ``Callable[[], float]`` (default: the loop's clock).
    :param listener: receives queued/admitted/rejected/released events.
    """

    __slots__ = (
        "_admission",
        "_admitted",
        "_cancelled",
        "_clock",
        "_closed",
        "_deadlines",
        "_dispatching",
        "_immediate_events",
        "_in_flight",
        "_listener",
        "_name",
        "_now",
        "_ordering",
        "_record_wait",
        "_rejected",
        "_seq",
        "_timer",
        "_timer_at",
        "_waiting",
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
        self._name = name
        self._ordering: Ordering = ordering if ordering is not None else FifoOrdering()
        self._admission = admission if admission is not None else AdmissionPolicy()
        self._clock = as_clock(clock)
        self._now = self._clock.now
        self._listener: LimiterListener | None = None
        self._immediate_events = False
        self.listener = listener
        self._seq = itertools.count()
        self._deadlines: list[tuple[float, int, Waiter]] = []  # heap; stale entries skipped
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf  # due time of _timer; inf when no timer
        self._dispatching = False
        self._closed = False
        self._in_flight = 0  # invariant: granted leases not yet released
        self._waiting = 0  # invariant: == len(self._ordering), read on the hot path
        self._admitted = 0
        self._cancelled = 0
        self._rejected: dict[str, int] = {}
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
        self._admission = policy

    @property
    def listener(self) -> LimiterListener | None:
        return self._listener

    @listener.setter
    def listener(self, listener: LimiterListener | None) -> None:
        self._listener = listener
        # a listener may opt out of the events of calls admitted without waiting
        self._immediate_events = listener is not None and getattr(
            listener, "immediate_events", True
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
        *or anyone is already waiting* — nowait callers never jump the queue.
        """
        if self._closed:
            return Lease(self, demands, 0.0, 0.0, info, error=self._closed_error())
        now = self._clock.now()
        lease = self.take(demands, now, info)
        if lease is not None:
            return lease
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
        :param deadline: absolute time (on this limiter's clock) by which the call must start.
        :param timeout: seconds the call may wait; combined with ``deadline`` (earliest wins).
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
        lease = self.take(demands, now, info)
        if lease is not None:
            return lease
        # the wait happens in this frame (no inner coroutine): a queued call costs one frame
        waiter = self._enqueue(demands, priority, tenant, cost, deadline, timeout, info, now)
        self._dispatch_for(waiter, now)
        if waiter.state is GRANTED:
            return waiter.future.result()  # type: ignore[no-any-return]
        try:
            return await waiter.future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            if waiter.state is GRANTED:
                granted: Lease = waiter.future.result()
                granted.release_unused()
            elif waiter.state is WAITING:
                self._leave(waiter, None)
                self._cancelled += 1
                self._dispatch()
            elif waiter.future.done() and not waiter.future.cancelled():
                waiter.future.exception()  # refused, then cancelled: mark the error retrieved
            raise

    def take(self, demands: Sequence[Demand], now: float, info: Any = None) -> Lease | None:
        """The synchronous fast path of :meth:`acquire`: a lease if nobody waits and every
        demand is available at ``now`` (read from this limiter's clock), else ``None`` with
        nothing taken and nothing counted — then call :meth:`acquire`."""
        if self._waiting or self._closed:
            return None
        for taken, (resource, amount) in enumerate(demands):
            if not resource.try_take(amount, now):
                for undo, undo_amount in demands[:taken]:  # all or nothing
                    undo.refund(undo_amount, now)
                return None
        self._admitted += 1
        self._in_flight += 1
        self._record_wait(0.0)
        if self._immediate_events:
            self._listener.on_admitted(info, 0.0)  # type: ignore[union-attr]
        return Lease(self, demands, now, 0.0, info)

    # -- control -----------------------------------------------------------------------
    def dispatch(self) -> None:
        """Re-examine the queue now (call after raising a capacity or refunding tokens)."""
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
    def _closed_error(self) -> LimiterClosed:
        return LimiterClosed(f"{self._name}: limiter is closed", limiter=self._name)

    def _blocking_key(self, demands: Sequence[Demand], now: float) -> str | None:
        for resource, amount in demands:
            if not resource.available(amount, now):
                return resource.key
        return demands[0][0].key if demands else None

    def _refuse(self, error: Rejected, info: Any) -> Rejected:
        self._count_rejection(error, info)
        return error

    def _count_rejection(self, error: Rejected, info: Any) -> None:
        self._rejected[error.reason] = self._rejected.get(error.reason, 0) + 1
        if self._listener is not None:
            self._listener.on_rejected(info, error)

    def _enqueue(
        self,
        demands: Sequence[Demand],
        priority: int,
        tenant: str,
        cost: float,
        deadline: float | None,
        timeout: float | None,
        info: Any,
        now: float,
    ) -> Waiter:
        if self._closed:
            raise self._refuse(self._closed_error(), info)
        depth = self._waiting
        for resource, amount in demands:
            if amount > resource.max_amount():
                raise self._refuse(
                    CostTooLarge(
                        f"{self._name}: a call needs {amount:g} of {resource.key!r}, which "
                        f"can never grant more than {resource.max_amount():g} at once",
                        key=resource.key,
                        limiter=self._name,
                        queue_depth=depth,
                    ),
                    info,
                )
        policy = self._admission
        if timeout is not None:
            deadline = now + timeout if deadline is None else min(deadline, now + timeout)
        if policy.max_wait is not None:
            limit = now + policy.max_wait
            deadline = limit if deadline is None else min(deadline, limit)
        if deadline is not None:
            self._check_deadline(demands, deadline, info, now)
        if policy.max_queue_per_key is not None or (
            policy.max_queue is not None and depth >= policy.max_queue
        ):
            self._make_room(demands, priority, info, now)
        waiter = Waiter(
            demands,
            priority,
            tenant,
            cost,
            now,
            deadline,
            next(self._seq),
            asyncio.get_running_loop().create_future(),
            info,
        )
        self._ordering.push(waiter)
        self._waiting += 1
        for resource, amount in demands:
            resource.queued += 1
            resource.queued_amount += amount
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, waiter.seq, waiter))
        if self._listener is not None:
            # not depth + 1: shedding may have evicted a waiter since depth was read
            self._listener.on_queued(info, self._waiting)
        return waiter

    def _check_deadline(
        self, demands: Sequence[Demand], deadline: float, info: Any, now: float
    ) -> None:
        """Refuse at once when the deadline has passed or the estimated wait exceeds it."""
        remaining = deadline - now
        estimate = max((r.estimate_wait(a, now) for r, a in demands), default=0.0)
        if remaining <= 0 or (self._admission.deadline_aware and estimate > remaining):
            key = (
                max(demands, key=lambda d: d[0].estimate_wait(d[1], now))[0].key
                if demands
                else None
            )
            depth = self._waiting
            raise self._refuse(
                DeadlineUnmeetable(
                    f"{self._name}: estimated wait {estimate:.3f}s exceeds the remaining "
                    f"deadline {max(remaining, 0.0):.3f}s ({depth} calls waiting)",
                    key=key,
                    limiter=self._name,
                    queue_depth=depth,
                    retry_after=estimate if estimate > 0 else None,
                ),
                info,
            )

    def _make_room(
        self,
        demands: Sequence[Demand],
        priority: int,
        info: Any,
        now: float,
    ) -> None:
        policy = self._admission
        full: Resource | None = None
        if policy.max_queue_per_key is not None:
            full = next((r for r, _ in demands if r.queued >= policy.max_queue_per_key), None)
        total_full = policy.max_queue is not None and len(self._ordering) >= policy.max_queue
        if full is None and not total_full:
            return

        def needs_full(w: Waiter) -> bool:
            return any(r is full for r, _ in w.demands)

        matches = needs_full if full is not None else None
        victim: Waiter | None = None
        if policy.shedding is Shedding.EVICT_LOWEST_PRIORITY:
            victim = self._ordering.victim(matches)
            if victim is not None and victim.priority >= priority:
                victim = None
        elif policy.shedding is Shedding.EVICT_OLDEST:
            victim = self._ordering.oldest(matches)
        key = full.key if full is not None else None
        bound = policy.max_queue_per_key if full is not None else policy.max_queue
        if victim is None:
            retry = max((r.estimate_wait(a, now) for r, a in demands), default=0.0)
            raise self._refuse(
                QueueFull(
                    f"{self._name}: queue{' for ' + repr(key) if key else ''} is full "
                    f"({bound} waiting, shedding={policy.shedding.value})",
                    key=key,
                    limiter=self._name,
                    queue_depth=len(self._ordering),
                    retry_after=retry if retry > 0 else None,
                ),
                info,
            )
        self._leave(
            victim,
            Evicted(
                f"{self._name}: evicted from a full queue ({bound} waiting) for a call of priority "
                f"{priority} (shedding={policy.shedding.value})",
                key=key,
                limiter=self._name,
                queue_depth=len(self._ordering),
            ),
        )

    def _leave(self, waiter: Waiter, error: Rejected | None) -> None:
        """Take a queued waiter out for good; ``error`` is raised in it (``None``: cancel)."""
        waiter.state = LEFT
        self._ordering.left(waiter)
        self._waiting -= 1
        for resource, amount in waiter.demands:
            resource.queued -= 1
            resource.queued_amount -= amount
        if error is not None:
            self._count_rejection(error, waiter.info)
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _grant(self, waiter: Waiter, now: float) -> None:
        for resource, amount in waiter.demands:
            resource.take(amount, now)
            resource.queued -= 1
            resource.queued_amount -= amount
        waiter.state = GRANTED
        self._ordering.granted(waiter)
        self._waiting -= 1
        wait = now - waiter.enqueued_at
        self._admitted += 1
        self._in_flight += 1
        self._record_wait(wait)
        waiter.future.set_result(Lease(self, waiter.demands, now, wait, waiter.info))
        if self._listener is not None:
            self._listener.on_admitted(waiter.info, wait)

    def _release(self, lease: Lease, refund: bool) -> None:
        now = self._now()
        held = now - lease.acquired_at
        for resource, amount in lease.demands:
            if refund:
                resource.refund(amount, now)
            else:
                resource.release(amount, now, held)
        self._in_flight -= 1
        if self._immediate_events or (self._listener is not None and lease.waited):
            self._listener.on_released(lease.info, held)  # type: ignore[union-attr]
        if self._waiting:
            self._dispatch()

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(deadlines)
            if waiter.state is WAITING:
                self._leave(
                    waiter,
                    WaitTimeout(
                        f"{self._name}: waited {now - waiter.enqueued_at:.3f}s and reached the "
                        f"call's deadline ({len(self._ordering)} still waiting)",
                        key=self._blocking_key(waiter.demands, now),
                        limiter=self._name,
                        queue_depth=len(self._ordering),
                    ),
                )

    def _dispatch_for(self, newcomer: Waiter, now: float) -> None:
        """Dispatch after ``newcomer`` queued — only if it could be granted now.

        An arrival frees nothing, so when one of the newcomer's demands is unavailable no
        waiter can be granted that could not be before; only its wake-up time (a bucket
        refill, a deadline) needs scheduling. Saves a queue pass per queued call under load.
        """
        blocked = False
        wake_at = math.inf
        for resource, amount in newcomer.demands:
            if not resource.available(amount, now):
                blocked = True
                wake_at = min(wake_at, resource.ready_at(amount, now))
        if not blocked:
            self._dispatch()
        elif not self._dispatching:
            self._schedule(wake_at)

    def _dispatch(self) -> None:
        if self._dispatching:
            return
        self._dispatching = True
        try:
            self._dispatch_pass()
        finally:
            self._dispatching = False

    def _dispatch_pass(self) -> None:
        now = self._now()
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire(now)
        ordering = self._ordering
        blocked: set[Resource] | None = None  # reserved by a waiter that could not go
        popped: list[Waiter] | None = None  # skipped or dead, in pop order, to restore
        wake_at = math.inf
        while True:
            waiter = ordering.pop(now)
            if waiter is None:
                break
            if popped is None:
                popped = []
            if waiter.future.cancelled():
                popped.append(waiter)  # dead: taken out after the pass
                continue
            grantable = True
            for resource, amount in waiter.demands:
                if blocked is not None and resource in blocked:
                    grantable = False
                elif not resource.available(amount, now):
                    grantable = False
                    if blocked is None:
                        blocked = set()
                    blocked.add(resource)
                    wake_at = min(wake_at, resource.ready_at(amount, now))
            if grantable:
                self._grant(waiter, now)
                left = self._waiting
                if left and self._exhausted_for_all(waiter, left, now):
                    break  # the grant used up a resource every remaining waiter needs
                continue
            popped.append(waiter)
            remaining = self._waiting
            if any(r.queued == remaining for r in blocked):  # type: ignore[union-attr]
                break  # every remaining waiter needs a blocked resource
        if popped:
            ordering.restore(popped)
            for waiter in popped:
                if waiter.state is WAITING and waiter.future.cancelled():
                    self._leave(waiter, None)
                    self._cancelled += 1
            self._fail_oversized(popped, now)
        if wake_at != math.inf or self._deadlines:
            self._schedule(wake_at)

    @staticmethod
    def _exhausted_for_all(granted: Waiter, waiting: int, now: float) -> bool:
        for resource, _ in granted.demands:
            if resource.queued == waiting and not resource.available(_ANY, now):
                return True
        return False

    def _fail_oversized(self, popped: list[Waiter], now: float) -> None:
        """After a capacity decrease, refuse waiters that can never fit any more."""
        for waiter in popped:
            if waiter.state is not WAITING:
                continue
            for resource, amount in waiter.demands:
                if amount > resource.max_amount():
                    self._leave(
                        waiter,
                        CostTooLarge(
                            f"{self._name}: capacity of {resource.key!r} was lowered to "
                            f"{resource.max_amount():g}, below this call's {amount:g}",
                            key=resource.key,
                            limiter=self._name,
                            queue_depth=len(self._ordering),
                        ),
                    )
                    break

    def _schedule(self, wake_at: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].state is not WAITING:
            heapq.heappop(deadlines)
        if deadlines:
            wake_at = min(wake_at, deadlines[0][0])
        if wake_at == math.inf or not len(self._ordering):
            return
        if self._timer is not None:
            if self._timer_at <= wake_at:
                return
            self._timer.cancel()
        self._timer_at = wake_at
        self._timer = self._clock.call_at(wake_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._dispatch()
