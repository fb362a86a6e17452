"""PriorityFairQueue: priorities with aging and weighted fair share across tenants.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..primitives.dimensions import check_dimension
from ..primitives.errors import ConfigError
from ..primitives.ordering import PriorityFairOrdering
from .call import ToolCall
from .gate import AdmissionGate, LimitPart

__all__ = ["PriorityFairQueue"]


class PriorityFairQueue(LimitPart):
    """Orders waiting calls by priority (with aging), then fairly across tenants.

    :param aging_interval: seconds of waiting worth one priority level (``None``: strict
        priorities, a low priority may starve).
    :param weights: tenant → share weight (default ``default_weight``).
    :param default_weight: weight of tenants not in ``weights``.
    :param fair_cost: what a call uses of its tenant's share: ``"calls"`` (1 per call, the
        default) or a cost dimension such as ``"tokens"`` (``call.cost[dim]``, at least 1).
    :param max_priority: the highest priority a call may carry; higher is refused at build
        time of the call (see :mod:`stageflow_plus.stageflow.overrides`) — here it only
        bounds the documented starvation formula.

    Starvation bound. Let ``τ = aging_interval``, ``P`` the highest priority in use, ``p`` a
    waiter's priority, ``Q`` the queue bound (``Backpressure(max_queue=Q)``), ``C`` the
    concurrency cap and ``S`` the longest service time. The waiter's level becomes the most
    urgent after at most ``τ·(P − p)`` seconds beyond the wait of the oldest waiter of higher
    priority, which itself is at most ``Q·S/C`` when the queue is bounded; within its level it
    then waits behind at most the ``Q`` calls queued. Hence

        max wait ≤ τ·(P − p) + 2·Q·S / C

    Without aging (``τ = None``) and higher-priority load above capacity, ``p`` waits forever.

    Fair share: within a priority, tenants are served in proportion to their weights while
    they have calls waiting (start-time fair queuing on ``fair_cost``); a tenant that idles
    banks no credit.
    """

    __slots__ = ("_aging", "_default_weight", "_fair_dimension", "_weights", "max_priority")

    def __init__(
        self,
        *,
        aging_interval: float | None = 1.0,
        weights: Mapping[str, float] | None = None,
        default_weight: float = 1.0,
        fair_cost: str = "calls",
        max_priority: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(fair_cost, str) or not fair_cost:
            raise ConfigError(
                f"PriorityFairQueue fair_cost must be 'calls' or a cost name, got {fair_cost!r}"
            )
        if max_priority is not None and (
            isinstance(max_priority, bool) or not isinstance(max_priority, int)
        ):
            raise ConfigError(
                f"PriorityFairQueue max_priority must be an int, got {max_priority!r}"
            )
        if weights is not None and not isinstance(weights, Mapping):
            raise ConfigError(f"PriorityFairQueue weights must be a mapping of tenant to weight, "
                              f"got {type(weights).__name__}")
        for tenant, weight in (weights or {}).items():
            if isinstance(weight, (int, float)) and not isinstance(weight, bool) and (
                    weight == math.inf):
                raise ConfigError(f"PriorityFairQueue weight of tenant {tenant!r} must be "
                                  f"finite, got {weight!r}")
        # validate eagerly through the ordering's own checks
        PriorityFairOrdering(
            aging_interval=aging_interval, weights=weights, default_weight=default_weight
        )
        self._aging = aging_interval
        self._weights = dict(weights or {})
        self._default_weight = default_weight
        if fair_cost != "calls":
            check_dimension(fair_cost, "PriorityFairQueue fair_cost")
        self._fair_dimension = None if fair_cost == "calls" else fair_cost
        self.max_priority = max_priority

    def configure(self, gate: AdmissionGate) -> None:
        gate.ordering = PriorityFairOrdering(
            aging_interval=self._aging,
            weights=self._weights,
            default_weight=self._default_weight,
        )
        if self._fair_dimension is not None:
            gate.set_fair_cost(self._cost_of)

    def _cost_of(self, call: ToolCall) -> float:
        assert self._fair_dimension is not None
        return max(1.0, float(call.cost.get(self._fair_dimension, 1.0)))

    def __repr__(self) -> str:
        return f"PriorityFairQueue(aging_interval={self._aging!r}, weights={self._weights!r})"
