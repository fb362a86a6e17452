"""The queue pass of a :class:`~stageflow_plus.primitives.limiter.Limiter`.

:class:`Dispatcher` holds what happens *inside* the wait queue once calls are in it: the
pass that grants waiters best-first with reservations, the exits (grant, leave with an
error or a cancellation, deadline expiry) and the single timer. The limiter's public API
lives in :mod:`~stageflow_plus.primitives.limiter`, the way in (bounds, shedding, deadline
checks) in :mod:`~stageflow_plus.primitives.queueing`.

Dispatch walks the queue best-first (the ordering policy decides "best"). A waiter whose
demands are all available is granted. A waiter that cannot be granted *reserves* the
resources it is blocked on: nobody behind it may take from them in this pass. So a large
call is never starved by a stream of small ones on the same bucket, while a call for an idle
tool still passes a queue blocked on a busy tool. A pass stops as soon as no remaining
waiter could be granted (every one needs a resource that is used up or reserved).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from .clock import Clock, TimerHandle
from .errors import CostTooLarge, LimiterClosed, Rejected, WaitTimeout
from .lease import Lease, LimiterListener
from .ordering import Ordering
from .resources import Resource
from .waiter import WAITING, Demand, Waiter, WaiterState

__all__ = ["Dispatcher"]

GRANTED: Final = WaiterState.GRANTED  # (Final: no dictionary lookup in compiled code)
LEFT: Final = WaiterState.LEFT

SWEEP_BATCH: Final = 256
"""Cancelled waiters one queue pass takes out before it defers the rest of its work to a
later event-loop iteration (see :meth:`Dispatcher._defer_pass`)."""


class Dispatcher:
    """Base of :class:`~stageflow_plus.primitives.limiter.Limiter`: the queue pass.

    Its slots are the queue's state; the limiter's ``__init__`` sets them.
    """

    __slots__ = (
        "_admitted",
        "_cancelled",
        "_clock",
        "_deadlines",
        "_dispatching",
        "_in_flight",
        "_listener",
        "_name",
        "_now",
        "_ordering",
        "_record_wait",
        "_rejected",
        "_sweep_pending",
        "_timer",
        "_timer_at",
        "_waiting",
    )

    _name: str
    _ordering: Ordering
    _clock: Clock
    _now: Callable[[], float]
    _listener: LimiterListener | None
    _deadlines: list[tuple[float, int, Waiter]]
    _timer: TimerHandle | None
    _timer_at: float
    _dispatching: bool
    _sweep_pending: bool
    _waiting: int
    _in_flight: int
    _admitted: int
    _cancelled: int
    _rejected: dict[str, int]
    _record_wait: Callable[[float], None]

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
            resource.holders += 1
        waiter.state = GRANTED
        self._ordering.granted(waiter)
        self._waiting -= 1
        wait = now - waiter.enqueued_at
        self._admitted += 1
        self._in_flight += 1
        self._record_wait(wait)
        lease = Lease(self, waiter.demands, now, wait, waiter.info)  # type: ignore[arg-type]
        lease.queued = True
        waiter.future.set_result(lease)  # (a Dispatcher is always a Limiter)
        if self._listener is not None:
            self._listener.on_admitted(waiter.info, wait)

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
            self._dispatch_at(now)
        elif not self._dispatching:
            self._schedule(wake_at)

    def _dispatch(self) -> None:
        if not self._dispatching:
            self._dispatch_at(self._now())

    def _dispatch_at(self, now: float) -> None:
        """:meth:`_dispatch` with the time the caller has just read (one clock read fewer)."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._dispatch_pass(now):
                # grants reordered the queue (fair share) past a reservation: again
                now = self._now()
        finally:
            self._dispatching = False

    def _dispatch_pass(self, now: float) -> bool:
        """One pass over the queue; ``True`` when another pass may grant more (a waiter was
        held back only by a reservation while grants changed the fair-share order)."""
        granted = held_back = False
        dead = 0
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
            if waiter.future.cancelled():
                if popped is None:
                    popped = []
                popped.append(waiter)  # dead: taken out after the pass
                dead += 1
                if dead >= SWEEP_BATCH and self._defer_pass():
                    break  # a mass cancellation: the rest in a later loop iteration
                continue
            grantable = True
            for resource, amount in waiter.demands:
                if blocked is not None and resource in blocked:
                    grantable = False
                    held_back = True
                elif not resource.available(amount, now):
                    grantable = False
                    if blocked is None:
                        blocked = set()
                    blocked.add(resource)
                    wake_at = min(wake_at, resource.ready_at(amount, now))
            if grantable:
                self._grant(waiter, now)
                granted = True
                left = self._waiting
                if left:
                    exhausted = self._exhausted_for_all(waiter, left, now)
                    if exhausted is not None:
                        # the grant used up a resource every remaining waiter needs: nobody
                        # else can go before it refills (a bucket: wake then) or is released
                        wake_at = min(wake_at, exhausted.ready_at(exhausted.unit, now))
                        break
                continue
            if popped is None:
                popped = []
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
        return granted and held_back and self._waiting > 0

    def _defer_pass(self) -> bool:
        """Continue the queue pass in a later event-loop iteration (``False``: no running
        loop, go on now). Sweeping tens of thousands of cancelled waiters in one pass would
        stall the loop; meanwhile a cancelled caller's :meth:`abandon` leaves the queue
        without a pass of its own (the pending one covers it)."""
        if self._sweep_pending:
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._sweep_pending = True
        loop.call_soon(self._deferred_pass)
        return True

    def _deferred_pass(self) -> None:
        self._sweep_pending = False
        self._dispatch()

    @staticmethod
    def _exhausted_for_all(granted: Waiter, waiting: int, now: float) -> Resource | None:
        for resource, _ in granted.demands:
            if resource.queued == waiting and not resource.available(resource.unit, now):
                return resource
        return None

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
