"""How a call joins the wait queue: cost checks, deadlines, queue bounds and shedding.

:class:`Queueing` applies the limiter's
:class:`~stageflow_plus.primitives.admission.AdmissionPolicy` to a call that has to wait:
a demand no resource can ever grant is refused (:class:`CostTooLarge`); a deadline already
past, or (``deadline_aware``) nearer than the estimated wait, is refused at once
(:class:`DeadlineUnmeetable`); a full queue refuses the newcomer (:class:`QueueFull`) or
sheds a waiter (:class:`Evicted`) per the shedding policy. Only then is the waiter queued.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Sequence
from typing import Any, Final

from .admission import AdmissionPolicy, Shedding
from .dispatch import Dispatcher
from .errors import ConfigError, CostTooLarge, DeadlineUnmeetable, Evicted, QueueFull
from .loop_clock import LoopClock
from .resources import Resource
from .waiter import WAITING, Demand, Waiter

__all__ = ["Queueing"]

_Future: Final = asyncio.Future  # (Final: no module attribute lookup per queued call)


class Queueing(Dispatcher):
    """Base of :class:`~stageflow_plus.primitives.limiter.Limiter`: the way into the queue."""

    __slots__ = ("_admission", "_closed", "_max_wait", "_queue_bound", "_queue_per_key", "_seq")

    _admission: AdmissionPolicy
    # the policy's bounds, read once per queued call (compiled, a policy attribute costs a
    # lookup): max_wait and max_queue (inf: none), and whether max_queue_per_key is set
    _max_wait: float
    _queue_bound: float
    _queue_per_key: bool
    _closed: bool
    _seq: int  # the next waiter's arrival number

    def _adopt(self, policy: AdmissionPolicy) -> None:
        """Use ``policy`` for calls that queue from now on."""
        self._admission = policy
        self._max_wait = float(policy.max_wait) if policy.max_wait is not None else math.inf
        self._queue_bound = float(policy.max_queue) if policy.max_queue is not None else math.inf
        self._queue_per_key = policy.max_queue_per_key is not None

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
        """Queue a call (or refuse it), then dispatch as far as its arrival requires."""
        if self._closed:
            raise self._refuse(self._closed_error(), info)
        self._check_values(demands, cost, deadline, timeout)
        depth = self._waiting
        for resource, amount in demands:
            if amount < resource.unit and resource.unit >= 1:
                # a whole-permit resource asked for less than one permit: no need at all
                demands = [(r, a) for r, a in demands if not (a < r.unit and r.unit >= 1)]
                break
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
        if timeout is not None:
            deadline = now + timeout if deadline is None else min(deadline, now + timeout)
        if self._max_wait != math.inf:
            limit = now + self._max_wait
            deadline = limit if deadline is None else min(deadline, limit)
        if deadline is not None:
            self._check_deadline(demands, deadline, info, now)
        if self._queue_per_key or depth >= self._queue_bound:
            evicted = self._make_room(demands, priority, tenant, info, now)
        else:
            evicted = False
        clock = self._clock  # (the default clock knows the loop without a getpid() call)
        loop = clock.running_loop() if isinstance(clock, LoopClock) else asyncio.get_running_loop()
        seq = self._seq
        self._seq = seq + 1  # (an int: next() on a counter is a builtins lookup compiled)
        waiter = Waiter(
            demands,
            priority,
            tenant,
            cost,
            now,
            deadline,
            seq,
            _Future(loop=loop),  # (not loop.create_future: a Python call)
            info,
        )
        self._ordering.push(waiter)
        self._waiting += 1
        for resource, amount in demands:
            resource.queued += 1
            resource.queued_amount += amount
        if deadline is not None:
            deadlines = self._deadlines
            if len(deadlines) > 2 * self._waiting + 64:
                # entries of waiters gone (granted, left) are skipped lazily at the top; drop
                # them once they outnumber the live ones, so a granted call's waiter (its
                # lease, its call) is not kept until its deadline: O(1) amortised
                deadlines = self._deadlines = [e for e in deadlines if e[2].state is WAITING]
                heapq.heapify(deadlines)
            heapq.heappush(deadlines, (deadline, waiter.seq, waiter))
        if self._listener is not None:
            # not depth + 1: shedding may have evicted a waiter since depth was read
            self._listener.on_queued(info, self._waiting)
        if evicted:  # the evicted waiter may have reserved what others can now take
            self._dispatch()
        else:
            self._dispatch_for(waiter, now)
        return waiter

    def _check_values(
        self, demands: Sequence[Demand], cost: float, deadline: float | None,
        timeout: float | None,
    ) -> None:
        """The last line of defence against values no limit can work with (the chain
        validates a call's fields when it is built): a NaN amount neither fits nor fails, so
        a bucket's timer would re-arm for "now" forever; a negative one would add capacity;
        a NaN or infinite fair-share cost, or a NaN deadline, breaks the queue's order."""
        for resource, amount in demands:
            if not amount >= 0.0:
                raise ConfigError(
                    f"{self._name}: a call asks {amount!r} of {resource.key!r}; amounts must "
                    "be numbers >= 0"
                )
        if not 0.0 <= cost < math.inf:
            raise ConfigError(
                f"{self._name}: a call's fair-share cost must be a finite number >= 0, "
                f"got {cost!r}"
            )
        if deadline is not None and deadline != deadline:
            raise ConfigError(f"{self._name}: a call's deadline is NaN")
        if timeout is not None and timeout != timeout:
            raise ConfigError(f"{self._name}: a call's timeout is NaN")

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
        tenant: str,
        info: Any,
        now: float,
    ) -> bool:
        """Make room in a full queue or refuse; ``True`` when a waiter was evicted."""
        policy = self._admission
        full: Resource | None = None
        if policy.max_queue_per_key is not None:
            full = next((r for r, _ in demands if r.queued >= policy.max_queue_per_key), None)
        total_full = policy.max_queue is not None and len(self._ordering) >= policy.max_queue
        if full is None and not total_full:
            return False

        def needs_full(w: Waiter) -> bool:
            return any(r is full for r, _ in w.demands)

        matches = needs_full if full is not None else None
        victim: Waiter | None = None
        if policy.shedding is Shedding.EVICT_LOWEST_PRIORITY:
            victim = self._ordering.victim(matches)
            if victim is not None and victim.priority >= priority and not (
                victim.priority == priority and _unfair(self._ordering, victim.tenant, tenant)
            ):
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
                f"{priority}, tenant {tenant!r} (shedding={policy.shedding.value})",
                key=key,
                limiter=self._name,
                queue_depth=len(self._ordering),
            ),
        )
        return True


def _unfair(ordering: Any, holder: str, newcomer: str) -> bool:
    """``ordering.unfair(...)``; ``False`` for an ordering written before that method."""
    unfair = getattr(ordering, "unfair", None)
    return bool(unfair(holder, newcomer)) if unfair is not None else False
