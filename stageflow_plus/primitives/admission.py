"""Admission policy: how many may wait, who is shed, and whether a deadline can be met.

The policy is pure configuration; the :class:`~stageflow_plus.primitives.limiter.Limiter`
applies it when a call has to queue.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from .errors import ConfigError

__all__ = ["AdmissionPolicy", "Shedding"]


class Shedding(StrEnum):
    """What happens when a queue bound is reached.

    * ``REJECT_NEW`` — the newcomer gets :class:`~stageflow_plus.primitives.errors.QueueFull`.
    * ``EVICT_LOWEST_PRIORITY`` — the least urgent waiter is evicted with
      :class:`~stageflow_plus.primitives.errors.Evicted` if the newcomer's priority is
      strictly higher; otherwise the newcomer is refused. Least urgent: the lowest priority;
      with :class:`~stageflow_plus.primitives.ordering.PriorityFairOrdering`, of the tenant
      holding the most waiting calls per unit of weight (shedding keeps fair share), its
      newest call; with FIFO, the newest. Under ``PriorityFairOrdering`` a newcomer of the
      *same* priority also gets a place when that tenant, one call lighter, would still
      hold more of the queue per weight than the newcomer's tenant: a tenant flooding the
      queue cannot lock a light tenant out of it.
    * ``EVICT_OLDEST`` — the oldest waiter is evicted (when stale work is worthless).
    """

    REJECT_NEW = "reject_new"
    EVICT_LOWEST_PRIORITY = "evict_lowest_priority"
    EVICT_OLDEST = "evict_oldest"


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """Bounds and deadline rules for queued calls.

    :ivar max_queue: most calls waiting in total (``None``: unbounded).
    :ivar max_queue_per_key: most calls waiting on any one limit key (``None``: unbounded).
    :ivar shedding: what to do when a bound is reached (see :class:`Shedding`).
    :ivar deadline_aware: refuse at once with ``DeadlineUnmeetable`` when the estimated wait
        exceeds the caller's remaining deadline (instead of waiting and timing out).
    :ivar max_wait: longest any call may wait in the queue, seconds (``None``: no limit).
    """

    max_queue: int | None = None
    max_queue_per_key: int | None = None
    shedding: Shedding = Shedding.REJECT_NEW
    deadline_aware: bool = True
    max_wait: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_queue_per_key"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ConfigError(
                    f"AdmissionPolicy.{name} must be an int >= 0 or None, got {value!r}"
                )
        if not isinstance(self.shedding, Shedding):
            try:
                object.__setattr__(self, "shedding", Shedding(self.shedding))
            except ValueError:
                choices = ", ".join(s.value for s in Shedding)
                raise ConfigError(
                    f"AdmissionPolicy.shedding must be one of {choices}; got {self.shedding!r}"
                ) from None
        if not isinstance(self.deadline_aware, bool):
            raise ConfigError(f"AdmissionPolicy.deadline_aware must be True or False, "
                              f"got {self.deadline_aware!r}")
        if self.max_wait is not None and (
            isinstance(self.max_wait, bool)
            or not isinstance(self.max_wait, (int, float))
            or not self.max_wait > 0
            or math.isinf(self.max_wait)
        ):
            raise ConfigError(
                f"AdmissionPolicy.max_wait must be a number > 0, got {self.max_wait!r}"
            )
