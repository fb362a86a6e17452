"""How a tool wrapper turns an action and its context into a :class:`ToolCall`.

:func:`build_call` is what :class:`~stageflow_plus.stageflow.tools.LimitedToolRegistry` and
the executors run for every call: it reads the current
:class:`~stageflow_plus.stageflow.scope.CallScope` and the context, asks the cost estimator,
validates, and builds the call. It is on the hot path of every limited tool call, so it is
compiled in the accelerated build (it imports no Stageflow module).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..interceptors.call import _EMPTY, ToolCall, _plain_cost, check_cost
from ..interceptors.gate import AdmissionGate
from .scope import _current

__all__ = ["CostEstimator", "RegistryRunner", "build_call", "make_call"]

CostEstimator = Callable[[str, Mapping[str, Any]], Mapping[str, float] | None]
"""``(tool, payload) -> {"tokens": 1200, ...}``: a call's estimated cost per dimension
(finite numbers >= 0; ``None`` for no estimate). Anything else refuses the call with
``ConfigError``; an exception it raises propagates (the call does not run)."""

def _field(ctx: Any, name: str) -> Any:
    if type(ctx) is dict or isinstance(ctx, Mapping):
        return ctx.get(name)
    return getattr(ctx, name, None)


def build_call(
    action: Any,
    ctx: Any,
    *,
    cost_of: CostEstimator | None = None,
    now: float | None = None,
) -> ToolCall:
    """Build the :class:`ToolCall` for ``action`` made with context ``ctx``.

    Run id, tenant, priority, deadline and limits come from the current
    :class:`~stageflow_plus.stageflow.scope.CallScope` when one is set, else from the context
    (``pipeline_run_id``; ``org_id`` as tenant). The cost is the scope's default estimate
    overlaid with ``cost_of``'s. With ``now`` (the chain's clock), the scope's ``max_wait``
    tightens the deadline to ``now + max_wait``.

    :raises ConfigError: ``cost_of`` returned something other than a mapping of finite
        numbers >= 0 (or ``None``), the scope's ``cost`` is not such a mapping, or a field
        of the call is invalid (see :class:`ToolCall`).
    """
    return make_call(action, ctx, cost_of, None if now is None else _Fixed(now).now)


class _Fixed:
    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at


def make_call(
    action: Any,
    ctx: Any,
    cost_of: CostEstimator | None,
    clock: Callable[[], float] | None,
) -> ToolCall:
    """:func:`build_call` with the chain's clock instead of a time: it is read only when
    the scope has a ``max_wait`` (what the tool wrappers call)."""
    payload = getattr(action, "payload", None) or _EMPTY
    tool = str(action.type)
    scope = _current.get()
    run_id: Any = None
    tenant: Any = None
    priority: Any = 0
    deadline: Any = None
    limits: Any = _EMPTY
    if scope is not None:
        run_id = scope.run_id
        tenant = scope.tenant
        if scope.priority is not None:
            priority = scope.priority
        deadline = scope.deadline
        limits = scope.limits
    if run_id is None:
        raw = _field(ctx, "pipeline_run_id")
        run_id = str(raw) if raw is not None else None
    if tenant is None:
        org = _field(ctx, "org_id")
        tenant = str(org) if org is not None else "default"
    cost: Mapping[str, float] = _EMPTY
    if cost_of is not None:
        estimate = cost_of(tool, payload)
        if estimate is not None:
            cost = estimate if _plain_cost(estimate) else check_cost(
                estimate, "cost_of()", f" for tool {tool!r}")
    if scope is not None:
        default = scope.cost
        if default is not _EMPTY:
            # (a per-run default; a scope may be set by anyone: checked like cost_of's)
            default = check_cost(default, "CallScope.cost", f" for tool {tool!r}")
            if default:
                cost = {**default, **cost}
        if scope.max_wait is not None and clock is not None:
            bound = clock() + scope.max_wait
            deadline = bound if deadline is None else min(deadline, bound)
    return ToolCall(tool, payload, action, run_id, tenant, priority, cost, deadline, ctx, limits)


class RegistryRunner:
    """A limited tool registry's calls, compiled: :meth:`run` is what ``execute`` returns
    while its chain is its admission step alone and nobody waits, and the runner itself is
    the chain's target, the tool (``runner(call)``).

    :param gate: the chain's admission step (its whole chain).
    :param registry: the limited registry (a Stageflow ``ToolRegistry``).
    :param execute: the unlimited ``execute(registry, action, ctx)`` (Stageflow's).
    :param recorded: ``recorded(call)`` runs the tool and records its completion in the
        current scope (used when the scope records completions).
    :param cost_of: the registry's cost estimator.

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_cost_of", "_execute", "_gate", "_recorded", "_registry", "_tools")

    def __init__(
        self,
        gate: AdmissionGate | None,
        registry: Any,
        execute: Callable[[Any, Any, Any], Awaitable[Any]],
        recorded: Callable[[ToolCall], Awaitable[Any]],
        cost_of: CostEstimator | None,
    ) -> None:
        self._gate = gate
        self._registry = registry
        self._tools: Mapping[Any, Any] = registry._tools
        self._execute = execute
        self._recorded = recorded
        self._cost_of = cost_of

    def __call__(self, call: ToolCall) -> Awaitable[Any]:
        scope = _current.get()
        if scope is None or scope.completed is None:
            return self._execute(self._registry, call.action, call.context)
        return self._recorded(call)

    async def run(self, action: Any, ctx: Any) -> Any:
        """Run ``action`` (made with ``ctx``) through the gate alone, in one compiled
        coroutine: an unknown action type as the registry answers it (no limit touched),
        else the call built and run by :meth:`AdmissionGate._run` (admission, the tool,
        the observers, the release). Everything happens on the first step, nothing when
        the coroutine is created."""
        gate = self._gate
        kind = action.type
        if kind not in self._tools and not self._registry.can_execute(kind):
            return await self._execute(self._registry, action, ctx)
        assert gate is not None, "RegistryRunner.run needs the chain's gate"
        call = make_call(action, ctx, self._cost_of, gate._now)
        return await gate._run(call, self)
