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
(logger ``"stageflow_plus"``, WARNING, aggregated: the first per tool at once, then one line
per tool per 10 s with the count) and the estimate stands; the tool's result is kept.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .._logging import LogDigest, stdlib_emit
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

    __slots__ = ("_digest", "_reader", "_refund", "_tools", "adjusted")

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
        self._digest: LogDigest | None = None  # made on first use, on the chain's clock

    def after_result(self, call: ToolCall, lease: Lease, result: Any) -> None:
        if result is None or (self._tools is not None and call.tool not in self._tools):
            return
        try:
            usage = self._reader(result)
        except Exception as error:  # a broken reader: the estimate stands, the result is kept
            self._warn(call, "reader_failed",
                       f"usage reader {self._reader!r} failed for {call.tool}: {error!r}")
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
            self._warn(call, "not_a_mapping", f"usage of {call.tool} is not a mapping: {usage!r}")
            return None
        out: dict[str, float] = {}
        for name, value in usage.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 <= value < math.inf
            ):
                self._warn(call, "not_a_count", f"ignored usage of {call.tool}: {name!r} = "
                           f"{value!r} (not a finite number >= 0)")
                return None
            out[str(name)] = float(value)
        return out

    def _warn(self, call: ToolCall, label: str, text: str) -> None:
        """Log an unusable usage: the first per tool at once, then a count per window."""
        if self._digest is None:
            self._digest = LogDigest(stdlib_emit(logger), clock=self.gate.limiter.clock)
        self._digest.note(
            logging.WARNING, call.tool, label, what="unusable usages (the estimate stood)",
            event="tool_call.usage_unusable",
            first=lambda: ("tool_call.usage_unusable", f"stageflow_plus: {text}; the estimate "
                           "stands", {"tool": call.tool}))

    def __repr__(self) -> str:
        return f"UsageReconciler({self._reader!r}, refund={self._refund})"
