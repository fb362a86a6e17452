"""UsageReconciler: charge or refund the difference between a call's estimate and its usage.

A limiter interceptor that reads what the provider billed from each answer (e.g.
:func:`~stageflow_plus.llm.usage.openai_usage`, :func:`~stageflow_plus.llm.usage.
anthropic_usage`) and adjusts the call's lease, so the token buckets reflect it at once:

* ``refund=True`` — both ways: a call that used less than its estimate gives the rest back
  (a provider that reconciles, as Anthropic does with ``max_tokens``);
* ``refund=False`` — only up: a call that used more is charged the excess, one that used
  less gives nothing back (a provider that charges ``max_tokens`` at admission and keeps it,
  as OpenAI documents).

A reader that raises or returns junk (not a mapping of finite numbers ``>= 0``) is logged
(logger ``"stageflow_plus"``, WARNING) and the estimate stands; the tool's result is kept.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ..primitives.errors import ConfigError
from ..primitives.lease import Lease
from ..primitives.resources import TokenBucket
from .call import ToolCall
from .part import LimitPart

__all__ = ["UsageReconciler"]

logger = logging.getLogger("stageflow_plus")

UsageReader = Callable[[Any], Mapping[str, float] | None]


class UsageReconciler(LimitPart):
    """Adjusts each call's token charge to the provider's usage (a limiter interceptor).

    :param reader: ``result -> {dimension: tokens}`` or ``None`` (no usage: estimate stands).
    :param refund: give back what a call did not use (default ``True``).
    :param tools: the tools whose results are read (default: all).
    """

    __slots__ = ("_reader", "_refund", "_tools", "adjusted")

    observes_results = True

    def __init__(self, reader: UsageReader, *, refund: bool = True,
                 tools: Collection[str] | None = None) -> None:
        super().__init__()
        if not callable(reader):
            raise ConfigError(f"UsageReconciler reader must be callable, got {reader!r}")
        if not isinstance(refund, bool):
            raise ConfigError(f"UsageReconciler refund must be True or False, got {refund!r}")
        if tools is not None and (isinstance(tools, str) or not all(
            isinstance(t, str) for t in tools
        )):
            raise ConfigError(f"UsageReconciler tools must be a list of tool names, got "
                              f"{tools!r}")
        self._reader = reader
        self._refund = refund
        self._tools = frozenset(tools) if tools is not None else None
        #: leases adjusted so far
        self.adjusted = 0

    def after_result(self, call: ToolCall, lease: Lease, result: Any) -> None:
        if result is None or (self._tools is not None and call.tool not in self._tools):
            return
        try:
            usage = self._reader(result)
        except Exception as error:  # a broken reader: the estimate stands, the result is kept
            logger.warning("stageflow_plus: usage reader %r failed for %s: %r", self._reader,
                           call.tool, error)
            return
        if usage is None:
            return
        actual = self._checked(usage, call)
        if actual is None:
            return
        if not self._refund:
            charged = {r.dimension: a for r, a in lease.demands if isinstance(r, TokenBucket)}
            actual = {d: max(v, charged.get(d, 0.0)) for d, v in actual.items()}
        lease.adjust(actual)
        self.adjusted += 1

    def _checked(self, usage: Any, call: ToolCall) -> dict[str, float] | None:
        if not isinstance(usage, Mapping):
            logger.warning("stageflow_plus: usage of %s is not a mapping: %r", call.tool, usage)
            return None
        out: dict[str, float] = {}
        for name, value in usage.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 <= value < math.inf
            ):
                logger.warning("stageflow_plus: ignored usage of %s: %r = %r (not a finite "
                               "number >= 0)", call.tool, name, value)
                return None
            out[str(name)] = float(value)
        return out

    def __repr__(self) -> str:
        return f"UsageReconciler({self._reader!r}, refund={self._refund})"
