"""Releasing per-key state once idle, at a bounded cost per new key.

Limiters keep state per run, per tenant, per tool or per provider key (concurrency pools,
rate buckets). Every pipeline run has a new run id, so that state must go once idle, or a
long-running service grows without bound. :func:`sweep_idle` is a clock sweep, run each
time a new key is added: it examines the oldest few entries of the table, drops those that
are idle and moves the others to the end. The cost per new key is constant (no O(n) pass
on the hot path), and the table never holds much more than twice the entries in use,
whatever the number of distinct keys seen.

A dropped entry must be re-creatable without changing what the limiter does: a pool with
no holder and nobody waiting, a bucket that is full again, unpaused, unheld and unqueued.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

__all__ = ["SWEEP_BUDGET", "sweep_idle"]

K = TypeVar("K")
V = TypeVar("V")

SWEEP_BUDGET = 2
"""Entries examined per new key: more than one, so idle entries drain faster than new
keys arrive (a table of ``L`` entries in use settles below about ``2 L`` entries)."""


def sweep_idle(
    table: OrderedDict[K, V], idle: Callable[[V], bool], budget: int = SWEEP_BUDGET
) -> int:
    """Examine up to ``budget`` of the oldest entries of ``table``; drop the idle ones and
    move the others to the end (they are looked at again after everything else). Call it
    before adding a new key. Returns how many entries were dropped."""
    dropped = 0
    for _ in range(min(budget, len(table))):
        key, value = next(iter(table.items()))
        if idle(value):
            del table[key]
            dropped += 1
        else:
            table.move_to_end(key)
    return dropped
