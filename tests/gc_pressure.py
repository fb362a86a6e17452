"""Aggressive garbage collection for the stress and property tests.

A compiled class whose ``tp_traverse`` visits a reference more often than it holds it makes
the cycle collector under-count the referent's outside references: a live object (e.g. a
``TimerHandle`` still on the event loop's heap) then looks like garbage and is cleared, and
the loop dies at its next timer operation. Such a defect shows only when a collection runs
while the object is young and its outside referrer old, so the stress tests:

* lower the collection thresholds for their whole run (:func:`aggressive_gc`),
* leave timers pending on the running loop from limiters they drop at once
  (:func:`orphan_timer`): exactly the objects such a collection would wrongly clear,
* and collect a random generation between steps, then check the loop's timer heap
  (:func:`collect`).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager

from stageflow_plus.primitives import Limiter, Rate, TokenBucket

__all__ = ["aggressive_gc", "check_loop_heap", "collect", "orphan_timer"]

THRESHOLD = (25, 2, 2)
"""Collect generation 0 every 25 allocations (the default is 700)."""


@contextmanager
def aggressive_gc(threshold: tuple[int, int, int] = THRESHOLD) -> Iterator[None]:
    """Run the block with low collection thresholds (restored afterwards).

    Everything alive before the block is frozen (``gc.freeze``) for its duration, so the
    frequent collections look only at what the block creates and stay cheap.
    """
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def orphan_timer() -> None:
    """Leave a timer on the running loop whose only owner is a limiter dropped at once.

    The limiter (on the loop's clock) queues a call on an empty bucket, which schedules its
    wake-up on the loop; the call is abandoned and the limiter dropped: the loop's heap now
    holds the only outside reference to a young cycle (limiter -> timer -> bound method ->
    limiter), the shape that an over-visiting ``tp_traverse`` lets the collector clear.
    """
    limiter = Limiter(name="orphan")
    bucket = TokenBucket("orphan", Rate(1, per=3600, start_full=False), limiter.clock.now())
    now = limiter.clock.now()
    waiter = limiter.enqueue([(bucket, 1.0)], now)
    limiter.abandon(waiter)


def check_loop_heap() -> None:
    """Every timer on the running loop's heap is intact, and the heap still orders."""
    loop = asyncio.get_running_loop()
    for handle in getattr(loop, "_scheduled", ()):
        assert hasattr(handle, "_when"), f"the collector cleared a live timer: {handle!r}"
    loop.call_later(3600.0, _noop).cancel()  # a push compares against heap entries


def collect(generation: int) -> None:
    """Collect ``generation``, then check the loop's timers survived it.

    Generations 0 and 1 are the ones that matter (a young object, an old referrer) and
    cost little; a full collection scans every object of the process.
    """
    gc.collect(generation)
    check_loop_heap()


def _noop() -> None:
    """A timer callback that does nothing."""
