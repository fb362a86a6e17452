"""Limiter primitives: no Stageflow import; a small asyncio library of their own.

The hot-path modules may run compiled (see :mod:`stageflow_plus._accel`); importing this
package decides which, before any of them is imported.

.. versionadded:: 0.1.0
"""

from .. import _accel  # first: chooses compiled or source modules
from .adaptive import AdaptiveLimit, AdaptiveSettings, AdaptiveStatistics, LimitPolicy
from .admission import AdmissionPolicy, Shedding
from .clock import CallableClock, Clock, LoopClock, ManualClock, TimerHandle, as_clock
from .errors import (
    CircuitOpen,
    ConfigError,
    CostTooLarge,
    DeadlineUnmeetable,
    Evicted,
    LimiterClosed,
    QueueFull,
    Rejected,
    StageflowPlusError,
    WaitTimeout,
    WouldBlock,
)
from .lease import Lease, LimiterListener
from .limiter import Limiter
from .ordering import FifoOrdering, Ordering, PriorityFairOrdering
from .resources import ConcurrencyPool, Rate, Resource, TokenBucket
from .stats import (
    BucketStatistics,
    LimiterStatistics,
    PoolStatistics,
    WaitPercentiles,
    WaitRecorder,
)
from .waiter import Demand, Waiter, WaiterState

_accel.restore_docs()

__all__ = [
    "AdaptiveLimit",
    "AdaptiveSettings",
    "AdaptiveStatistics",
    "AdmissionPolicy",
    "BucketStatistics",
    "CallableClock",
    "CircuitOpen",
    "Clock",
    "ConcurrencyPool",
    "ConfigError",
    "CostTooLarge",
    "DeadlineUnmeetable",
    "Demand",
    "Evicted",
    "FifoOrdering",
    "Lease",
    "LimitPolicy",
    "Limiter",
    "LimiterClosed",
    "LimiterListener",
    "LimiterStatistics",
    "LoopClock",
    "ManualClock",
    "Ordering",
    "PoolStatistics",
    "PriorityFairOrdering",
    "QueueFull",
    "Rate",
    "Rejected",
    "Resource",
    "Shedding",
    "StageflowPlusError",
    "TimerHandle",
    "TokenBucket",
    "WaitPercentiles",
    "WaitRecorder",
    "WaitTimeout",
    "Waiter",
    "WaiterState",
    "WouldBlock",
    "as_clock",
]
