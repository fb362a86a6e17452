"""Who goes next: ordering policies over the limiter's single wait queue.

A policy stores waiters and hands them out best-first. :class:`FifoOrdering` is arrival
order. :class:`PriorityFairOrdering` adds integer priorities with aging and weighted fair
share across tenants:

* **Priority with aging.** Waiters are grouped by base priority (higher is more urgent).
  Each level is as urgent as its oldest waiter: ``priority + waited / aging_interval``. The
  level with the highest urgency is served next, so a level starved for
  ``aging_interval * (p_high - p_low)`` seconds overtakes any newer higher-priority work.
  With ``aging_interval=None`` priorities are strict (a low level can starve forever).
* **Weighted fair share.** Within a level, tenants are served by start-time fair queuing:
  each tenant carries a virtual time advanced by ``cost / weight`` per granted call, and the
  tenant with the smallest virtual time goes next; a tenant returning from idle starts at the
  system's virtual time, so idling banks no credit. Within a tenant, arrival order. A
  tenant is forgotten as soon as it has no waiter and owes nothing (its virtual time is not
  ahead of the system's); one that owes (at most its last call's ``cost / weight``) is
  remembered among the :data:`IDLE_TENANTS` most recently idle ones, so the memory for
  tenants stays bounded whatever their number.

Protocol used by the limiter (all synchronous; the limiter never awaits while dispatching):
``push`` adds, ``pop`` hands out the best waiter (temporarily out of selection), ``restore``
puts skipped waiters back exactly where they were, ``granted`` / ``left`` account for a
waiter leaving. Removal on cancel is O(1): entries are dropped lazily.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from mypy_extensions import mypyc_attr

from .errors import ConfigError
from .waiter import WAITING, Waiter

__all__ = ["IDLE_TENANTS", "FifoOrdering", "Ordering", "PriorityFairOrdering"]

IDLE_TENANTS = 1024
"""How many idle tenants that still owe fair share :class:`PriorityFairOrdering` remembers."""


class Ordering(Protocol):
    """A waiting-order policy (see the module docstring for the protocol)."""

    def __len__(self) -> int: ...
    def push(self, waiter: Waiter) -> None: ...
    def pop(self, now: float) -> Waiter | None: ...
    def restore(self, skipped: list[Waiter]) -> None: ...
    def granted(self, waiter: Waiter) -> None: ...
    def left(self, waiter: Waiter) -> None: ...
    def victim(self, matches: Callable[[Waiter], bool] | None = None) -> Waiter | None: ...
    def unfair(self, holder: str, newcomer: str) -> bool: ...
    def oldest(self, matches: Callable[[Waiter], bool] | None = None) -> Waiter | None: ...
    def waiting(self) -> Iterator[Waiter]: ...


def _compact(queue: deque[Waiter], live: int) -> deque[Waiter]:
    """Drop stale entries once they outnumber live ones (keeps memory O(live))."""
    if len(queue) > 2 * live + 64:
        return deque(w for w in queue if w.state is WAITING)
    return queue


@mypyc_attr(allow_interpreted_subclasses=True)
class FifoOrdering:
    """Arrival order: the first to wait is the first considered."""

    __slots__ = ("_live", "_queue")

    def __init__(self) -> None:
        self._queue: deque[Waiter] = deque()  # live waiters in arrival order, plus stale ones
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, waiter: Waiter) -> None:
        self._queue.append(waiter)
        self._live += 1

    def pop(self, now: float) -> Waiter | None:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if waiter.state is WAITING:
                return waiter
        return None

    def restore(self, skipped: list[Waiter]) -> None:
        self._queue.extendleft(reversed(skipped))

    def granted(self, waiter: Waiter) -> None:
        self._live -= 1

    def left(self, waiter: Waiter) -> None:
        self._live -= 1
        self._queue = _compact(self._queue, self._live)

    def waiting(self) -> Iterator[Waiter]:
        return (w for w in self._queue if w.state is WAITING)

    def victim(self, matches: Callable[[Waiter], bool] | None = None) -> Waiter | None:
        for waiter in reversed(self._queue):
            if waiter.state is WAITING and (matches is None or matches(waiter)):
                return waiter
        return None

    def unfair(self, holder: str, newcomer: str) -> bool:
        """Arrival order knows no tenants: never."""
        return False

    def oldest(self, matches: Callable[[Waiter], bool] | None = None) -> Waiter | None:
        for waiter in self._queue:
            if waiter.state is WAITING and (matches is None or matches(waiter)):
                return waiter
        return None


class _Tenant:
    __slots__ = ("live", "vtime", "weight")

    def __init__(self, weight: float, vtime: float) -> None:
        self.weight = weight
        self.vtime = vtime  # virtual start time of this tenant's next call
        self.live = 0  # waiters of this tenant in any level


class _Level:
    __slots__ = ("arrivals", "live", "selectable", "tenants")

    def __init__(self) -> None:
        self.arrivals: deque[Waiter] = deque()  # arrival order (stale entries dropped lazily)
        self.tenants: dict[str, deque[Waiter]] = {}  # per tenant, arrival order, selectable
        self.live = 0  # WAITING waiters in this level (selectable or popped by a scan)
        self.selectable = 0  # live waiters currently in the tenant queues


@mypyc_attr(allow_interpreted_subclasses=True)
class PriorityFairOrdering:
    """Priority levels with aging, weighted fair share across tenants within a level.

    :param aging_interval: seconds of waiting worth one priority level; ``None`` for strict
        priorities (no aging). See the module docstring for the starvation bound.
    :param weights: tenant → weight (share is proportional to weight); others get
        ``default_weight``.
    :param default_weight: the weight of tenants not named in ``weights``.
    """

    __slots__ = (
        "_aging",
        "_default_weight",
        "_idle",
        "_levels",
        "_live",
        "_tenants",
        "_vtime",
        "_weights",
    )

    def __init__(
        self,
        *,
        aging_interval: float | None = 1.0,
        weights: Mapping[str, float] | None = None,
        default_weight: float = 1.0,
    ) -> None:
        if aging_interval is not None and not (
            isinstance(aging_interval, (int, float)) and aging_interval > 0
        ):
            raise ConfigError(
                f"aging_interval must be a number > 0 or None, got {aging_interval!r}"
            )
        weights = dict(weights or {})
        for tenant, weight in [*weights.items(), ("<default>", default_weight)]:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ConfigError(
                    f"weight of tenant {tenant!r} must be a number > 0, got {weight!r}"
                )
        self._aging = aging_interval
        self._weights = weights
        self._default_weight = float(default_weight)
        self._levels: dict[int, _Level] = {}
        # tenants with waiters, plus idle ones still owing (their vtime ahead of _vtime)
        self._tenants: dict[str, _Tenant] = {}
        # the owing idle tenants, least recently idle first; at most IDLE_TENANTS of them
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._vtime = 0.0  # system virtual time: start tag of the last granted call
        self._live = 0

    @property
    def aging_interval(self) -> float | None:
        return self._aging

    def weight_of(self, tenant: str) -> float:
        """The configured weight of ``tenant``."""
        return self._weights.get(tenant, self._default_weight)

    def __len__(self) -> int:
        return self._live

    def push(self, waiter: Waiter) -> None:
        level = self._levels.get(waiter.priority)
        if level is None:
            level = self._levels[waiter.priority] = _Level()
        tenant = self._tenants.get(waiter.tenant)
        if tenant is None:
            tenant = self._tenants[waiter.tenant] = _Tenant(
                self.weight_of(waiter.tenant), self._vtime
            )
        elif tenant.live == 0:
            tenant.vtime = max(tenant.vtime, self._vtime)  # no credit banked while idle
            self._idle.pop(waiter.tenant, None)
        tenant.live += 1
        level.arrivals.append(waiter)
        queue = level.tenants.get(waiter.tenant)
        if queue is None:
            queue = level.tenants[waiter.tenant] = deque()
        queue.append(waiter)
        level.live += 1
        level.selectable += 1
        self._live += 1

    def pop(self, now: float) -> Waiter | None:
        # the most urgent level: smallest enqueued_at - priority * aging of its oldest waiter
        # (``now`` cancels out); a scan over the levels in use, inlined (the hot path)
        aging = self._aging
        best_level: _Level | None = None
        best_key = math.inf
        for priority, level in self._levels.items():
            if level.selectable <= 0:
                continue
            if aging is None:
                key = -float(priority)
            else:
                arrivals = level.arrivals
                while arrivals[0].state is not WAITING:  # live > 0: a WAITING one exists
                    arrivals.popleft()
                key = arrivals[0].enqueued_at - priority * aging
            if best_level is None or key < best_key:
                best_level, best_key = level, key
        if best_level is None:
            return None
        # the tenant with the smallest virtual time, then the earliest arrival
        tenants = self._tenants
        best_queue: deque[Waiter] | None = None
        best_vtime = math.inf
        best_seq: float = math.inf  # a float throughout (compiled code keeps one type)
        empty: list[str] | None = None
        for name, queue in best_level.tenants.items():
            while queue and queue[0].state is not WAITING:
                queue.popleft()
            if not queue:
                if empty is None:
                    empty = []
                empty.append(name)
                continue
            vtime = tenants[name].vtime
            if vtime < best_vtime or (vtime == best_vtime and queue[0].seq < best_seq):
                best_queue, best_vtime, best_seq = queue, vtime, float(queue[0].seq)
        if empty is not None:
            for name in empty:
                del best_level.tenants[name]
        assert best_queue is not None, "level.selectable out of sync with its tenant queues"
        best_level.selectable -= 1
        return best_queue.popleft()

    def restore(self, skipped: list[Waiter]) -> None:
        for waiter in reversed(skipped):
            level = self._levels[waiter.priority]
            queue = level.tenants.get(waiter.tenant)
            if queue is None:
                queue = level.tenants[waiter.tenant] = deque()
            queue.appendleft(waiter)
            level.selectable += 1

    def granted(self, waiter: Waiter) -> None:
        tenant = self._tenants[waiter.tenant]
        self._vtime = max(self._vtime, tenant.vtime)
        tenant.vtime += waiter.cost / tenant.weight
        self._forget(waiter, tenant, popped=True)

    def left(self, waiter: Waiter) -> None:
        self._forget(waiter, self._tenants[waiter.tenant], popped=False)

    def _forget(self, waiter: Waiter, tenant: _Tenant, *, popped: bool) -> None:
        tenant.live -= 1
        if tenant.live == 0:
            if tenant.vtime <= self._vtime:
                del self._tenants[waiter.tenant]  # nothing owed either way: forget it
            else:  # it owes (ahead of the system's virtual time): remembered, bounded
                idle = self._idle
                idle[waiter.tenant] = None
                if len(idle) > IDLE_TENANTS:
                    oldest, _ = idle.popitem(last=False)
                    del self._tenants[oldest]  # its debt (< one call's cost) is forgiven
        level = self._levels[waiter.priority]
        level.live -= 1
        if not popped:
            level.selectable -= 1  # it stays in its tenant queue as a stale entry
        if level.live == 0:
            del self._levels[waiter.priority]
        else:
            level.arrivals = _compact(level.arrivals, level.live)
        self._live -= 1

    def waiting(self) -> Iterator[Waiter]:
        for level in list(self._levels.values()):
            yield from (w for w in level.arrivals if w.state is WAITING)

    def victim(self, matches: Callable[[Waiter], bool] | None = None) -> Waiter | None:
        """The waiter to shed: in the lowest priority level, of the tenant holding the most
        waiting calls per unit of weight (so shedding keeps fair share too), its newest.

        Ties go to the newest arrival. Costs O(tenants in the level).
        """
        for priority in sorted(self._levels):
            best: Waiter | None = None
            best_share = -math.inf
            for name, queue in self._levels[priority].tenants.items():
                newest = next(
                    (
                        w
                        for w in reversed(queue)
                        if w.state is WAITING and (matches is None or matches(w))
                    ),
                    None,
                )
                if newest is None:
                    continue
                tenant = self._tenants[name]
                share = tenant.live / tenant.weight
                if share > best_share or (share == best_share and best is not None
                                          and newest.seq > best.seq):
                    best, best_share = newest, share
            if best is not None:
                return best
        return None

    def unfair(self, holder: str, newcomer: str) -> bool:
        """Whether a full queue should make room for ``newcomer`` by shedding a call of
        ``holder`` (same priority): the holder, even one call lighter, would still hold more
        waiting calls per unit of weight than the newcomer with its call queued."""
        if holder == newcomer:
            return False
        held = self._tenants.get(holder)
        if held is None:
            return False
        joining = self._tenants.get(newcomer)
        live = joining.live if joining is not None else 0
        return (held.live - 1) / held.weight > (live + 1) / self.weight_of(newcomer)

    def oldest(self, matches: Callable[[Waiter], bool] | None = None) -> Waiter | None:
        candidates = [
            next(
                (w for w in lvl.arrivals if w.state is WAITING and (matches is None or matches(w))),
                None,
            )
            for lvl in self._levels.values()
        ]
        live = [w for w in candidates if w is not None]
        return min(live, key=lambda w: w.seq) if live else None
