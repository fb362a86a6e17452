"""A call waiting for capacity: the one record every limiter queues.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .resources import Resource

__all__ = ["Demand", "Waiter", "WaiterState"]

Demand = tuple["Resource", float]
"""One need of a call: ``(resource, amount)``."""


class WaiterState(Enum):
    """Where a waiter is in its life. Transitions: WAITING → GRANTED | LEFT."""

    WAITING = "waiting"
    GRANTED = "granted"
    LEFT = "left"  # cancelled, timed out, rejected or evicted


WAITING: Final = WaiterState.WAITING  # (Final: compiled code reads it without a lookup)


class Waiter:
    """One queued call: its demands, urgency, owner and deadline, plus its wake-up future."""

    __slots__ = (
        "cost",
        "deadline",
        "demands",
        "enqueued_at",
        "future",
        "info",
        "priority",
        "seq",
        "state",
        "tenant",
    )

    def __init__(
        self,
        demands: Sequence[Demand],
        priority: int,
        tenant: str,
        cost: float,
        enqueued_at: float,
        deadline: float | None,
        seq: int,
        future: asyncio.Future[Any],
        info: Any = None,
    ) -> None:
        self.demands = demands
        self.priority = priority  # higher is more urgent
        self.tenant = tenant
        self.cost = cost  # fair-share cost charged to the tenant when granted
        self.enqueued_at = enqueued_at
        self.deadline = deadline  # absolute time on the limiter's clock, or None
        self.seq = seq  # arrival order, unique per limiter
        self.future = future
        self.state = WAITING
        self.info = info  # caller's context, e.g. the ToolCall, for events

    def __repr__(self) -> str:
        return (
            f"<Waiter #{self.seq} p={self.priority} tenant={self.tenant!r} "
            f"cost={self.cost:g} {self.state.value}>"
        )
