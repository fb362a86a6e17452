"""What the calls in flight were charged in one dimension: the header learner's counter.

:class:`InFlight` is a :class:`~stageflow_plus.primitives.resources.Resource` that never
refuses anybody: a call that needs it is charged at admission (``try_take``) and gives the
amount back when it ends (``release``, or ``refund`` when it never ran). The
:class:`~stageflow_plus.interceptors.learner.RateLimitHeaderLearner` reads ``amount`` to
tell what the provider may not have seen yet. It sits in every admitted call's demands, so
it is compiled in the accelerated build (the limiter then calls it without leaving C).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math

from ..primitives.resources import Resource

__all__ = ["InFlight"]


class InFlight(Resource):
    """Counts what calls in flight were charged in one dimension (``take`` at admission,
    ``release``/``refund`` at the end); it never refuses anybody.

    :ivar amount: the sum charged to the calls holding it now.
    """

    __slots__ = ("amount",)

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.amount = 0.0

    def max_amount(self) -> float:
        return math.inf

    def available(self, amount: float, now: float) -> bool:
        return True

    def try_take(self, amount: float, now: float) -> bool:
        self.amount += amount
        return True

    def take(self, amount: float, now: float) -> None:
        self.amount += amount

    def ready_at(self, amount: float, now: float) -> float:
        return now

    def release(self, amount: float, now: float, held_for: float) -> None:
        self.amount -= amount

    def refund(self, amount: float, now: float) -> None:
        self.amount -= amount

    def estimate_wait(self, amount: float, now: float) -> float:
        return 0.0
