"""LimitPart: the base class of the four limiter interceptors.

Each limiter interceptor contributes one concern to an
:class:`~stageflow_plus.interceptors.gate.AdmissionGate` through the hooks here. It is kept
out of :mod:`~stageflow_plus.interceptors.gate` because the gate is compiled in the
accelerated build while this class stays plain Python: subclasses (yours included) may
override anything, class attributes too.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..primitives.errors import ConfigError
from ..primitives.lease import Lease
from ..primitives.resources import Resource
from ..primitives.stats import BucketStatistics, PoolStatistics
from .call import Proceed, ToolCall

if TYPE_CHECKING:
    from .gate import AdmissionGate

__all__ = ["LimitPart"]


class LimitPart:
    """Base of the four limiter interceptors. Subclasses override the hooks they need.

    An instance belongs to at most one gate (one wait queue): sharing one instance between
    two chains would split its waiters over two queues, so it is refused with
    :class:`ConfigError` — share the chain instead.
    """

    __slots__ = ("_gate",)

    #: class-level flags the gate reads once, so unused hooks cost nothing per call
    contributes_demands = False
    observes_results = False
    #: the ``ToolCall.limits`` keys (per-run overrides) this interceptor enforces; a call
    #: carrying a key that no step of its chain enforces is refused with ``ConfigError``
    honours_limits: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._gate: AdmissionGate | None = None

    @property
    def gate(self) -> AdmissionGate:
        """The gate this interceptor belongs to (created alone on first use if unbound)."""
        if self._gate is None:
            from .gate import AdmissionGate  # (the gate imports this module)

            AdmissionGate([self])
        assert self._gate is not None
        return self._gate

    def _bind(self, gate: AdmissionGate) -> None:
        if self._gate is not None and self._gate is not gate:
            raise ConfigError(
                f"{type(self).__name__} is already part of another chain (one wait queue per "
                "limiter); share that chain or create a second limiter"
            )
        self._gate = gate

    # hooks ------------------------------------------------------------------------------
    def configure(self, gate: AdmissionGate) -> None:
        """Called once when the gate is built (set ordering or admission policy)."""

    def add_demands(self, call: ToolCall, now: float, out: list[tuple[Resource, float]]) -> None:
        """Append this interceptor's ``(resource, amount)`` needs for ``call``."""

    def demand_template(self) -> tuple[tuple[Resource, str | None], ...] | None:
        """This interceptor's demands as they are for *every* call without per-run limits
        (``call.limits`` empty), or ``None`` (the default) when they depend on the call.

        Each entry is ``(resource, dimension)``: the amount is 1 for ``None``, else
        ``call.cost.get(dimension, 0.0)``. The gate then builds the demands itself instead of
        calling :meth:`add_demands` (no Python call per call on the hot path). A part whose
        template changes (a pause starts, a bucket is re-created) calls
        :meth:`demands_changed`. A subclass overriding :meth:`add_demands` must override
        this too (or leave it returning ``None``).

        .. versionadded:: 0.2.0
        """
        return None

    def wants_results(self) -> bool:
        """Whether the gate calls :meth:`after_result` / :meth:`after_error` of this
        instance (default: the class's ``observes_results``); read once, when the gate is
        built.

        .. versionadded:: 0.2.0
        """
        return self.observes_results

    def reads_quiet_results(self) -> bool:
        """Whether :meth:`after_result` must see results that surely carry no provider
        answer (default ``True``: every result); read once, when the gate is built.

        A result is *quiet* when it is ``None``, a plain scalar, list or tuple, a Stageflow
        ``ToolOutput`` without data, or a dict (itself or a ``ToolOutput``'s data) with an
        integer ``status`` below 400 and none of ``retry_after``, ``retry_after_ms``,
        ``headers``, ``response`` (:func:`~stageflow_plus.interceptors.gate.quiet_result`).
        An observer that only reads provider answers (a 429, a Retry-After, rate-limit
        headers) returns ``False``: the gate then does not call it for quiet results (one
        compiled check per call instead of a Python call per observer). Errors reach every
        observer.

        .. versionadded:: 0.2.0
        """
        return True

    def demands_changed(self) -> None:
        """Tell the gate this interceptor's :meth:`demand_template` may have changed."""
        if self._gate is not None:
            self._gate.refresh_templates()

    def after_result(self, call: ToolCall, lease: Lease, result: Any) -> None:
        """Called after the tool returned, before the lease is released."""

    def after_error(self, call: ToolCall, lease: Lease, error: Exception) -> None:
        """Called after the tool raised, before the lease is released."""

    def pool_statistics(self) -> tuple[PoolStatistics, ...]:
        return ()

    def bucket_statistics(self, now: float) -> tuple[BucketStatistics, ...]:
        return ()

    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        return await self.gate(call, proceed)
