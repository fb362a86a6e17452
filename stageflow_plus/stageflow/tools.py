"""Limited versions of Stageflow's tool runners that keep their interfaces.

* :class:`LimitedToolRegistry` — a ``ToolRegistry`` whose ``execute`` goes through a
  :class:`~stageflow_plus.interceptors.chain.ToolCallChain`.
* :class:`LimitedToolExecutor` — the legacy ``ToolExecutor`` stage; its plan's actions run
  **concurrently** under the limits (instead of one by one), results counted in plan order.
* :class:`LimitedAdvancedToolExecutor` — ``AdvancedToolExecutor`` with admission before the
  tool's lifecycle: an admitted call emits Stageflow's ``tool.*`` events as before; a refused
  one raises the typed :class:`~stageflow_plus.primitives.errors.Rejected` and emits
  ``tool.rejected``. A tool requiring HITL approval holds its permit while approval is
  awaited (admission comes first, so approval never waits on a refused call).

Every wrapper builds the :class:`~stageflow_plus.interceptors.call.ToolCall` once, from the
action, the context and the current :class:`~stageflow_plus.stageflow.scope.CallScope`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from stageflow.tools import AdvancedToolExecutor, ToolExecutor, ToolRegistry
from stageflow.tools.base import ToolOutput
from stageflow.tools.definitions import ToolOutput as AdvancedToolOutput
from stageflow.tools.executor import ToolExecutorResult

from ..interceptors.call import ToolCall, check_cost
from ..interceptors.chain import ToolCallChain
from ..primitives.errors import ConfigError
from .events import StageflowEventListener
from .scope import current_scope

__all__ = [
    "CostEstimator",
    "LimitedAdvancedToolExecutor",
    "LimitedToolExecutor",
    "LimitedToolRegistry",
    "build_call",
]

logger = logging.getLogger("stageflow_plus.tools")

CostEstimator = Callable[[str, Mapping[str, Any]], Mapping[str, float] | None]
"""``(tool, payload) -> {"tokens": 1200, ...}``: a call's estimated cost per dimension
(finite numbers >= 0; ``None`` for no estimate). Anything else refuses the call with
``ConfigError``; an exception it raises propagates (the call does not run)."""


def _field(ctx: Any, name: str) -> Any:
    if isinstance(ctx, Mapping):
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
    payload = getattr(action, "payload", None) or {}
    tool = str(action.type)
    scope = current_scope()
    run_id = scope.run_id if scope is not None and scope.run_id is not None else None
    if run_id is None:
        raw = _field(ctx, "pipeline_run_id")
        run_id = str(raw) if raw is not None else None
    tenant = scope.tenant if scope is not None and scope.tenant is not None else None
    if tenant is None:
        org = _field(ctx, "org_id")
        tenant = str(org) if org is not None else "default"
    cost: Mapping[str, float] = {}
    if cost_of is not None:
        estimate = cost_of(tool, payload)
        cost = {} if estimate is None else check_cost(estimate, "cost_of()", f" for tool {tool!r}")
    deadline = None
    if scope is not None:
        # (a per-run default; a scope may be set by anyone: checked like cost_of's estimate)
        default = check_cost(scope.cost, "CallScope.cost", f" for tool {tool!r}")
        if default:
            cost = {**default, **cost}
        deadline = scope.deadline
        if scope.max_wait is not None and now is not None:
            bound = now + scope.max_wait
            deadline = bound if deadline is None else min(deadline, bound)
    return ToolCall(
        tool=tool,
        payload=payload,
        action=action,
        run_id=run_id,
        tenant=tenant,
        priority=scope.priority if scope is not None and scope.priority is not None else 0,
        cost=cost,
        deadline=deadline,
        context=ctx,
        limits=scope.limits if scope is not None else {},
    )


def _now(chain: ToolCallChain) -> float | None:
    return chain.now() if chain.gate is not None else None


def _record(call: ToolCall, result: Any) -> Any:
    scope = current_scope()
    if scope is not None and scope.completed is not None:
        scope.completed.append((call.tool, result))
    return result


def _attach_events(chain: ToolCallChain) -> ToolCallChain:
    chain.add_listener(StageflowEventListener())
    return chain


class LimitedToolRegistry(ToolRegistry):
    """A ``ToolRegistry`` whose ``execute`` runs under a chain of limits.

    It shares its tools with ``registry`` (default: Stageflow's global registry): registering
    in either is visible in both. Unknown action types answer exactly as Stageflow does
    (``ToolOutput(success=False)``) without touching any limit. Refusals raise
    :class:`~stageflow_plus.primitives.errors.Rejected` subclasses.
    """

    def __init__(
        self,
        chain: ToolCallChain,
        registry: ToolRegistry | None = None,
        *,
        cost_of: CostEstimator | None = None,
    ) -> None:
        super().__init__()
        if registry is None:
            from stageflow.tools import get_tool_registry

            registry = get_tool_registry()
        self.wrapped = registry
        self._tools = registry._tools  # shared, so registration works through either object
        self._factories = registry._factories
        self.chain = _attach_events(chain)
        self.cost_of = cost_of

    async def execute(self, action: Any, ctx: dict[str, Any]) -> ToolOutput | None:
        """Run ``action`` under the chain (the tool's output, or a refusal raised)."""
        if not self.can_execute(action.type):
            return await super().execute(action, ctx)
        call = build_call(action, ctx, cost_of=self.cost_of, now=_now(self.chain))
        return await self.chain.run(call, self._run_tool)

    async def _run_tool(self, call: ToolCall) -> ToolOutput | None:
        output = await ToolRegistry.execute(self, call.action, call.context)
        _record(call, output)
        return output


class LimitedToolExecutor(ToolExecutor):
    """The legacy ``ToolExecutor`` with the plan's actions run concurrently under limits.

    Results are aggregated in plan order with Stageflow's rules (a missing tool, a failed
    output or an exception counts as failed; any failure requires re-entry). A refusal by a
    limiter counts as failed and is logged with its reason.
    """

    def __init__(
        self,
        chain: ToolCallChain,
        *,
        registry: ToolRegistry | None = None,
        cost_of: CostEstimator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tool_registry = LimitedToolRegistry(
            chain, registry if registry is not None else self.tool_registry, cost_of=cost_of
        )

    async def execute(self, ctx: Any, plan: Any = None) -> ToolExecutorResult:
        if plan is None:
            return ToolExecutorResult()
        actions = list(plan.actions)
        outcomes = await asyncio.gather(
            *(self.tool_registry.execute(action, ctx.to_dict()) for action in actions),
            return_exceptions=True,
        )
        result = ToolExecutorResult()
        for action, outcome in zip(actions, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                result.actions_failed += 1
                logger.error("Error executing action %s: %s", action.type, outcome)
            elif outcome is None:
                result.actions_failed += 1
            elif outcome.success:
                result.actions_executed += 1
                if outcome.artifacts:
                    result.artifacts_produced.extend(outcome.artifacts)
                if action.payload.get("requires_reentry"):
                    result.requires_reentry = True
            else:
                result.actions_failed += 1
                logger.error("Action %s failed: %s", action.type, outcome.error)
        if result.actions_failed > 0:
            result.requires_reentry = True
        return result


class LimitedAdvancedToolExecutor(AdvancedToolExecutor):
    """``AdvancedToolExecutor`` whose ``execute`` waits for admission first.

    Same constructor arguments as ``AdvancedToolExecutor`` plus ``chain`` and ``cost_of``;
    or :meth:`wrap` an executor you already have. Unknown action types raise Stageflow's
    ``ToolNotFoundError`` without touching a limit.

    :ivar wrapped: the executor given to :meth:`wrap` (``None`` for a new one).
    """

    wrapped: AdvancedToolExecutor | None = None

    @classmethod
    def wrap(
        cls,
        executor: AdvancedToolExecutor,
        chain: ToolCallChain,
        *,
        cost_of: CostEstimator | None = None,
    ) -> LimitedAdvancedToolExecutor:
        """Limit an existing executor, keeping everything it has.

        The result shares ``executor``'s registered tools, undo store, approval service and
        config (the same objects: registering, undoing or approving through either is seen
        by both) and runs each admitted call through ``executor.execute`` itself, so a
        subclass's behaviour is kept too; ``undo_action`` and any other attribute reach
        ``executor``. Use it wherever ``executor`` was used.

        :raises ConfigError: ``executor`` is not an ``AdvancedToolExecutor``, or is limited
            already.

        .. versionadded:: 0.2.0
        """
        if isinstance(executor, LimitedAdvancedToolExecutor):
            raise ConfigError("LimitedAdvancedToolExecutor.wrap: this executor already runs "
                              "under a chain (wrap the original executor once)")
        if not isinstance(executor, AdvancedToolExecutor):
            raise ConfigError("LimitedAdvancedToolExecutor.wrap: expected a Stageflow "
                              f"AdvancedToolExecutor, got {type(executor).__name__}")
        limited = cls.__new__(cls)
        limited.__dict__.update(executor.__dict__)  # the same tools, stores and config objects
        limited.wrapped = executor
        limited.chain = _attach_events(chain)
        limited.cost_of = cost_of
        return limited

    def __getattr__(self, name: str) -> Any:
        # only for names not found on this object: a wrapped executor's own extras
        wrapped = self.__dict__.get("wrapped")
        if wrapped is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(wrapped, name)

    def __init__(
        self,
        chain: ToolCallChain,
        *args: Any,
        cost_of: CostEstimator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.chain = _attach_events(chain)
        self.cost_of = cost_of

    async def execute(self, action: Any, ctx: Any) -> AdvancedToolOutput:
        """Run ``action`` under the chain (the tool's output, or a refusal raised)."""
        if not self.can_execute(action.type):
            return await self._execute_unlimited(action, ctx)
        call = build_call(action, ctx, cost_of=self.cost_of, now=_now(self.chain))
        return await self.chain.run(call, self._run_tool)

    async def undo_action(self, action_id: Any, ctx: Any) -> bool:
        """Undo an action (through the wrapped executor when there is one)."""
        if self.wrapped is not None:
            return await self.wrapped.undo_action(action_id, ctx)
        return await super().undo_action(action_id, ctx)

    def _execute_unlimited(self, action: Any, ctx: Any) -> Awaitable[AdvancedToolOutput]:
        if self.wrapped is not None:
            return self.wrapped.execute(action, ctx)
        return AdvancedToolExecutor.execute(self, action, ctx)

    async def _run_tool(self, call: ToolCall) -> AdvancedToolOutput:
        output = await self._execute_unlimited(call.action, call.context)
        _record(call, output)
        return output
