"""UnchargedDimensionWatch: a warning when calls carry no cost for a bucket's dimension.

Added by :func:`~stageflow_plus.build` when the config declares no cost that charges a
bucket's dimension: it logs a warning on the ``stageflow_plus`` logger the first time a call
comes with no cost for it (a bucket nothing charges limits nothing).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..primitives.resources import Resource
from .call import ToolCall
from .part import LimitPart

__all__ = ["UnchargedDimensionWatch"]

logger = logging.getLogger("stageflow_plus")


class UnchargedDimensionWatch(LimitPart):
    """Warns once per dimension when a call carries no cost for a bucket's dimension.

    A chain step fused into the admission gate beside the rate limiter; it adds no demand.
    Once every watched dimension has been warned about it does nothing.

    :param dimensions: the bucket dimensions to watch (``"requests"`` is never watched).
    :param where: the config entry that declared them, for the message.
    """

    __slots__ = ("_pending", "_where")

    contributes_demands = True

    def __init__(self, dimensions: Iterable[str], *, where: str = "the rate limiter") -> None:
        super().__init__()
        self._pending = tuple(sorted({d for d in dimensions if d != "requests"}))
        self._where = where

    @property
    def pending(self) -> tuple[str, ...]:
        """The dimensions not warned about yet."""
        return self._pending

    def add_demands(self, call: ToolCall, now: float, out: list[tuple[Resource, float]]) -> None:
        if not self._pending:
            return
        cost = call.cost
        missing = [d for d in self._pending if d not in cost]
        if missing:
            self._pending = tuple(d for d in self._pending if d not in missing)
            for dimension in missing:
                logger.warning(
                    "stageflow_plus: tool call %r carries no %r cost, so the %r bucket of %s "
                    "charges it nothing; give the registry a cost_of estimator (or a run's "
                    "_cost) that returns %r, or fix the dimension's name (warned once)",
                    call.tool, dimension, dimension, self._where, dimension,
                )

    def __repr__(self) -> str:
        return f"UnchargedDimensionWatch(pending={list(self._pending)!r})"
